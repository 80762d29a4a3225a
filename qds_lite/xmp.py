"""XMP sidecars for ``qds triage``: star ratings, a pick label and the critic's findings, merged into what is there.

What qds writes (all readable by exiv2, hence digiKam and darktable, and by Lightroom / Bridge):

- ``xmp:Rating``: 1-5 stars, or -1 = rejected (darktable and Bridge show -1 as "rejected").
- ``xmp:Label``: a colour label (``pick_label``, default "Green") on the best photo of a burst.
- The ``qds`` namespace, URI :data:`QDS_NS` = ``https://qds.dev/ns/1.0/`` (prefix ``qds``): ``qds:Score``
  (0-100), ``qds:Level``, ``qds:Model``, ``qds:ModelSHA256``, ``qds:BurstGroup``, ``qds:Pick`` (XMP Boolean),
  ``qds:SuggestedRating`` (what :func:`rating_for` gave), ``qds:Rating`` / ``qds:Label`` (what qds itself
  last put into ``xmp:Rating`` / ``xmp:Label``; absent when a human value was kept) and ``qds:Findings``, an
  ``rdf:Seq`` of structs with ``qds:type``, ``qds:severity`` (0-1) and ``qds:box`` ("x0,y0,x1,y1" fractions of
  the oriented image). exiv2 reads them as ``Xmp.qds.Findings[1]/qds:type`` etc.

Merging: an existing sidecar keeps every element, attribute and namespace prefix that other tools put there
(darktable history, Lightroom ``crs:`` settings, keywords ...); only the ``qds:`` properties are replaced, and
``xmp:Rating`` / ``xmp:Label`` are updated in place, in the form (attribute or element) they already had.

Who owns the rating: if ``xmp:Rating`` differs from ``qds:Rating`` (or there is no ``qds:Rating``), a person or
another tool set it and, with ``respect_existing_rating=True``, it is kept. Rating 0 counts as "no rating": the
XMP spec and Lightroom define 0 as unrated, and darktable's "0 stars" cannot be told apart from that by any
other tool. Caveat: darktable gives every imported image its import rating (1 star by default) and writes it
to the sidecar, so on a darktable-imported shoot that 1 looks like a human choice; use
``respect_existing_rating=False`` there. Labels follow the same rule, and qds only ever removes a label it
wrote itself.

Files: output is UTF-8 with an XML declaration and an ``x:xmpmeta`` root, as exiv2 (digiKam, darktable) writes
sidecars; Lightroom reads those too. A sidecar that came with an ``<?xpacket?>`` wrapper keeps one. Writes are
atomic (:mod:`qds_lite.atomic`); a sidecar that cannot be parsed is never overwritten.

Parsing untrusted files: a first pass with the stdlib expat parser refuses any DOCTYPE, so no entity can be
declared at all (no billion-laughs expansion, no external entity, whatever the expat version) -- the protection
defusedxml would add, without the dependency. The same pass collects the file's namespace prefixes so that
re-serialising keeps them (ElementTree would otherwise write ``ns0:``).
"""

from __future__ import annotations

import math
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from xml.parsers import expat

from .atomic import write_bytes_atomic
from .errors import QdsError

if TYPE_CHECKING:
    from .result import Result

QDS_NS = "https://qds.dev/ns/1.0/"
NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "darktable": "http://darktable.sf.net/",
    "crs": "http://ns.adobe.com/camera-raw-settings/1.0/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "qds": QDS_NS,
}
STYLES = ("append", "replace")
# Score thresholds for 5, 4, 3 and 2 stars (below the last: 1 star). On the calibrated scale (qds_lite/scale.py:
# one whole-image defect of severity s scores about 100 (1 - s)): >=85 no visible defect, >=70 about a slight
# one (severity 0.2 scores 80), >=50 mild (0.4: 60), >=35 moderate (0.6: 40), below that strong; the default
# reject threshold, 20, is a typical severity-0.8 photo.
DEFAULT_THRESHOLDS = (85.0, 70.0, 50.0, 35.0)

_RDF, _XMP, _QDS = (f"{{{NS[p]}}}" for p in ("rdf", "xmp", "qds"))
_RATING, _LABEL = _XMP + "Rating", _XMP + "Label"
_ROOTS = ("{adobe:ns:meta/}xmpmeta", "{adobe:ns:meta/}xapmeta", _RDF + "RDF")
_XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_FIX_HINT = "qds leaves it untouched; fix or move it and run again"
_ET_LOCK = threading.Lock()  # ElementTree's prefix table is global: register + serialise under one lock


class SidecarError(QdsError):
    """A sidecar could not be read (not XML / not XMP) or written; the message names the file."""


class _FindingLike(Protocol):  # qds_lite.result.Finding, or anything shaped like it
    @property
    def type(self) -> str: ...
    @property
    def severity(self) -> float: ...
    @property
    def box(self) -> tuple[float, float, float, float]: ...


@dataclass(frozen=True)
class Verdict:
    """What qds says about one photo: the input of :func:`write_sidecar`."""

    score: float
    level: str
    rating: int  # -1 (rejected) or 1..5, usually rating_for(score)
    model: str = ""
    model_sha256: str = ""
    findings: tuple[_FindingLike, ...] = ()
    burst_group: str | None = None
    pick: bool = False  # best of its burst: gets the pick label

    def __post_init__(self) -> None:
        if self.rating not in (-1, 1, 2, 3, 4, 5):
            raise QdsError(f"XMP rating must be -1 (rejected) or 1..5, got {self.rating!r}")

    @classmethod
    def from_result(cls, result: Result, *, rating: int | None = None, burst_group: str | None = None,
                    pick: bool = False) -> Verdict:
        """Build from a :class:`qds_lite.Result`; ``rating`` defaults to ``rating_for(result.score)``."""
        return cls(score=result.score, level=result.level,
                   rating=rating_for(result.score) if rating is None else rating,
                   model=str(result.model.get("name", "")), model_sha256=str(result.model.get("sha256", "")),
                   findings=tuple(result.findings), burst_group=burst_group, pick=pick)


@dataclass(frozen=True)
class SidecarChange:
    """What :func:`write_sidecar` did (or, with ``dry_run``, would do)."""

    path: Path
    created: bool  # there was no sidecar before
    old_rating: int | None  # xmp:Rating before (None: absent or not an integer)
    new_rating: int | None  # xmp:Rating after
    kept_existing_rating: bool  # a rating qds did not write was left alone
    changed: bool  # the file's bytes differ (or would differ) from before
    wrote: bool  # the file was written (False when unchanged or dry_run)
    kept_existing_label: bool = False


def rating_for(score: float, reject_below: float = 20.0,
               thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> int:
    """Map a 0-100 score to an XMP rating: -1 below ``reject_below`` (0 never rejects), else 5..1 stars.

    ``thresholds`` are the lowest scores for 5, 4, 3 and 2 stars, in descending order.
    """
    if len(thresholds) != 4 or any(a < b for a, b in zip(thresholds, thresholds[1:])):
        raise QdsError(f"rating thresholds must be 4 descending scores, got {tuple(thresholds)}")
    if math.isnan(score):
        raise QdsError("cannot rate a NaN score")
    if score < reject_below:
        return -1
    return next((5 - i for i, t in enumerate(thresholds) if score >= t), 1)


def sidecar_path(photo: Path, style: str, xmp_dir: Path | None = None, relative_to: Path | None = None) -> Path:
    """The sidecar for ``photo``: ``append`` -> ``photo.jpg.xmp`` (darktable, digiKam), ``replace`` ->
    ``photo.xmp`` (Lightroom, Bridge; note ``a.CR2`` and ``a.JPG`` then share ``a.xmp``, as in Lightroom).

    With ``xmp_dir`` the sidecar goes there instead of beside the photo. Same-named photos from different
    subfolders would collide, so pass ``relative_to`` (the shoot root): the photo's subfolders below it are
    mirrored under ``xmp_dir`` (``root/a/x.jpg`` -> ``xmp_dir/a/x.jpg.xmp``).
    """
    photo = Path(photo)
    if style not in STYLES:
        raise QdsError(f"unknown XMP sidecar style {style!r}", hint="use 'append' (photo.jpg.xmp) or 'replace' "
                       "(photo.xmp)")
    name = photo.name + ".xmp" if style == "append" else photo.stem + ".xmp"
    if xmp_dir is None:
        return photo.with_name(name)
    folder = Path(xmp_dir)
    if relative_to is not None:
        try:
            folder = folder / photo.parent.relative_to(relative_to)
        except ValueError:
            raise QdsError(f"{photo}: not inside {relative_to}") from None
    return folder / name


def write_sidecar(path: Path, verdict: Verdict, *, pick_label: str | None = "Green",
                  respect_existing_rating: bool = True, dry_run: bool = False) -> SidecarChange:
    """Merge ``verdict`` into the XMP sidecar at ``path`` (created if missing), atomically.

    ``pick_label``: the ``xmp:Label`` given to picks (None: qds never touches labels).
    ``respect_existing_rating``: keep an ``xmp:Rating`` (and a pick's ``xmp:Label``) that qds did not write. Raises
    :class:`SidecarError` for a sidecar that is not XMP (left untouched) or a folder that cannot be written.
    """
    path = Path(path)
    if path.suffix.lower() != ".xmp":  # guards the photo itself against a mixed-up argument
        raise SidecarError(f"{path}: refusing to write a sidecar whose name does not end in .xmp")
    try:
        old = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        old = None
    except OSError as e:
        raise SidecarError(f"{path}: cannot read sidecar: {e.strerror or e}") from e
    root, rdf, prefixes, wrapped = _new_tree() if old is None else _parse(old, path)
    descs = rdf.findall(_RDF + "Description")
    if not descs:
        descs = [ET.SubElement(rdf, _RDF + "Description", {_RDF + "about": ""})]

    old_rating = _as_int(_get(descs, _RATING))
    human_rating = old_rating not in (None, 0) and old_rating != _as_int(_get(descs, _QDS + "Rating"))
    keep_rating = respect_existing_rating and human_rating
    old_label = _get(descs, _LABEL)
    human_label = bool(old_label) and old_label != _get(descs, _QDS + "Label")
    keep_label = pick_label is not None and human_label and (respect_existing_rating or not verdict.pick)

    for d in descs:  # old qds data goes; everything else stays
        for k in [k for k in d.attrib if k.startswith(_QDS)]:
            del d.attrib[k]
        for child in [c for c in d if isinstance(c.tag, str) and c.tag.startswith(_QDS)]:
            d.remove(child)
    main = descs[0]
    props = {"Score": f"{verdict.score:.2f}", "Level": verdict.level, "Model": verdict.model,
             "ModelSHA256": verdict.model_sha256, "BurstGroup": verdict.burst_group or "",
             "Pick": "True" if verdict.pick else "False", "SuggestedRating": str(verdict.rating)}
    if not keep_rating:
        _set(descs, _RATING, str(verdict.rating))
        props["Rating"] = str(verdict.rating)
    if pick_label is not None and not keep_label:
        if verdict.pick:
            _set(descs, _LABEL, pick_label)
            props["Label"] = pick_label
        elif old_label is not None:
            _remove(descs, _LABEL)  # our stale pick label (a human's was kept above)
    for key, value in props.items():
        if value:
            main.set(_QDS + key, value)
    if verdict.findings:
        seq = ET.SubElement(ET.SubElement(main, _QDS + "Findings"), _RDF + "Seq")
        for f in verdict.findings:
            ET.SubElement(seq, _RDF + "li", {_QDS + "type": f.type, _QDS + "severity": f"{f.severity:.2f}",
                                             _QDS + "box": ",".join(_num(v) for v in f.box)})

    data = _serialise(root, prefixes, wrapped)
    changed = data != old
    if changed and not dry_run:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data)
        except OSError as e:
            raise SidecarError(f"{path}: cannot write sidecar: {e.strerror or e}",
                               hint="check the folder's permissions, or write sidecars elsewhere") from e
    return SidecarChange(path=path, created=old is None, old_rating=old_rating,
                         new_rating=old_rating if keep_rating else verdict.rating,
                         kept_existing_rating=keep_rating, changed=changed, wrote=changed and not dry_run,
                         kept_existing_label=keep_label)


def _new_tree() -> tuple[ET.Element, ET.Element, dict[str, str], bool]:
    root = ET.Element("{adobe:ns:meta/}xmpmeta")
    rdf = ET.SubElement(root, _RDF + "RDF")
    ET.SubElement(rdf, _RDF + "Description", {_RDF + "about": ""})
    return root, rdf, {}, False


def _parse(data: bytes, path: Path) -> tuple[ET.Element, ET.Element, dict[str, str], bool]:
    """Parse an existing sidecar: its root, rdf:RDF, namespace prefixes and whether it had an xpacket."""
    prefixes: dict[str, str] = {}

    def no_doctype(*_args) -> None:
        raise SidecarError(f"{path}: not an XMP sidecar: it has a DOCTYPE (never used by XMP; refused for safety)",
                           hint=_FIX_HINT)

    check = expat.ParserCreate(namespace_separator=" ")
    check.StartDoctypeDeclHandler = no_doctype
    check.StartNamespaceDeclHandler = lambda prefix, uri: prefixes.setdefault(prefix or "", uri)
    try:
        check.Parse(data, True)
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
        parser.feed(data)
        root = parser.close()
    except (expat.ExpatError, ET.ParseError) as e:
        raise SidecarError(f"{path}: not an XMP sidecar: invalid XML ({e})", hint=_FIX_HINT) from None
    rdf = root if root.tag == _RDF + "RDF" else root.find(_RDF + "RDF")
    if root.tag not in _ROOTS or rdf is None:
        raise SidecarError(f"{path}: not an XMP sidecar: no x:xmpmeta/rdf:RDF (root is {root.tag})",
                           hint=_FIX_HINT)
    return root, rdf, prefixes, b"<?xpacket begin" in data[:200]


def _serialise(root: ET.Element, prefixes: dict[str, str], wrapped: bool) -> bytes:
    ET.indent(root, space=" ")
    with _ET_LOCK:
        for prefix, uri in prefixes.items():
            if prefix and not (prefix.startswith("ns") and prefix[2:].isdigit()):
                ET.register_namespace(prefix, uri)
        for prefix, uri in NS.items():  # conventional prefixes win over odd ones a file may use
            ET.register_namespace(prefix, uri)
        body = ET.tostring(root, encoding="unicode")
    head = _XPACKET_BEGIN if wrapped else '<?xml version="1.0" encoding="UTF-8"?>\n'
    return (head + body + ('\n<?xpacket end="w"?>' if wrapped else "") + "\n").encode("utf-8")


def _get(descs: Iterable[ET.Element], key: str) -> str | None:
    """A simple property's value, in attribute or element form."""
    for d in descs:
        if key in d.attrib:
            return d.attrib[key]
        child = d.find(key)
        if child is not None:
            return (child.text or "").strip()
    return None


def _set(descs: list[ET.Element], key: str, value: str) -> None:
    """Update a simple property where it is, keeping its form; new ones become attributes of the first."""
    for d in descs:
        if key in d.attrib:
            d.set(key, value)
            return
        child = d.find(key)
        if child is not None:
            child.text = value
            return
    descs[0].set(key, value)


def _remove(descs: Iterable[ET.Element], key: str) -> None:
    for d in descs:
        d.attrib.pop(key, None)
        for child in d.findall(key):
            d.remove(child)


def _num(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".") or "0"


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
