"""The triage contact sheet: one self-contained HTML page that opens from disk with no server and no network.

Thumbnails live beside the page in ``<stem>_files/`` (one small JPEG per photo, named by a run token and the
record's index, never by the user's file name), so the page stays small for 50,000 photos. Records are streamed:
the page is written as they arrive, and only the failed-file list goes to a temporary spool, so memory stays flat
however big the shoot.
A Content-Security-Policy forbids every fetch except the thumbnails beside the page and runs only the one script
whose hash it names, so even a file name that slipped past escaping could not run code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import re
import secrets
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO
from urllib.parse import quote

from PIL import Image

from .atomic import atomic_open

LEVELS = ("bad", "poor", "fair", "good", "excellent")
_THUMB = re.compile(r"[0-9a-f]{8}-[0-9]{6,}\.jpg")  # thumbnail names this module writes (and removes)

_CSS = """
:root{color-scheme:dark;--bg:#111214;--card:#1b1d21;--line:#2c2f36;--fg:#e7e9ee;--dim:#9aa1ad;--accent:#ffd166;
--bad:#e5484d;--poor:#f76b15;--fair:#e2b93b;--good:#46a758;--excellent:#3e9bf5}
*{box-sizing:border-box}
.card,.burst{content-visibility:auto;contain-intrinsic-size:auto 330px}  /* 50,000 cards: lay out what is seen */
[hidden]{display:none!important}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif}
header{position:sticky;top:0;z-index:5;background:rgba(17,18,20,.94);backdrop-filter:blur(6px);
border-bottom:1px solid var(--line);padding:12px 20px}
h1{font-size:18px;margin:0 8px 6px 0;display:inline-block}h2{font-size:16px}
.stats{display:inline-flex;flex-wrap:wrap;gap:6px 14px;color:var(--dim)}.stats b{color:var(--fg)}
.controls{display:flex;flex-wrap:wrap;align-items:center;gap:6px;margin-top:8px}
button{background:var(--card);color:var(--dim);border:1px solid var(--line);border-radius:999px;padding:4px 12px;
font:inherit;cursor:pointer}button[aria-pressed=true]{color:var(--fg);border-color:var(--fg)}
button .n{opacity:.7;margin-left:4px}.sep{width:1px;height:22px;background:var(--line);margin:0 6px}
label{color:var(--dim);display:inline-flex;align-items:center;gap:6px}input[type=range]{width:140px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px;padding:16px 20px}
.burst{grid-column:1/-1;background:#16181b;border:1px solid var(--line);border-radius:12px;padding:8px 10px 10px}
.burst>h3{margin:0 0 8px;font-size:12px;font-weight:500;color:var(--dim);text-transform:uppercase;letter-spacing:.06em}
.strip{display:grid;grid-auto-flow:column;grid-auto-columns:250px;gap:12px;overflow-x:auto;padding-bottom:4px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;display:flex;
flex-direction:column}
.card.pick{border-color:var(--accent);box-shadow:0 0 0 1px var(--accent)}
.card.rej{opacity:.42}.card.rej:hover{opacity:1}
.frame{position:relative;height:200px;background:#0b0c0d;display:flex;align-items:center;justify-content:center}
.thumb{position:relative;display:block;line-height:0;max-width:100%;max-height:100%}
.thumb img{display:block;max-width:100%;max-height:200px;width:auto;height:auto}
.noimg{color:var(--dim)}
.box{position:absolute;border:2px solid hsl(calc(50 - 50*var(--s)) 100% 55%);border-radius:2px;
box-shadow:0 0 0 1px rgba(0,0,0,.5)}
.box span{position:absolute;left:-2px;top:-2px;transform:translateY(-100%);
background:hsl(calc(50 - 50*var(--s)) 100% 55%);
color:#000;font-size:10px;line-height:14px;padding:0 4px;white-space:nowrap;border-radius:2px 2px 0 0}
.box.in span{top:0;left:0;transform:none;border-radius:0 0 2px 0}body.noboxes .box{display:none}
button[class^=lv-]::before{content:"";display:inline-block;width:8px;height:8px;border-radius:50%;background:var(--lc);margin-right:6px}
.meta{display:flex;align-items:center;gap:8px;padding:8px 10px 0}
.score{font-size:22px;font-weight:700;font-variant-numeric:tabular-nums}
.level{font-size:12px;padding:1px 8px;border-radius:999px;color:#000;background:var(--lc)}
.stars{margin-left:auto;color:var(--accent);letter-spacing:1px}.rej .stars{color:var(--bad)}
.probs{display:flex;align-items:flex-end;gap:2px;height:18px}
.probs i{width:5px;min-height:2px;background:var(--lc);opacity:.8;border-radius:1px 1px 0 0}
.badge{position:absolute;z-index:1;left:6px;bottom:6px;font-size:11px;font-weight:700;color:#000;background:var(--accent);
border-radius:4px;padding:1px 6px}
.name{padding:4px 10px 0;font-family:ui-monospace,monospace;font-size:12px;color:var(--dim);overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}
.why{margin:4px 10px 10px;font-size:12px;color:#c3c8d1;display:-webkit-box;-webkit-line-clamp:3;
-webkit-box-orient:vertical;overflow:hidden}
.lv-bad{--lc:var(--bad)}.lv-poor{--lc:var(--poor)}.lv-fair{--lc:var(--fair)}.lv-good{--lc:var(--good)}
.lv-excellent{--lc:var(--excellent)}.card .score{color:var(--lc)}
#failed{padding:0 20px 24px}#failed li{margin:2px 0}#failed code{color:var(--fg)}#failed span{color:var(--bad)}
"""

# The one executable script; its sha256 goes into the CSP, so nothing else on the page can run.
_JS = """
const S=JSON.parse(document.getElementById('summary').textContent),$=q=>document.querySelector(q);
const cards=[...document.querySelectorAll('.card')],bursts=[...document.querySelectorAll('.burst')];
const st={levels:new Set(S.levels),mode:'all',min:0};
for(const [k,v] of Object.entries(S.counts))
for(const e of document.querySelectorAll('[data-n="'+k+'"]'))e.textContent=v;
function apply(){let n=0;for(const c of cards){const d=c.dataset,ok=st.levels.has(d.level)&&+d.score>=st.min&&
(st.mode!=='picks'||d.pick==='1')&&(st.mode!=='rejected'||d.rej==='1');c.hidden=!ok;n+=ok}
for(const b of bursts)b.hidden=!b.querySelector('.card:not([hidden])');$('#shown').textContent=n}
for(const b of document.querySelectorAll('[data-filter-level]'))b.onclick=()=>{const l=b.dataset.filterLevel;
st.levels.has(l)?st.levels.delete(l):st.levels.add(l);b.setAttribute('aria-pressed',st.levels.has(l));apply()};
for(const b of document.querySelectorAll('[data-mode]'))b.onclick=()=>{st.mode=b.dataset.mode;
for(const o of document.querySelectorAll('[data-mode]'))o.setAttribute('aria-pressed',o===b);apply()};
$('#min').oninput=e=>{st.min=+e.target.value;$('#minv').textContent=st.min;apply()};
$('#boxes').onchange=e=>document.body.classList.toggle('noboxes',!e.target.checked);apply();
"""

_CSP = (
    "default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()}'"
)


def _e(value: object) -> str:
    """HTML-escape anything the user controls; lone surrogates (undecodable file names) become U+FFFD."""
    return html.escape(str(value).encode("utf-8", "replace").decode("utf-8"), quote=True)


def _num(value: object, lo: float, hi: float) -> float:
    x = float(value)  # type: ignore[arg-type]
    return min(hi, max(lo, x)) if math.isfinite(x) else lo


def _header(title: str) -> str:
    levels = "".join(
        f'<button class="lv-{lv}" data-filter-level="{lv}" aria-pressed="true">{lv}<span class="n" data-n="{lv}">'
        "</span></button>"
        for lv in LEVELS
    )
    stats = "".join(
        f'<span>{label} <b data-n="{key}"></b></span>'
        for key, label in (("total", "photos"), ("picks", "picks"), ("rejected", "rejected"), ("failed", "failed"))
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n<header><h1>{_e(title)}</h1><div class=\"stats\">{stats}"
        '<span>showing <b id="shown"></b></span></div><div class="controls">'
        f'{levels}<span class="sep"></span><button data-mode="all" aria-pressed="true">all</button>'
        '<button data-mode="picks" aria-pressed="false">picks only</button>'
        '<button data-mode="rejected" aria-pressed="false">rejected</button><span class="sep"></span>'
        '<label>min score <input id="min" type="range" min="0" max="100" step="1" value="0"><b id="minv">0</b>'
        '</label><label><input id="boxes" type="checkbox" checked> boxes</label></div></header>\n<main>\n'
    )


def _card(rec: dict, img: str | None, size: tuple[int, int] | None) -> str:
    level = rec.get("level") if rec.get("level") in LEVELS else "fair"
    score = _num(rec.get("score", 0.0), 0.0, 100.0)
    rating = int(_num(rec.get("rating", 0), -1, 5))
    pick, rej = bool(rec.get("pick")), rating < 0
    boxes = ""
    for f in rec.get("findings") or ():
        x0, y0, x1, y1 = (_num(v, 0.0, 1.0) * 100 for v in f["box"])
        sev = _num(f.get("severity", 0.0), 0.0, 1.0)
        boxes += (  # a label that would stick out above the thumbnail goes inside the box
            f'<div class="box{" in" if y0 < 10 else ""}" style="left:{x0:.2f}%;top:{y0:.2f}%;'
            f'width:{x1 - x0:.2f}%;height:{y1 - y0:.2f}%;'
            f'--s:{sev:.2f}"><span>{_e(f.get("type", "?"))} {sev:.2f}</span></div>'
        )
    if img is None:
        thumb = '<span class="noimg">no preview</span>'
    else:
        wh = f' width="{size[0]}" height="{size[1]}"' if size else ""
        link = str(rec.get("link") or "").replace(os.sep, "/")  # quoted whole, so it can only be a relative path
        href = f' href="{_e(quote(link, safe="/", errors="surrogateescape"))}"' if link else ""
        thumb = f'<a class="thumb"{href}><img src="{_e(img)}"{wh} alt="" loading="lazy">{boxes}</a>'
    probs = "".join(f'<i style="height:{_num(p, 0, 1) * 100:.0f}%"></i>' for p in (rec.get("level_probs") or ())[:5])
    stars = "rejected" if rej else "★" * rating + "☆" * (5 - rating)
    burst = int(rec.get("group_size") or 1)
    badge = f'<span class="badge">★ best of {burst}</span>' if pick and burst > 1 else ""
    why = _e(rec.get("rationale") or "")
    return (
        f'<article class="card lv-{level}{" pick" if badge else ""}{" rej" if rej else ""}" data-level="{level}" '
        f'data-score="{score:.1f}" data-pick="{int(pick)}" data-rej="{int(rej)}" title="{_e(rec.get("file", ""))}">'
        f'<div class="frame">{thumb}{badge}</div><div class="meta"><span class="score">{score:.0f}</span>'
        f'<span class="level">{level}</span><span class="probs" title="level distribution">{probs}</span>'
        f'<span class="stars">{stars}</span></div><div class="name">{_e(rec.get("file", ""))}</div>'
        f'<p class="why" title="{why}">{why}</p></article>\n'
    )


def write_contact_sheet(
    records: Iterable[dict],
    out: str | Path,
    thumbnail: Callable[[dict], bytes | None],
    *,
    title: str = "qds triage",
) -> Path:
    """Write the HTML contact sheet `out` and its thumbnails in ``<out.stem>_files/``; return `out`.

    `records` are triage records (the section 4 trace plus ``rating``, ``group``, ``group_size``, ``pick``,
    ``error`` and an optional ``link``: a path to the original relative to `out`'s folder) in display order,
    members of a burst group consecutive with the pick first. They are consumed once, as they come.
    `thumbnail(record)` gives JPEG bytes (about 320 px long side) or None; it is not called for failed records.
    The page is written atomically: a crash leaves the previous report and its thumbnails (or none), never half
    of one. Exceptions from `records` or `thumbnail` propagate.
    """
    out = Path(out)
    files = out.with_name(f"{out.stem}_files")
    files.mkdir(exist_ok=True)
    run = secrets.token_hex(4)  # this run's thumbnail names: never overwrites one the current report shows
    done = False
    try:
        with atomic_open(out, "w", encoding="utf-8") as f:
            _write_page(f, records, thumbnail, files, run, title)
        done = True
    finally:  # keep only the thumbnails of the report now in place: this run's if it finished, else the old ones
        for p in files.iterdir():
            if _THUMB.fullmatch(p.name) and p.name.startswith(run) != done:
                p.unlink(missing_ok=True)
    return out


def _write_page(
    f: IO[str], records: Iterable[dict], thumbnail: Callable[[dict], bytes | None], files: Path, run: str, title: str
) -> None:
    counts: Counter[str] = Counter({k: 0 for k in (*LEVELS, "total", "picks", "rejected", "failed")})
    with tempfile.TemporaryFile("w+", encoding="utf-8") as failed:
        f.write(_header(title))
        group = None  # the burst group whose strip is open
        for i, rec in enumerate(records):
            counts["total"] += 1
            if rec.get("error"):
                counts["failed"] += 1
                failed.write(f'<li><code>{_e(rec.get("file", "?"))}</code> — <span>{_e(rec["error"])}</span></li>\n')
                continue
            key = rec.get("group") if int(rec.get("group_size") or 1) > 1 else None
            if key != group:
                f.write("</div></section>\n" if group is not None else "")
                if key is not None:
                    n = int(rec["group_size"])
                    f.write(f'<section class="burst"><h3>burst · {n} photos</h3><div class="strip">')
                group = key
            img = size = None
            data = thumbnail(rec)
            if data is not None:
                # A fresh name per run, so no fsync and no temp file is needed: until the page that names it
                # replaces the old one atomically, nothing points at it, and a failed run's files are removed.
                name = f"{run}-{i:06d}.jpg"
                with open(files / name, "xb") as t:
                    t.write(data)
                img = f"{quote(files.name, errors='surrogateescape')}/{name}"
                with Image.open(io.BytesIO(data)) as im:  # header only: lets the page reserve the box
                    size = im.size
            f.write(_card(rec, img, size))
            counts[rec.get("level") if rec.get("level") in LEVELS else "fair"] += 1
            counts["picks"] += bool(rec.get("pick"))
            counts["rejected"] += int(_num(rec.get("rating", 0), -1, 5)) < 0
        f.write("</div></section>\n" if group is not None else "")
        f.write("</main>\n")
        if counts["failed"]:
            f.write(f'<section id="failed"><h2>Failed ({counts["failed"]})</h2><ul>\n')
            failed.seek(0)
            for line in failed:
                f.write(line)
            f.write("</ul></section>\n")
        summary = json.dumps({"levels": LEVELS, "counts": counts}).replace("<", "\\u003c")
        f.write(f'<script type="application/json" id="summary">{summary}</script>\n<script>{_JS}</script>\n')
        f.write("</body></html>\n")
