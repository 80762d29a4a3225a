"""The `qds` command. Only this module prints and picks exit codes:
0 every input scored, 1 some input failed (after scoring the rest), 2 usage or setup error."""

from __future__ import annotations

import json
import sys

import click

from . import __version__, backends, load
from . import protocol as P
from .critic import load_ahead
from .errors import QdsError
from .model_store import available_models, resolve


def _fail(err: QdsError) -> None:
    click.echo(f"qds: {err.message}" + (f" ({err.hint})" if err.hint else ""), err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qds")
def main() -> None:
    """Offline photo-quality critic: where quality suffers, why, and a score."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON trace per line (schema: qds_lite/trace.schema.json).")
@click.option("--backend", type=click.Choice(("auto",) + backends.BACKENDS), default="auto", show_default=True)
@click.option("--zooms", type=click.IntRange(0, P.N_CELLS), default=P.DEFAULT_ZOOMS, show_default=True,
              help="Zoom budget: how many regions the critic may inspect at full resolution.")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Threads for the model engine.")
@click.option("--model", default=None, help="Bundled model name or folder with a manifest.json.")
def score(paths: tuple[str, ...], as_json: bool, backend: str, zooms: int, threads: int | None,
          model: str | None) -> None:
    """Score photos: score 0-100, level, and the top findings with where they are."""
    loads = load_ahead(paths)  # the first photo decodes while the critic loads
    try:
        critic = load(model, backend=backend, threads=threads, zooms=zooms)
    except QdsError as e:
        _fail(e)
    failed = 0
    for path, loaded in zip(paths, loads):
        try:
            if isinstance(loaded, QdsError):
                raise loaded
            r = critic.score(loaded)
        except QdsError as e:
            failed += 1
            click.echo(f"qds: {e.message}", err=True)
            if as_json:
                click.echo(json.dumps({"file": path, "error": e.message}))
            continue
        if as_json:
            click.echo(json.dumps(r.trace | {"file": path}))
        else:
            found = "; ".join(f.describe() for f in r.findings[:3]) or "no visible defects"
            click.echo(f"{path}  {r.score:5.1f}  {r.level:<9}  {found}")
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--repeat", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=None)
def bench(image: str, repeat: int, threads: int | None) -> None:
    """Speed on this machine for IMAGE: model time per backend, as ratios to a Pillow decode of it."""
    from pathlib import Path

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
    """Bundled critics and their manifests."""


@models.command("list")
def models_list() -> None:
    """Bundled critics with size and evaluation figures from their manifests."""
    for name in available_models():
        try:
            m = resolve(name).manifest
        except QdsError as e:
            click.echo(f"{name}: {e.message}")
            continue
        click.echo(f"{name}  v{m['version']}  {m['total_size'] / 1e6:.1f} MB  (sha256-verified)")
        for key, value in m.get("evaluation", {}).get("summary", {}).items():
            click.echo(f"    {key}: {value}")


if __name__ == "__main__":  # pragma: no cover
    main()
