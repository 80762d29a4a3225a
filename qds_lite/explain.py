"""`qds explain`: the photo with the critic's zoom boxes and findings drawn on it, and a panel that says why.

Two renderings of one Result: a picture (PNG, made to be read at a glance on a phone: large type, light
on dark, every label on a solid background) and a self-contained HTML page where hovering or tapping a
finding, a zoom box or a check box shows the crop the critic looked at. Crops come from the full-resolution
pixels (the steps' ``window``), so they show what the critic saw, not the downscaled photo. Checks (the
cells read after the verdict, for the findings alone) are drawn thinner (dashed in HTML), labelled c1, c2, …
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import refuse_input_overwrite, write_output
from .errors import QdsError
from .io import LoadedImage, Source, load_image
from .protocol import LEVELS
from .result import SEVERITY_WORDS, TYPE_WORDS, Finding, Result, describe_box

BG, FG, MUTED, DARK = (18, 18, 18), (255, 255, 255), (175, 175, 175), (0, 0, 0)
ZOOM_COLOUR = (0, 220, 255)
CHECK_COLOUR = (180, 160, 255)  # pale violet, thinner: the checks ground findings, not the verdict
# One colour per severity word (slight .. severe), yellow to magenta; all light enough for black text
# except the last, and all distinct from the zoom boxes' cyan.
SEVERITY_COLOURS = ((255, 235, 0), (255, 175, 0), (255, 115, 0), (255, 45, 45), (235, 0, 255))
LEVEL_COLOURS = ((255, 60, 60), (255, 140, 0), (255, 215, 0), (140, 225, 70), (40, 200, 90))
# Under the level bars: they are the distribution the critic voted, while the score and its level word may
# have gone through the critic's damage penalty and calibration (qds_lite/scale.py) and so sit above or
# below the tallest bar.
DISTRIBUTION_CAPTION = "the critic's level distribution"


def severity_colour(severity: float) -> tuple[int, int, int]:
    return SEVERITY_COLOURS[next(i for i, (limit, _) in enumerate(SEVERITY_WORDS) if severity < limit)]


def render_explanation(image: LoadedImage | Source, result: Result, *, width: int = 1200) -> Image.Image:
    """The photo (oriented, resized to ``width``) with boxes drawn on it, above a panel with the score,
    level, level distribution, rationale and the zoom crops. The photo occupies the top
    ``round(width * h / w)`` rows."""
    if width < 200:
        raise QdsError(f"explanation width must be at least 200 px, not {width}")
    loaded = _load(image, result)
    s = width / 1200  # every size below is for a 1200 px picture
    photo = _resized(loaded, width)
    _draw_boxes(photo, result, s)
    panel = _panel(result, [(z, _crop(loaded, z["window"])) for z in _steps(result, "zoom")], width, s)
    out = Image.new("RGB", (width, photo.height + panel.height), BG)
    out.paste(photo, (0, 0))
    out.paste(panel, (0, photo.height))
    return out


def write_explanation(source: LoadedImage | Source, result: Result, out: str | os.PathLike, *, width: int = 1200,
                      input_path: str | os.PathLike | None = None) -> None:
    """Render and write atomically; the format follows ``out``'s extension (PNG when unknown).

    Refuses to write over the input: ``source`` when it is a path, else ``input_path`` (pass it with an
    already loaded image so the file is not decoded twice)."""
    refuse_input_overwrite(input_path or source, out)
    picture = render_explanation(source, result, width=width)
    fmt = Image.registered_extensions().get(Path(out).suffix.lower(), "PNG")
    buf = io.BytesIO()
    picture.save(buf, format=fmt if fmt in ("PNG", "JPEG", "WEBP") else "PNG")
    write_output(out, buf.getvalue())


def write_explanation_html(source: LoadedImage | Source, result: Result, out: str | os.PathLike, *,
                           width: int = 1200, input_path: str | os.PathLike | None = None) -> None:
    """Write a single self-contained HTML file (everything embedded; no external resources).
    ``input_path`` as for :func:`write_explanation`."""
    refuse_input_overwrite(input_path or source, out)
    write_output(out, render_html(source, result, width=width))


def render_html(image: LoadedImage | Source, result: Result, *, width: int = 1200) -> str:
    loaded = _load(image, result)
    zooms, checks = _steps(result, "zoom"), _steps(result, "check")
    crops = {f"z{n}": _crop(loaded, z["window"]) for n, z in enumerate(zooms, 1)}
    crops |= {f"c{n}": _crop(loaded, c["window"]) for n, c in enumerate(checks, 1)}
    items = []  # (crop id, css class, colour, box, tag text, caption)
    for n, f in enumerate(result.findings):
        crop = f"z{f.evidence_zoom}" if f"z{f.evidence_zoom}" in crops else f"f{n}"
        if crop == f"f{n}":
            crops[crop] = _crop(loaded, _box_window(f.box, loaded.original_size))
        items.append((crop, "finding", severity_colour(f.severity), f.box, _label(f), f.describe()))
    for n, z in enumerate(zooms, 1):
        items.append((f"z{n}", "zoom", ZOOM_COLOUR, tuple(z["box"]), str(n), f"zoom {n} {_where(z)}"))
    for n, c in enumerate(checks, 1):
        items.append((f"c{n}", "check", CHECK_COLOUR, tuple(c["box"]), f"c{n}",
                      f"check {n} {_where(c)}, read after the verdict for the findings"))
    e = html.escape
    boxes, nested = [], {}
    # Bigger boxes first, so smaller ones sit on top and stay hoverable; findings sharing a box nest inwards
    # and stack their tags (inside the box when it touches the top edge, else above it).
    for crop, cls, c, b, tag, cap in sorted(items, key=lambda it: -(it[3][2] - it[3][0]) * (it[3][3] - it[3][1])):
        k = nested[b, cls] = nested.get((b, cls), -1) + 1
        where = f"top:{1.7 * k}em" if b[1] < 0.1 or cls != "finding" else f"bottom:calc(100% + {1.7 * k}em)"
        boxes.append(
            f'<div class="box {cls}" tabindex="0" data-crop="{crop}" data-caption="{e(cap)}" style="'
            f'left:calc({b[0]:.2%} + {5 * k}px);top:calc({b[1]:.2%} + {5 * k}px);width:calc({b[2] - b[0]:.2%} - '
            f'{10 * k}px);height:calc({b[3] - b[1]:.2%} - {10 * k}px);border-color:{_hex(c)}"><span class="tag" '
            f'style="{where};background:{_hex(c)};color:{_hex(_ink(c))}">{e(tag)}</span></div>')
    box_html = "".join(boxes)
    list_html = "".join(
        f'<li tabindex="0" data-crop="{crop}" data-caption="{e(cap)}"><span class="swatch" '
        f'style="background:{_hex(c)}"></span>{e(cap)}</li>'
        for crop, cls, c, b, tag, cap in items)
    bars = "".join(
        f'<div class="bar"><div class="fill" style="height:{p * 100:.1f}%;background:'
        f'{_hex(LEVEL_COLOURS[k]) if name == result.level else "#666"}"></div><span>{name}</span>'
        f'<b>{p * 100:.0f}%</b></div>' for k, (name, p) in enumerate(zip(LEVELS, result.level_probs)))
    crop_html = "".join(f'<img id="crop-{k}" src="{_data_uri(im, 95)}" alt="">' for k, im in crops.items())
    level_colour = _hex(LEVEL_COLOURS[LEVELS.index(result.level)]) if result.level in LEVELS else "#fff"
    return _HTML.format(
        title=e(f"qds: {result.file}"), name=e(result.file), photo=_data_uri(_resized(loaded, width), 90),
        boxes=box_html, score=f"{result.score:.0f}", level=e(result.level), level_colour=level_colour,
        bars=bars, distribution_caption=DISTRIBUTION_CAPTION, rationale=e(result.rationale), items=list_html,
        crops=crop_html)


# --- the picture -------------------------------------------------------------------------------
def _draw_boxes(photo: Image.Image, result: Result, s: float) -> None:
    """Check boxes (pale violet, thin, c1, c2, …), zoom boxes (cyan, numbered), then findings on top (severity
    colour, labelled), each with a dark outline so it shows on light and dark photos alike. Findings with
    the same box nest inwards."""
    draw, (w, h) = ImageDraw.Draw(photo), photo.size
    edge, line = max(1, round(2 * s)), max(2, round(5 * s))
    font = _font(34 * s)
    taken: list[tuple[int, int, int, int]] = []
    looks = (("check", CHECK_COLOUR, max(1, round(2 * s)), _font(26 * s), "c"),  # under the zooms
             ("zoom", ZOOM_COLOUR, max(2, round(3 * s)), font, ""))
    for tool, colour, width, tag_font, prefix in looks:
        for n, step in enumerate(_steps(result, tool), 1):
            x0, y0, x1, y1 = _px(step["box"], w, h)
            _frame(draw, (x0, y0, x1, y1), colour, edge, width)
            taken.append(_text_tag(draw, (x0 + edge * 2 + line, y0 + edge * 2 + line), f" {prefix}{n} ", tag_font,
                                   colour))
    nested: dict[tuple[int, int, int, int], int] = {}
    for f in result.findings:
        rect = _px(f.box, w, h)
        k = nested[rect] = nested.get(rect, -1) + 1
        inset = k * (2 * edge + line)
        x0, y0, x1, y1 = rect[0] + inset, rect[1] + inset, rect[2] - inset, rect[3] - inset
        colour = severity_colour(f.severity)
        _frame(draw, (x0, y0, x1, y1), colour, edge, line)
        tw, th = _text_size(_label(f), font, pad=round(8 * s))
        lx = min(max(x0, 0), max(0, w - tw))
        ly = y0 - th if y0 - th >= 0 else y0 + 2 * edge + line  # above the box, else just inside it
        while any(_overlaps((lx, ly, lx + tw, ly + th), t) for t in taken) and ly + th < h:
            ly += th // 2
        taken.append(_text_tag(draw, (lx, ly), _label(f), font, colour, pad=round(8 * s)))


def _panel(result: Result, crops: list[tuple[dict, Image.Image]], width: int, s: float) -> Image.Image:
    pad = round(32 * s)
    big, mid, text, small = _font(170 * s), _font(60 * s), _font(38 * s), _font(28 * s)
    level_colour = LEVEL_COLOURS[LEVELS.index(result.level)] if result.level in LEVELS else FG
    score = f"{result.score:.0f}"
    score_w, score_h = _text_size(score, big)
    level_w, level_h = _text_size(result.level, mid)
    head_h = max(score_h + level_h + pad // 2, round(260 * s))
    lines = _wrap(result.rationale, text, width - 2 * pad)
    line_h = _text_size("Ag", text)[1] + round(10 * s)
    n = len(crops)
    inset = min(round(256 * s), (width - pad * (n + 1)) // n) if n else 0
    caption_h = _text_size("Ag", small)[1] + round(8 * s)
    dist_h = caption_h + round(6 * s)  # the caption under the level bars
    height = pad + head_h + dist_h + pad + len(lines) * line_h + (pad + inset + caption_h if n else 0) + pad
    panel = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(panel)
    # score and level
    _draw_text(draw, (pad, pad), score, big, level_colour)
    _draw_text(draw, (pad + score_w + round(12 * s), pad + score_h - _text_size("/100", text)[1]), "/100", text,
               MUTED)
    _draw_text(draw, (pad, pad + score_h + pad // 2), result.level, mid, level_colour)
    # level distribution
    left = pad + max(score_w + _text_size("/100", text)[0] + round(12 * s), level_w) + 2 * pad
    slot = (width - pad - left) // len(LEVELS)
    label_h = _text_size("Ag", small)[1]
    bar_top, bar_bottom = pad + label_h + round(8 * s), pad + head_h - label_h - round(10 * s)
    for k, (name, p) in enumerate(zip(LEVELS, result.level_probs)):
        x = left + k * slot
        top = bar_bottom - round(p * (bar_bottom - bar_top))
        colour = LEVEL_COLOURS[k] if name == result.level else (110, 110, 110)
        draw.rectangle((x + slot // 8, top, x + slot - slot // 8, bar_bottom), fill=colour)
        _draw_text(draw, (x + slot // 2, top - label_h - round(6 * s)), f"{p * 100:.0f}%", small, FG, centre=True)
        word = name if _text_size(name, small)[0] <= slot else name[:4] + "."
        _draw_text(draw, (x + slot // 2, bar_bottom + round(8 * s)), word, small, FG if name == result.level
                   else MUTED, centre=True)
    # the bars are what the critic voted; the score above also read the map and went through the calibration
    caption = DISTRIBUTION_CAPTION if _text_size(DISTRIBUTION_CAPTION, small)[0] <= width - pad - left else \
        "level distribution"
    _draw_text(draw, (left + slot // 8, pad + head_h + round(10 * s)), caption, small, MUTED)
    # rationale
    y = pad + head_h + dist_h + pad
    for line in lines:
        _draw_text(draw, (pad, y), line, text, FG)
        y += line_h
    # zoom insets, numbered like the boxes; nearest-neighbour so native pixels stay visible
    y += pad
    for k, (zoom, crop) in enumerate(crops):
        x = pad + k * (inset + pad)
        scale = inset / max(crop.size)
        shown = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                            Image.NEAREST if scale >= 1 else Image.LANCZOS)
        panel.paste(shown, (x, y))
        _frame(draw, (x, y, x + shown.width - 1, y + shown.height - 1), ZOOM_COLOUR, 1, max(2, round(3 * s)))
        _text_tag(draw, (x, y), f" {k + 1} ", small, ZOOM_COLOUR)
        where = describe_box(tuple(zoom["box"]))
        _draw_text(draw, (x, y + inset + round(6 * s)), f"zoom {k + 1}: {where}", small, MUTED)
    return panel


def _frame(draw: ImageDraw.ImageDraw, rect: tuple[int, int, int, int], colour: tuple[int, int, int], edge: int,
           line: int) -> None:
    """A ``line``-wide coloured frame between two ``edge``-wide dark ones, all inside ``rect``."""
    x0, y0, x1, y1 = rect
    draw.rectangle(rect, outline=DARK, width=2 * edge + line)
    if x1 - x0 > 2 * edge and y1 - y0 > 2 * edge:
        draw.rectangle((x0 + edge, y0 + edge, x1 - edge, y1 - edge), outline=colour, width=line)


def _text_tag(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font, colour: tuple[int, int, int],
              pad: int = 4) -> tuple[int, int, int, int]:
    """Text on a solid ``colour`` block (black or white ink, whichever contrasts); returns the block."""
    w, h = _text_size(text, font, pad)
    rect = (xy[0], xy[1], xy[0] + w, xy[1] + h)
    draw.rectangle(rect, fill=colour, outline=DARK, width=1)
    _draw_text(draw, (xy[0] + pad, xy[1] + pad), text, font, _ink(colour))
    return rect


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font, fill, centre: bool = False) -> None:
    """Draw with the top of a capital at ``xy[1]`` (Pillow leaves the font's ascent gap above it), so words
    with and without ascenders share a baseline; ``centre`` centres the ink horizontally on ``xy[0]``."""
    x0, _, x1, _ = font.getbbox(text)
    x = xy[0] - (x1 - x0) // 2 if centre else xy[0]
    draw.text((x - x0, xy[1] - font.getbbox("Ag")[1]), text, font=font, fill=fill)


def _text_size(text: str, font, pad: int = 0) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    _, ay0, _, ay1 = font.getbbox("Ag")  # same height for every label in a font
    return x1 - x0 + 2 * pad, max(y1, ay1) - min(y0, ay0) + 2 * pad


def _wrap(text: str, font, max_width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def _font(size: float):
    """Pillow's bundled FreeType font (Aileron) at ``size`` px; Pillow's bitmap font without FreeType."""
    return ImageFont.load_default(size=max(10, round(size)))


# --- shared helpers ----------------------------------------------------------------------------
def _load(image: LoadedImage | Source, result: Result) -> LoadedImage:
    """Load and check that ``result`` was made from an image of this size (the zoom windows depend on it)."""
    loaded = image if isinstance(image, LoadedImage) else load_image(image)
    glance = next((st for st in result.steps if st.get("tool") == "glance" and "native_px" in st), None)
    if glance is not None and tuple(glance["native_px"]) != tuple(loaded.original_size):
        w, h = glance["native_px"]
        raise QdsError(f"{loaded.name}: the result is for a {w} x {h} image, but this one is "
                       f"{loaded.original_size[0]} x {loaded.original_size[1]}", hint="score this image again")
    return loaded


def _steps(result: Result, tool: str) -> list[dict]:
    """The trace's "zoom" or "check" steps, in order."""
    return [st for st in result.steps if st.get("tool") == tool]


def _where(step: dict) -> str:
    w = step["window"]
    return f"({describe_box(tuple(step['box']))}), {w[2] - w[0]} x {w[3] - w[1]} native px"


def _resized(loaded: LoadedImage, width: int) -> Image.Image:
    w, h = loaded.original_size
    size = (width, max(1, round(h * width / w)))
    return Image.fromarray(loaded.pixels).resize(size, Image.LANCZOS, reducing_gap=3.0)


def _crop(loaded: LoadedImage, window) -> Image.Image:
    h, w = loaded.pixels.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in window)
    x0, x1 = sorted((min(max(x0, 0), w - 1), min(max(x1, 1), w)))
    y0, y1 = sorted((min(max(y0, 0), h - 1), min(max(y1, 1), h)))
    return Image.fromarray(np.ascontiguousarray(loaded.pixels[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]))


def _box_window(box: tuple[float, ...], size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    return round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)


def _px(box, w: int, h: int) -> tuple[int, int, int, int]:
    """Fractional box -> inclusive pixel rectangle inside a w x h picture."""
    x0, y0 = min(round(box[0] * w), w - 1), min(round(box[1] * h), h - 1)
    return x0, y0, max(x0, min(round(box[2] * w), w) - 1), max(y0, min(round(box[3] * h), h) - 1)


def _overlaps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label(f: Finding) -> str:
    return f"{TYPE_WORDS.get(f.type, f.type)} · {next(w for limit, w in SEVERITY_WORDS if f.severity < limit)}"


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio against ``colour``."""
    lin = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in colour]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return DARK if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else FG


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _data_uri(im: Image.Image, quality: int) -> str:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; background: #121212; color: #fff; font: 18px/1.4 system-ui, sans-serif; }}
main {{ display: flex; flex-wrap: wrap; gap: 20px; padding: 16px; }}
.photo {{ position: relative; flex: 1 1 600px; max-width: 1200px; align-self: flex-start; }}
.photo > img {{ display: block; width: 100%; }}
.box {{ position: absolute; box-sizing: border-box; border: 4px solid; outline: 1px solid #000; }}
.box.zoom {{ border-width: 3px; }}
.box.check {{ border-width: 2px; border-style: dashed; }}
.box:hover, .box:focus {{ outline: 3px solid #fff; z-index: 9; }}
.tag {{ position: absolute; left: 0; padding: 1px 6px; font-weight: 600; white-space: nowrap; }}
aside {{ flex: 1 1 320px; max-width: 520px; }}
.score {{ font-size: 96px; font-weight: 700; line-height: 1; }}
.score small {{ font-size: 28px; color: #aaa; }}
.level {{ font-size: 36px; }}
.bars {{ display: flex; gap: 6px; height: 140px; align-items: flex-end; margin: 16px 0 36px; }}
.bar {{ flex: 1; position: relative; height: 100%; display: flex; align-items: flex-end; }}
.fill {{ width: 100%; }}
.bar span {{ position: absolute; top: 100%; width: 100%; text-align: center; font-size: 14px; }}
.bar b {{ position: absolute; top: 0; width: 100%; text-align: center; font-size: 14px; }}
.dist {{ margin-top: -8px; font-size: 13px; color: #aaa; }}
ul {{ list-style: none; padding: 0; }}
li {{ padding: 6px; cursor: default; }}
li:hover, li:focus {{ background: #333; }}
.swatch {{ display: inline-block; width: 14px; height: 14px; margin-right: 8px; border: 1px solid #000; }}
#viewer {{ position: sticky; top: 8px; margin: 0; }}
#viewer img {{ width: 100%; max-width: 384px; image-rendering: pixelated; }}
#viewer img:not([src]) {{ display: none; }}
#crops {{ display: none; }}
</style></head><body><main>
<div class="photo"><img src="{photo}" alt="{name}">{boxes}</div>
<aside>
<div class="score" style="color:{level_colour}">{score}<small>/100</small></div>
<div class="level" style="color:{level_colour}">{level}</div>
<div class="bars">{bars}</div>
<div class="dist">{distribution_caption}</div>
<p>{rationale}</p>
<ul>{items}</ul>
<figure id="viewer"><img id="viewer-img" alt=""><figcaption id="viewer-cap">Hover or tap a box to see
what the critic saw, at native resolution.</figcaption></figure>
<div id="crops">{crops}</div>
</aside></main>
<script>
for (const el of document.querySelectorAll("[data-crop]")) {{
  const show = () => {{
    document.getElementById("viewer-img").src = document.getElementById("crop-" + el.dataset.crop).src;
    document.getElementById("viewer-cap").textContent = el.dataset.caption;
  }};
  el.addEventListener("mouseenter", show);
  el.addEventListener("focus", show);
}}
</script>
</body></html>
"""
