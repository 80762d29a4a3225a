"""The frozen-feature baseline "MobileNetV2+ridge": frozen ImageNet features + ridge regression.

What
    The ImageNet MobileNetV2 trunk exactly as the critic starts from it (:func:`export.data.trunk_arrays`:
    blocks 1-13, batch norm folded, fp16-rounded weights), frozen, run by
    :func:`kernels.model.trunk_features` on the 256 px glance view (:func:`qds_lite.io.glance_view`).
    Of each of the 16 cells only the MobileNet taps' mean and std are kept (the first 304 numbers; not the
    pixel and scene statistics that follow them in the critic's features). An image is described by the
    mean and the standard deviation of those over the cells (608 numbers), and a ridge regression on the
    standardised features predicts the critic's quality target (:func:`export.oracle.quality`, 1..5,
    higher is better).
Why
    DESIGN.md section 5 ("Lessons from a quick prototype"): such a baseline already ranked distortion
    levels better than BRISQUE and NIQE, and any critic we ship must clearly beat it, measured in the
    same run; so ``benchmarks.accuracy`` reports it beside the classical baselines.
How it is fitted
    Every photo of the **train** split (never dev or test) gives ``variants`` samples made as the critic's
    training samples are (``export.samples``): :func:`export.samples.frame`, then :func:`export.synth.sample`
    (up to two degradations, clean with probability ``p_clean``) and :func:`export.synth.apply`, with the
    same per-photo seeds, so that with seed 0 they are the first samples of the critic's own training set.
    The ridge penalty is the one of :data:`ALPHAS` with the best SRCC on the **dev** split, built the same
    way; the weights are those fitted on train alone. The fit takes a few minutes and is cached as an .npz
    in ``build/frozen_baseline/``, keyed by the settings, the photos' names, the source of the synthesizer, the
    oracle, the reference model and this module, and the trunk weights' sha256; later runs load it.

Only NumPy is imported here at module level; torch, the trunk and the fit come on first use.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

NAME = "MobileNetV2+ridge"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / "build" / "frozen_baseline"
VARIANTS = 4  # degraded samples per photo
SEED = 0
P_CLEAN = 0.12  # share of clean samples, as export.samples.build
MAX_DEGRADATIONS = 2  # as export.samples.make_sample
ALPHAS = tuple(10.0**k for k in range(-1, 6))


@dataclass(frozen=True)
class RidgeModel:
    """A fitted ridge on standardised features: quality = ((f - mean) / std) @ weights + bias."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    alpha: float
    dev_srcc: float
    n_samples: int  # training samples
    seed: int

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.std) @ self.weights + self.bias

    def save(self, path: Path) -> None:
        from qds_lite.atomic import atomic_open

        with atomic_open(path) as f:
            np.savez(f, **{fl.name: np.asarray(getattr(self, fl.name)) for fl in fields(self)})

    @classmethod
    def load(cls, path: Path) -> RidgeModel:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        scalars = {"bias": float, "alpha": float, "dev_srcc": float, "n_samples": int, "seed": int}
        return cls(**{k: scalars[k](v) if k in scalars else v for k, v in arrays.items()})


@functools.lru_cache(maxsize=1)
def _trunk() -> tuple[dict, str]:
    """The frozen trunk as torch tensors, and the sha256 of its weights."""
    from export.data import trunk_arrays
    from kernels.model import to_torch

    arrays = trunk_arrays()
    digest = hashlib.sha256()
    for k in sorted(arrays):
        digest.update(k.encode())
        digest.update(np.ascontiguousarray(arrays[k]).tobytes())
    return to_torch(arrays), digest.hexdigest()


def image_features(views: Sequence[np.ndarray]) -> np.ndarray:
    """Glance views (256x256x3 uint8) -> frozen features (N, 608): the per-cell mean and std of the
    MobileNet taps (kernels.model.TAP_BLOCKS), then their mean and std over the cells."""
    import torch

    from export.samples import to_nchw
    from kernels.model import TAP_BLOCKS, mobilenet_blocks, trunk_features

    n_tap = 2 * sum(mobilenet_blocks()[b - 1][1] for b in TAP_BLOCKS)  # 304
    with torch.inference_mode():
        cells = trunk_features(_trunk()[0], torch.from_numpy(to_nchw(list(views))))[..., :n_tap]
    cells = cells.double().numpy()
    return np.concatenate([cells.mean(axis=1), cells.std(axis=1)], axis=1)


def synthetic_set(photos: Sequence[Path], variants: int, seed: int, p_clean: float) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 608) and quality targets (N,) of ``variants`` degraded samples of every photo."""
    from PIL import Image

    from export import oracle, synth
    from export.samples import frame, stable_seed  # the critic's own per-sample seeds and framing
    from qds_lite.io import glance_view

    feats, targets = [], []
    for path in photos:
        with Image.open(path) as im:
            photo = np.asarray(im.convert("RGB"))
        views = []
        for v in range(variants):
            rng = np.random.default_rng(stable_seed(seed, Path(path).name, v))
            clean = frame(photo, rng)
            degs = synth.sample(rng, max_degradations=MAX_DEGRADATIONS, p_clean=p_clean)
            views.append(glance_view(synth.apply(clean, degs)))
            targets.append(oracle.quality([(d.finding, d.severity, d.region) for d in degs]))
        feats.append(image_features(views))
    return np.concatenate(feats), np.asarray(targets)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ridge weights on centred (standardised) features ``x``."""
    return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ (y - y.mean()))


def _cache_key(train: Sequence[Path], dev: Sequence[Path], variants: int, seed: int, p_clean: float) -> str:
    from export import oracle, synth
    from kernels import model

    settings = {
        "train": [Path(p).name for p in train], "dev": [Path(p).name for p in dev],
        "variants": variants, "seed": seed, "p_clean": p_clean, "max_degradations": MAX_DEGRADATIONS,
        "alphas": list(ALPHAS), "trunk_sha256": _trunk()[1],
        "code_sha256": [hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for m in (synth, oracle, model)]
        + [hashlib.sha256(Path(__file__).read_bytes()).hexdigest()],
    }
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


def load_or_fit(train_photos: Sequence[Path] | None = None, dev_photos: Sequence[Path] | None = None, *,
                variants: int = VARIANTS, seed: int = SEED, p_clean: float = P_CLEAN,
                cache_dir: Path = DEFAULT_CACHE_DIR) -> RidgeModel:
    """The cached ridge for these settings, fitted first if there is none (photos default to the train
    and dev splits of ``export.data.pristine_photos``)."""
    from scipy.stats import spearmanr

    from export.data import pristine_photos

    train = list(pristine_photos("train") if train_photos is None else train_photos)
    dev = list(pristine_photos("dev") if dev_photos is None else dev_photos)
    path = Path(cache_dir) / f"ridge-{_cache_key(train, dev, variants, seed, p_clean)}.npz"
    if path.exists():
        return RidgeModel.load(path)
    print(f"fitting the frozen {NAME} baseline on {len(train) * variants} synthetic training images "
          f"({len(train)} train photos x {variants}; alpha chosen on {len(dev) * variants} dev images) ...",
          file=sys.stderr, flush=True)
    x, y = synthetic_set(train, variants, seed, p_clean)
    x_dev, y_dev = synthetic_set(dev, variants, seed, p_clean)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    z, z_dev = (x - mean) / std, (x_dev - mean) / std
    weights = [_ridge(z, y, alpha) for alpha in ALPHAS]
    srcc = [float(spearmanr(z_dev @ w, y_dev)[0]) for w in weights]
    best = int(np.nanargmax(srcc))  # the smallest alpha among equals
    model = RidgeModel(mean, std, weights[best], float(y.mean()), ALPHAS[best], srcc[best], len(y), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


@functools.lru_cache(maxsize=1)
def default_model() -> RidgeModel:
    """The ridge on the default settings (loaded from the cache, or fitted once)."""
    return load_or_fit()


def score(rgb: np.ndarray) -> float:
    """Predicted quality (1..5 scale, higher is better) of an HxWx3 uint8 RGB image."""
    from qds_lite.io import glance_view

    return float(default_model().predict(image_features([glance_view(rgb)]))[0])


def available() -> bool:
    """True when torch imports and the ImageNet MobileNetV2 weights are installed (nothing is fitted)."""
    try:
        import torch  # noqa: F401

        from export.data import mobilenet_checkpoint

        mobilenet_checkpoint()
    except (ImportError, SystemExit):  # mobilenet_checkpoint exits with an install hint
        return False
    return True
