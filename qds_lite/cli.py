"""The `qds` command. Only this module prints and picks exit codes:
0 every input scored, 1 some input failed (after scoring the rest), 2 usage or setup error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__, backends, load
from . import protocol as P
from .critic import load_ahead
from .errors import ImageLoadError, QdsError
from .model_store import available_models, model_folder, resolve


def _vlm_folder(model: str | None) -> Path | None:
    """The folder of ``model`` if it is a full-size VLM critic (manifest kind "vlm"): a path, or the name
    of one fetched by `qds models pull`."""
    root = model_folder(model) if model else None
    if root is None:
        return None
    try:
        return root if json.loads((root / "manifest.json").read_text()).get("kind") == "vlm" else None
    except (OSError, ValueError):
        return None  # the regular loader reports an unreadable manifest


def _input_error(path: str, err: QdsError) -> str:
    """One line for an input that failed, naming it by the path the user gave (two IMG_1.jpg differ)."""
    return f"{path}: {err.reason}" if isinstance(err, ImageLoadError) else err.message


def _fail(err: QdsError) -> None:
    click.echo(f"qds: {err.message}" + (f" ({err.hint})" if err.hint else ""), err=True)
    sys.exit(2)


_MODEL_OPTIONS = (
    click.option("--backend", type=click.Choice(("auto",) + backends.BACKENDS), default="auto", show_default=True),
    click.option("--model", default=None, help="Bundled model name or folder with a manifest.json."),
    click.option("--zooms", type=click.IntRange(0, P.N_CELLS), default=P.DEFAULT_ZOOMS, show_default=True,
                 help="Zoom budget: how many regions the critic may inspect at full resolution (0: the glance "
                      "alone, coarser; `qds triage` then decodes JPEGs at reduced size, about 3x faster)."),
)


def _model_options(fn):
    for option in reversed(_MODEL_OPTIONS):
        fn = option(fn)
    return fn


def _score_all(paths: tuple[str, ...], make_critic):
    """Score ``paths`` in order with the critic ``make_critic()`` builds (setup errors exit 2); the first
    photo decodes while it loads. Yields (path, LoadedImage, Result) or (path, QdsError, None)."""
    loads = load_ahead(paths)
    try:
        critic = make_critic()
    except QdsError as e:
        _fail(e)
    for path, loaded in zip(paths, loads):
        if isinstance(loaded, QdsError):
            yield path, loaded, None
            continue
        try:
            yield path, loaded, critic.score(loaded)
        except QdsError as e:
            yield path, e, None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qds")
def main() -> None:
    """Offline photo-quality critic: where quality suffers, why, and a score."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON trace per line (schema: qds_lite/trace.schema.json).")
@_model_options
@click.option("--threads", type=click.IntRange(1, 64), default=None,
              help="Threads of the small critic's vision encoder and NumPy maths (default 1; 2 pays where cores "
                   "are free; its reasoner runs on one), or llama.cpp's for a VLM critic.")
@click.option("--quant", default=None, help="VLM critics: which quantization to run (default: the manifest's first).")
@click.option("--gpu-layers", type=int, default=None,
              help="VLM critics: layers to offload to the GPU (default: all where the llama.cpp build has a GPU).")
@click.option("--ctx", type=click.IntRange(512), default=8192, show_default=True, help="VLM critics: context size.")
def score(paths: tuple[str, ...], as_json: bool, backend: str, zooms: int, threads: int | None,
          model: str | None, quant: str | None, gpu_layers: int | None, ctx: int) -> None:
    """Score photos: score 0-100, level, and the top findings with where they are.

    --model also takes a full-size VLM critic: a folder made by `python -m export.vlm_convert`, or the name
    of one fetched by `qds models pull`.
    """
    def make_critic():
        vlm = _vlm_folder(model)
        if vlm is not None:
            from .vlm import VLMCritic

            return VLMCritic(vlm, quant=quant, n_gpu_layers=gpu_layers, n_ctx=ctx, n_threads=threads,
                             max_zooms=zooms)
        return load(model, backend=backend, threads=threads, zooms=zooms)

    failed = 0
    for path, err, r in _score_all(paths, make_critic):
        if r is None:
            failed += 1
            click.echo(f"qds: {_input_error(path, err)}", err=True)
            if as_json:
                click.echo(json.dumps({"file": path, "error": _input_error(path, err)}))
            continue
        if as_json:
            click.echo(json.dumps(r.trace | {"file": path}))
        else:
            found = "; ".join(f.describe() for f in r.findings[:3]) or "no visible defects"
            click.echo(f"{path}  {r.score:5.1f}  {r.level:<9}  {found}")
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("photo", type=click.Path())
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Picture to write (.png, .jpg or .webp), or .html with --html.")
@click.option("--html", "as_html", is_flag=True, help="Interactive page: hover a finding to see the zoomed crop.")
@click.option("--width", type=click.IntRange(320, 8000), default=1200, show_default=True)
@_model_options
def explain(photo: str, out: Path, as_html: bool, width: int, backend: str, model: str | None, zooms: int) -> None:
    """Draw the critic's zooms and findings on PHOTO, with its score, level distribution and rationale."""
    from .explain import write_explanation, write_explanation_html

    for path, loaded, r in _score_all((photo,), lambda: load(model, backend=backend, zooms=zooms)):
        if r is None:
            click.echo(f"qds: {_input_error(path, loaded)}", err=True)
            sys.exit(1)
        try:
            (write_explanation_html if as_html else write_explanation)(loaded, r, out, width=width, input_path=path)
        except QdsError as e:
            _fail(e)
        click.echo(f"{path}  {r.score:5.1f}  {r.level}: {r.rationale}")
        click.echo(f"wrote {out}", err=True)


@main.command()
@click.argument("photo", type=click.Path())
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the refined photo (never the input); format from the extension.")
@click.option("--max-steps", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--no-gate", is_flag=True,
              help="Keep the best-scoring edit without asking the edit gate: bolder, and wrong more often.")
@click.option("--cautious", is_flag=True,
              help="Keep a local edit only where the critic finds its fault again in the photo reframed a little: "
                   "fewer edits that harm a photo, fewer that help.")
@click.option("--json", "as_json", is_flag=True, help="The step log and both traces as one JSON object.")
@_model_options
def refine(photo: str, out: Path, max_steps: int, no_gate: bool, cautious: bool, as_json: bool, backend: str,
           model: str | None, zooms: int) -> None:
    """Improve PHOTO where the critic finds fault; keep an edit only if the score rises, the edit gate judges it
    likely to bring the photo closer to what it should be, and NIQE holds."""
    from .atomic import refuse_input_overwrite
    from .refine import refine as refine_photo
    from .refine import write_refined

    try:
        refuse_input_overwrite(photo, out)
        critic = load(model, backend=backend, zooms=zooms)
    except QdsError as e:
        _fail(e)
    try:
        r = refine_photo(critic, photo, max_steps=max_steps, gate=not no_gate, cautious=cautious)
    except ImageLoadError as e:
        click.echo(f"qds: {_input_error(photo, e)}", err=True)
        sys.exit(1)
    except QdsError as e:
        _fail(e)
    try:
        write_refined(r, out, input_path=photo)
    except QdsError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(r.to_json()))
    else:
        for n, step in enumerate(r.steps, 1):
            verdict = "kept" if step.kept else "dropped"
            looked = ", zoomed there" if step.looked else ""
            click.echo(f"{n}. {step.op:<12} {step.where:<12} {step.score_before:5.1f} -> {step.score_after:5.1f}  "
                       f"{verdict} ({step.reason}{looked})")
        click.echo(f"{photo}  {r.initial.score:5.1f} -> {r.final.score:5.1f}")
    click.echo(f"wrote {out}", err=True)


@main.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Probabilities, ranking and reasons as one JSON object.")
@_model_options
def compare(photos: tuple[str, ...], as_json: bool, backend: str, model: str | None, zooms: int) -> None:
    """P(one photo better than another) under the Thurstone model, a ranking with confidence, and reasons."""
    from .compare import compare as compare_results

    if len(photos) < 2:
        _fail(QdsError("compare needs at least two photos"))
    results, failed = [], 0
    for path, loaded, r in _score_all(photos, lambda: load(model, backend=backend, zooms=zooms)):
        if r is None:
            failed += 1
            click.echo(f"qds: {_input_error(path, loaded)}", err=True)
        else:
            results.append(r.__class__(**(r.__dict__ | {"file": path})))
    if len(results) < 2:
        sys.exit(1)
    c = compare_results(results)
    if as_json:
        click.echo(json.dumps(c.to_json()))
    else:
        for n, item in enumerate(c.ranking, 1):
            conf = "" if item.confidence is None else f"  P(better than #{n + 1}) = {item.confidence:.2f}"
            click.echo(f"#{n}  {item.score:5.1f}  {c.files[item.index]}{conf}")
        for pair in c.pairs:
            click.echo(f"{c.files[pair.better]} > {c.files[pair.worse]}: P = {pair.prob:.2f}")
            for reason in pair.reasons:
                click.echo(f"    {reason}")
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Processes (default: all cores).")
@_model_options
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite cache of results [default: $QDS_CACHE_DIR, $XDG_CACHE_HOME/qds or ~/.cache/qds].")
@click.option("--no-cache", is_flag=True, help="Score everything afresh and keep no cache.")
@click.option("--xmp/--no-xmp", default=True, show_default=True, help="Merge ratings and findings into XMP sidecars.")
@click.option("--xmp-style", type=click.Choice(("append", "replace")), default="append", show_default=True,
              help="append: photo.jpg.xmp (darktable, digiKam); replace: photo.xmp (Lightroom).")
@click.option("--xmp-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write sidecars here (subfolders mirrored) instead of beside the photos.")
@click.option("--pick-label", default="Green", show_default=True, help="xmp:Label of picks; 'none': no labels.")
@click.option("--respect-existing-ratings/--overwrite-ratings", default=True, show_default=True,
              help="Keep star ratings that a person (not qds) put in existing sidecars.")
@click.option("--reject-below", type=click.FloatRange(0, 100), default=20.0, show_default=True,
              help="Scores below this are rated -1 (rejected).")
@click.option("--dry-run", is_flag=True, help="Score, then show what would change; write no sidecar and copy nothing.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--jsonl", "jsonl_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Contact sheet (thumbnails in a folder beside it); opens from disk, no network.")
@click.option("--top", type=click.IntRange(1), default=None, help="List (and deliver) only the N best.")
@click.option("--min-score", type=click.FloatRange(0, 100), default=None, help="List and deliver only scores >= this.")
@click.option("--sort", type=click.Choice(("score", "time", "name")), default="score", show_default=True)
@click.option("--copy-picks", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy the keepers (best of each burst, not rejected) here. Originals are never moved.")
@click.option("--link-picks", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Symlink the keepers here instead of copying.")
@click.option("--burst-gap", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Seconds between frames of one burst.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
def triage(inputs: tuple[str, ...], workers: int | None, backend: str, model: str | None, zooms: int,
           cache_path: Path | None, no_cache: bool, xmp: bool, xmp_style: str, xmp_dir: Path | None, pick_label: str,
           respect_existing_ratings: bool, reject_below: float, dry_run: bool, csv_path: Path | None,
           jsonl_path: Path | None, html_path: Path | None, top: int | None, min_score: float | None, sort: str,
           copy_picks: Path | None, link_picks: Path | None, burst_gap: float, quiet: bool) -> None:
    """Triage a whole shoot: rank, group bursts, pick the best of each, rate in XMP sidecars, report."""
    from . import triage as T
    from . import triage_outputs as O
    from .progress import Progress
    from .triage_cache import default_path

    if copy_picks and link_picks:
        _fail(QdsError("choose one of --copy-picks and --link-picks"))
    outputs = [p for p in (csv_path, jsonl_path, html_path) if p]
    exclude = [p.parent / f"{p.stem}_files" for p in outputs] + [d for d in (copy_picks, link_picks, xmp_dir) if d]
    bar = Progress(quiet)
    try:
        run = T.run(inputs, model=model, backend=backend, zooms=zooms, workers=workers,
                    cache_path=None if no_cache else (cache_path or default_path()), exclude=exclude,
                    max_gap_s=burst_gap, progress=bar.start)
    except QdsError as e:
        bar.close()
        _fail(e)
    bar.close()
    if run.interrupted:
        click.echo(O.summary(run, reject_below), err=True)
        sys.exit(130)
    problems = [(p, p.error) for p in run.failed]
    shown = O.ranked([p for p in run.scored if min_score is None or p.score >= min_score], sort)[:top]
    for line in O.listing(shown, reject_below):
        click.echo(line)
    if xmp:
        rep = O.write_sidecars(run, style=xmp_style, xmp_dir=xmp_dir,
                               pick_label=None if pick_label.lower() == "none" else pick_label,
                               respect_existing_rating=respect_existing_ratings, reject_below=reject_below,
                               dry_run=dry_run)
        problems += rep.errors
        for line in rep.lines if dry_run else ():
            click.echo(f"dry run: would {line}", err=True)
        if not quiet:
            verb = "would be" if dry_run else "were"
            click.echo(f"xmp: {rep.created} sidecars {verb} created, {rep.updated} updated, {rep.unchanged} unchanged; "
                       f"{rep.kept_ratings} existing ratings kept", err=True)
    everything = O.ranked(run.photos, sort)
    for path, write in ((csv_path, O.write_csv), (jsonl_path, O.write_jsonl), (html_path, O.write_html)):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path, everything, run, reject_below)
        except OSError as e:
            _fail(QdsError(f"{path}: cannot write ({e.strerror or e})"))
        if not quiet:
            click.echo(f"wrote {path}", err=True)
    dest = copy_picks or link_picks
    if dest:
        picks = O.ranked([p for p in O.keepers(run, reject_below, min_score)], "score")[:top]
        if dry_run:
            click.echo(f"dry run: would {'link' if link_picks else 'copy'} {len(picks)} keepers into {dest}", err=True)
        else:
            n, errors = O.deliver(picks, dest, run, link=bool(link_picks))
            problems += errors
            if not quiet:
                click.echo(f"picks: {n} of {len(picks)} keepers {'linked' if link_picks else 'copied'} into {dest}",
                           err=True)
    for photo, message in problems:
        click.echo(f"qds: {photo.display}: {message}", err=True)
    if not quiet:
        click.echo(O.summary(run, reject_below), err=True)
    sys.exit(1 if problems else 0)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--repeat", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=None)
def bench(image: str, repeat: int, threads: int | None) -> None:
    """Speed on this machine for IMAGE: model time per backend, as ratios to a Pillow decode of it."""
    from .bench import run

    path = Path(image)
    try:
        rows = run(path, repeat, threads)
    except QdsError as e:
        _fail(e)
    click.echo(f"image: {path} (median of {repeat})")
    for r in rows:
        ratio = f"  {r['vs_onnx_model']:.2f}x onnx" if "vs_onnx_model" in r else ""
        click.echo(f"{r['what']:<34} {r['ms']:8.1f} ms  {r['vs_decode']:6.2f}x Pillow decode{ratio}")


@main.command("backends")
def list_backends() -> None:
    """Which backends can run here (auto tries them in this order)."""
    for name, reason in backends.probe().items():
        click.echo(f"{name:<6} {'available' if reason is None else 'unavailable: ' + reason}")


@main.group()
def models() -> None:
    """Bundled critics, known full-size critics, pulling and verifying them."""


@models.command("list")
def models_list() -> None:
    """Bundled critics (size, evaluation figures) and the known full-size critics (estimated size, memory)."""
    from .registry import remote_critics

    for name in available_models():
        try:
            m = resolve(name).manifest
        except QdsError as e:
            click.echo(f"{name}: {e.message}")
            continue
        click.echo(f"{name}  v{m['version']}  {m['total_size'] / 1e6:.1f} MB  bundled (sha256-verified)")
        for key, value in m.get("evaluation", {}).get("summary", {}).items():
            click.echo(f"    {key}: {value}")
    click.echo("known full-size critics (not bundled; `qds models pull NAME` fetches one from Hugging Face):")
    critics = remote_critics()
    try:
        from .hub import cached

        local, missing = cached(critics), "not pulled"
    except QdsError as e:
        local, missing = {}, f"not pulled ({e.hint})"
    for c in critics:
        quant = next((q for q in c.sizes_gb if q != "mmproj-F16"), None)
        sizes = ", ".join(f"{q} ~{gb:.1f} GB" for q, gb in c.sizes_gb.items())
        click.echo(f"{c.name}  {c.hf_repo}  {c.format}  {c.license}  {'verified' if c.verified else 'unverified'}")
        if quant:
            click.echo(f"    files: {sizes}; {quant} needs ~{c.memory_gb(quant):.1f} GB (RAM, or VRAM fully offloaded)")
        got = local.get(c.name)
        click.echo(f"    pulled: commit {got.commit[:12]}, {got.n_files} files, {got.size / 1e9:.1f} GB, in "
                   f"{got.snapshot}" if got else f"    {missing}")


@models.command("pull")
@click.argument("name")
@click.option("--revision", default=None, help="Commit (or branch, tag) to fetch instead of the registry's pinned one.")
@click.option("--quant", default=None, help="GGUF entries: which language model to fetch (default: the first listed).")
@click.option("--allow-unverified", is_flag=True,
              help="Pull even with no sha256 recorded for it, and print the hashes (trust on first use).")
def models_pull(name: str, revision: str | None, quant: str | None, allow_unverified: bool) -> None:
    """Download the known critic NAME (see `qds models list`) into the Hugging Face cache, sha256-checked.

    The only command that downloads. Uses huggingface-hub: its cache ($HF_HUB_CACHE, default
    $HF_HOME/hub or ~/.cache/huggingface/hub), HF_HUB_OFFLINE=1 (then only what is cached), resuming of
    interrupted downloads, $HF_TOKEN for gated repos.
    """
    from . import registry
    from .hub import pull

    try:
        p = pull(name, revision, quant, allow_unverified, progress=lambda path: click.echo(f"sha256 {path}", err=True))
    except QdsError as e:
        _fail(e)
    click.echo(f"{name}: {len(p.sha256)} files, {p.size / 1e9:.2f} GB, {p.critic.hf_repo} commit {p.commit}")
    click.echo(f"in {p.snapshot}")
    if p.verified:
        click.echo("every file matches its sha256 in the registry")
    else:
        click.echo(f"UNVERIFIED, trust on first use: these sha256s are of what was downloaded, checked against "
                   f"nothing. To check later pulls, record them in the {name!r} entry of {registry.REGISTRY_PATH}:")
        click.echo(json.dumps({"revision": p.commit, "files": p.sha256}, indent=1))
    if p.model_dir:
        click.echo(f"next: qds score photo.jpg --model {p.model_dir}")
    else:
        click.echo("next: convert it to GGUF + mmproj (from a qds-lite checkout with the gguf and train extras), "
                   "then score with it:")
        click.echo(f"    python -m export.vlm_convert {p.snapshot} --out models/{name} --name {name} --quant Q4_K_M")
        click.echo(f"    qds score photo.jpg --model models/{name}")


@models.command("verify")
@click.argument("models_", metavar="[NAME|DIR]...", nargs=-1)
def models_verify(models_: tuple[str, ...]) -> None:
    """Check every file of each model (default: the bundled ones) against the sha256 in its manifest."""
    from .registry import verify

    failed = 0
    for model in models_ or tuple(available_models()):
        try:
            for line in verify(model):
                click.echo(f"ok  {line}")
        except QdsError as e:
            failed += 1
            click.echo(f"qds: {e.message}" + (f" ({e.hint})" if e.hint else ""), err=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
