"""What `qds triage` writes: ranked listing, CSV and JSON lines, XMP sidecars, the HTML contact sheet, and the
picks copied or linked into a delivery folder. Every file is written atomically; originals are never touched.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_open
from .errors import QdsError
from .result import Finding
from .triage import Photo, TriageRun
from .xmp import Verdict, rating_for, sidecar_path, write_sidecar

SORTS = ("score", "time", "name")
CSV_FIELDS = ("file", "score", "level", "rating", "group", "group_size", "pick", "capture_time", "time_source",
              "findings", "rationale", "error")


def rating(photo: Photo, reject_below: float) -> int:
    return rating_for(photo.score, reject_below) if photo.score is not None else 0


def keepers(run: TriageRun, reject_below: float, min_score: float | None = None) -> list[Photo]:
    """The best frame of each burst group (a single photo is its own group), not rejected, above min_score."""
    return [p for p in run.scored if p.pick and rating(p, reject_below) != -1
            and (min_score is None or p.score >= min_score)]


def ranked(photos: list[Photo], sort: str = "score") -> list[Photo]:
    if sort == "score":
        return sorted(photos, key=lambda p: (-(p.score if p.score is not None else -1), p.display))
    if sort == "time":
        return sorted(photos, key=lambda p: (p.capture_time, p.display))
    if sort == "name":
        return sorted(photos, key=lambda p: p.display)
    raise QdsError(f"unknown sort {sort!r} (choose from {', '.join(SORTS)})")


def record(photo: Photo, run: TriageRun, reject_below: float) -> dict:
    """One photo as the JSON lines / contact sheet record: the trace plus triage fields."""
    if photo.error is not None:
        return {"file": photo.display, "error": photo.error}
    entry = run.cache.get(photo.key)
    return entry.trace | {
        "file": photo.display, "rating": rating(photo, reject_below), "group": photo.group,
        "group_size": photo.group_size, "pick": photo.pick, "capture_time": photo.capture_time,
        "time_source": photo.time_source, "cached": photo.cached,
    }


def write_jsonl(path: Path, photos: list[Photo], run: TriageRun, reject_below: float) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        for p in photos:
            f.write(json.dumps(record(p, run, reject_below), ensure_ascii=False) + "\n")


def write_csv(path: Path, photos: list[Photo], run: TriageRun, reject_below: float) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        out = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        out.writeheader()
        for p in photos:
            rec = record(p, run, reject_below)
            if "findings" in rec:
                rec["findings"] = "; ".join(f"{x['type']} {x['severity']:.2f} @ {','.join(map(str, x['box']))}"
                                            for x in rec["findings"])
            out.writerow(rec)


@dataclass
class SidecarReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_ratings: int = 0
    errors: list[tuple[Photo, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # what --dry-run would do, one line per changed sidecar


def write_sidecars(run: TriageRun, *, style: str = "append", xmp_dir: Path | None = None,
                   pick_label: str | None = "Green", respect_existing_rating: bool = True,
                   reject_below: float = 20.0, dry_run: bool = False) -> SidecarReport:
    """Merge each scored photo's verdict into its XMP sidecar; a photo whose sidecar fails is reported."""
    report = SidecarReport()
    for photo in run.scored:
        trace = run.cache.get(photo.key).trace
        findings = tuple(Finding(f["type"], f["severity"], tuple(f["box"]), f["evidence_zoom"])
                         for f in trace["findings"])
        verdict = Verdict(score=photo.score, level=photo.level, rating=rating(photo, reject_below),
                          model=run.model["name"], model_sha256=run.model["sha256"], findings=findings,
                          burst_group=str(photo.group) if photo.group_size > 1 else None, pick=photo.pick)
        try:
            target = sidecar_path(photo.path, style, xmp_dir, _root_of(photo, run) if xmp_dir else None)
            change = write_sidecar(target, verdict, pick_label=pick_label,
                                   respect_existing_rating=respect_existing_rating, dry_run=dry_run)
        except QdsError as e:
            hint = f" ({e.hint})" if e.hint else (" (use --xmp-dir DIR)" if not xmp_dir else "")
            report.errors.append((photo, e.message + hint))
            continue
        report.kept_ratings += change.kept_existing_rating
        if change.created:
            report.created += 1
        elif change.changed:
            report.updated += 1
        else:
            report.unchanged += 1
        if change.changed:
            verb = "create" if change.created else "update"
            kept = " (kept the existing rating)" if change.kept_existing_rating else ""
            report.lines.append(f"{verb} {target}: rating {change.old_rating} -> {change.new_rating}{kept}")
    return report


def _root_of(photo: Photo, run: TriageRun) -> Path | None:
    """The folder given on the command line that holds ``photo`` (sidecars under --xmp-dir mirror below it)."""
    for root in run.roots:
        if root.is_dir() and photo.path.is_relative_to(root):
            return root
    return photo.path.parent


def write_html(path: Path, photos: list[Photo], run: TriageRun, reject_below: float) -> Path:
    """The contact sheet: groups in the order of ``photos`` (their best member's place), pick first."""
    from .contact_sheet import write_contact_sheet

    def records() -> Iterator[dict]:
        shown: set[int] = set()
        members: dict[int, list[Photo]] = {}
        for p in run.scored:
            members.setdefault(p.group, []).append(p)
        for p in photos:
            if p.error is not None:
                yield record(p, run, reject_below)
            elif p.group not in shown:
                shown.add(p.group)
                for m in sorted(members[p.group], key=lambda m: (not m.pick, m.capture_time)):
                    yield record(m, run, reject_below) | {"link": os.path.relpath(m.path, path.parent)}

    by_file = {p.display: p for p in photos}

    def thumbnail(rec: dict) -> bytes | None:
        photo = by_file.get(rec["file"])
        return run.cache.thumbnail(photo.key) if photo and photo.key else None

    return write_contact_sheet(records(), path, thumbnail, title=f"qds triage: {len(run.photos)} photos")


def deliver(photos: list[Photo], dest: Path, run: TriageRun, *, link: bool) -> tuple[int, list[tuple[Photo, str]]]:
    """Copy (or symlink) ``photos`` into ``dest``, mirroring subfolders below the folder given; never overwrite.

    Returns how many were delivered and the per-photo errors. A file already there with the same size
    and mtime counts as delivered (re-runs are idempotent)."""
    done, errors = 0, []
    for p in photos:
        root = _root_of(p, run)
        target = dest / (p.path.relative_to(root) if root and p.path.is_relative_to(root) else p.path.name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(target):
                if _same(target, p.path, link):
                    done += 1
                    continue
                raise FileExistsError(f"{target} already exists and is another file; left as is")
            if link:
                os.symlink(os.path.abspath(p.path), target)
            else:
                tmp = target.with_name(f".{target.name}.qds-tmp")
                shutil.copy2(p.path, tmp)
                os.replace(tmp, target)
            done += 1
        except OSError as e:
            errors.append((p, str(e) if isinstance(e, FileExistsError) else f"cannot deliver ({e.strerror or e})"))
    return done, errors


def _same(target: Path, source: Path, link: bool) -> bool:
    if link:
        return target.is_symlink() and os.path.realpath(target) == os.path.realpath(source)
    a, b = os.stat(target), os.stat(source)
    return (a.st_size, int(a.st_mtime)) == (b.st_size, int(b.st_mtime))


def listing(photos: list[Photo], reject_below: float) -> Iterator[str]:
    """The stdout table: score, level, stars, burst mark, file."""
    for p in photos:
        r = rating(p, reject_below)
        stars = "rejected" if r == -1 else "*" * r
        burst = f"burst {p.group} {'pick' if p.pick else 'alt'}" if p.group_size > 1 else ""
        yield f"{p.score:5.1f}  {p.level:<9}  {stars:<8}  {burst:<14}  {p.display}"


def summary(run: TriageRun, reject_below: float) -> str:
    scored, failed = run.scored, run.failed
    cached = sum(p.cached for p in scored)
    groups = {p.group for p in scored if p.group_size > 1}
    rejected = sum(rating(p, reject_below) == -1 for p in scored)
    rate = (len(scored) - cached) / run.seconds if run.seconds > 0 else 0.0
    buf = io.StringIO()
    buf.write(f"triage: {len(run.photos)} files: {len(scored)} scored ({len(scored) - cached} new, {cached} cached), "
              f"{len(failed)} failed, {run.ignored} companion files ignored; "
              f"{len(groups)} groups of bursts or near-duplicates; "
              f"{len(keepers(run, reject_below))} keepers, {rejected} rejected; "
              f"{run.seconds:.1f} s ({rate:.1f} new images/s)")
    if run.interrupted:
        buf.write("\ntriage: interrupted; everything scored so far is cached: run the same command to go on")
    return buf.getvalue()
