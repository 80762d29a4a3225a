"""Tests for export.synth: the localized degradation synthesizer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from export import synth
from export.synth import KINDS, Degradation, apply, full_reference_damage, region_mask, sample
from qds_lite.protocol import FINDING_TYPES, GRID

H, W = 240, 320
ALL_KINDS = sorted(KINDS)


def make_image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A synthetic 'photo': smooth colour gradients (sky-like), fine texture, hard edges, dark and
    bright areas, no clipping to speak of."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / w, yy / h
    img = np.stack([0.25 + 0.5 * u, 0.3 + 0.4 * v, 0.7 - 0.4 * u * v], axis=-1)
    tex = 0.08 * np.sin(xx * 0.9) * np.sin(yy * 0.7) + 0.03 * rng.standard_normal((h, w))
    img += (tex * (v > 0.5))[..., None]  # textured lower half
    img[(xx > 0.1 * w) & (xx < 0.35 * w) & (yy > 0.55 * h) & (yy < 0.9 * h)] = (0.12, 0.1, 0.08)
    disk = (xx - 0.7 * w) ** 2 + (yy - 0.3 * h) ** 2 < (0.15 * h) ** 2
    img[disk] = (0.85, 0.75, 0.3)
    stripes = (xx > 0.6 * w) & (yy > 0.6 * h) & ((xx // 4) % 2 == 0)
    img[stripes] *= 0.5
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return make_image()


def damage(clean, degraded) -> float:
    return float(full_reference_damage(clean, degraded).sum())


# --- registry and dataclass ------------------------------------------------------------------


def test_kinds_registry():
    assert KINDS == {
        "gaussian_blur": "blur", "motion_blur": "motion_blur", "defocus": "defocus",
        "luma_noise": "noise", "chroma_noise": "noise", "jpeg": "jpeg",
        "overexposure": "overexposure", "underexposure": "underexposure",
        "low_contrast": "low_contrast", "color_cast": "color_cast", "banding": "banding",
        "oversharpen": "oversharpen", "haze": "haze",
    }
    assert all(t in FINDING_TYPES for t in KINDS.values())
    assert set(synth._REGISTRY) == set(KINDS)
    assert sorted(synth.PIPELINE_ORDER) == sorted(KINDS)


def test_degradation_dataclass():
    d = Degradation("chroma_noise", 0.3, (0, 1, 2, 3), 5)
    assert d.finding == "noise"
    assert d.box == (0.0, 0.25, 0.5, 0.75)
    assert Degradation("haze", 1.0, None, 0).box == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.severity = 0.5  # frozen
    with pytest.raises(ValueError):
        Degradation("sparkles", 0.3, None, 0)
    with pytest.raises(ValueError):
        Degradation("haze", 1.5, None, 0)
    with pytest.raises(ValueError):
        Degradation("haze", 0.5, (2, 0, 2, 1), 0)  # empty
    with pytest.raises(ValueError):
        Degradation("haze", 0.5, (0, 0, GRID + 1, 1), 0)


# --- every kind ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_kind_changes_image_and_is_monotone(img, kind):
    for s in (0.2, 0.5, 0.9):
        out = apply(img, [Degradation(kind, s, None, 11)])
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - img).mean() > 0.3, (kind, s)
    dmg = [damage(img, apply(img, [Degradation(kind, s, None, 11)])) for s in (0.1, 0.4, 0.7, 1.0)]
    assert np.all(np.diff(dmg) > 0), (kind, dmg)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_local_degradation_stays_in_region(img, kind):
    region = (1, 1, 3, 3)
    out = apply(img, [Degradation(kind, 0.7, region, 3)])
    x0, y0, x1, y1 = synth.region_pixels(img.shape[:2], region)
    assert (x0, y0, x1, y1) == (W // 4, H // 4, 3 * W // 4, 3 * H // 4)
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], img[outside]), kind  # exactly untouched beyond the feather
    f = synth.feather_width(img.shape[:2])
    core = (slice(y0 + f, y1 - f), slice(x0 + f, x1 - f))
    assert np.abs(out[core].astype(int) - img[core]).mean() > 0.3, kind
    dmg = full_reference_damage(img, out)
    inside = np.zeros((GRID, GRID), bool)
    inside[1:3, 1:3] = True
    assert np.all(dmg[~inside] == 0)
    assert np.all(dmg[inside] > 0)


@pytest.mark.parametrize("kind", ["gaussian_blur", "motion_blur", "defocus", "jpeg", "overexposure",
                                  "underexposure", "color_cast", "banding", "oversharpen"])
@pytest.mark.parametrize("region", [(1, 1, 3, 3), (0, 0, 1, 2), (3, 2, 4, 4)])
def test_local_equals_global_inside(img, kind, region):
    """A local degradation is computed on a crop with enough context: inside the fully-weighted part of
    the region it must match the whole-image result."""
    loc = apply(img, [Degradation(kind, 1.0, region, 5)])
    glo = apply(img, [Degradation(kind, 1.0, None, 5)])
    m = region_mask(img.shape[:2], region) == 1
    assert m.any()
    assert np.abs(loc[m].astype(int) - glo[m]).max() <= 1, kind


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_deterministic_and_input_untouched(img, kind):
    src = img.copy()
    src.flags.writeable = False  # must work on read-only input and never write to it
    degs = [Degradation(kind, 0.6, (0, 2, 2, 4), 42), Degradation("luma_noise", 0.3, None, 7)]
    a = apply(src, degs)
    b = apply(src, degs)
    assert np.array_equal(a, b)
    assert np.array_equal(src, img)
    assert a is not src and not np.shares_memory(a, src)


@pytest.mark.parametrize("kind", ["luma_noise", "chroma_noise", "motion_blur", "color_cast"])
def test_seed_matters_for_random_kinds(img, kind):
    a = apply(img, [Degradation(kind, 0.6, None, 1)])
    b = apply(img, [Degradation(kind, 0.6, None, 2)])
    assert not np.array_equal(a, b)


def test_empty_list_and_order(img):
    out = apply(img, [])
    assert np.array_equal(out, img) and out is not img
    d1, d2 = Degradation("gaussian_blur", 0.5, None, 0), Degradation("luma_noise", 0.5, None, 0)
    assert not np.array_equal(apply(img, [d1, d2]), apply(img, [d2, d1]))  # applied in given order


def test_apply_rejects_bad_input(img):
    with pytest.raises(ValueError):
        apply(img.astype(np.float32), [])
    with pytest.raises(ValueError):
        apply(img[..., 0], [])


# --- region mask -----------------------------------------------------------------------------


def test_region_mask():
    h, w = 203, 301  # not divisible by GRID
    assert np.array_equal(region_mask((h, w), None), np.ones((h, w), np.float32))
    m = region_mask((h, w), (1, 0, 3, 2))
    assert m.dtype == np.float32 and m.shape == (h, w)
    assert m.min() >= 0 and m.max() <= 1
    x0, x1, y0, y1 = (1 * w) // GRID, (3 * w) // GRID, 0, (2 * h) // GRID
    assert synth.region_pixels((h, w), (1, 0, 3, 2)) == (x0, y0, x1, y1)
    f = synth.feather_width((h, w))
    assert f == round(0.03 * h)
    # exactly zero outside the pixel rectangle
    assert np.all(m[:, :x0] == 0) and np.all(m[:, x1:] == 0) and np.all(m[y1:, :] == 0)
    # one in the core; the top side is the image border, so no feather there
    assert np.all(m[0:y1 - f, x0 + f:x1 - f] == 1)
    # the feather ramps monotonically across the left edge
    row = m[10, x0:x0 + f + 1]
    assert row[0] > 0 and np.all(np.diff(row) >= 0) and row[-1] == 1
    # a whole-grid region is all ones (no feather on image borders)
    assert np.all(region_mask((h, w), (0, 0, GRID, GRID)) == 1)


# --- sampling --------------------------------------------------------------------------------


def test_sample_contract():
    rng = np.random.default_rng(123)
    n = 4000
    draws = [sample(rng) for _ in range(n)]
    clean = sum(1 for d in draws if not d)
    assert abs(clean / n - 0.12) < 0.025
    local = total = 0
    kinds_seen = set()
    for degs in draws:
        assert len(degs) <= 2
        types = [d.finding for d in degs]
        assert len(set(types)) == len(types)
        assert not {"overexposure", "underexposure"} <= set(types)
        assert [synth.PIPELINE_ORDER.index(d.kind) for d in degs] == sorted(
            synth.PIPELINE_ORDER.index(d.kind) for d in degs)
        for d in degs:
            total += 1
            kinds_seen.add(d.kind)
            assert d.kind in KINDS
            assert 0.05 <= d.severity <= 1.0
            assert isinstance(d.seed, int)
            if d.region is not None:
                local += 1
                c0, r0, c1, r1 = d.region
                assert 0 <= c0 < c1 <= GRID and 0 <= r0 < r1 <= GRID
                assert 1 <= c1 - c0 <= 3 and 1 <= r1 - r0 <= 3
                assert (c1 - c0, r1 - r0) != (GRID, GRID)
    assert kinds_seen == set(KINDS)
    assert abs(local / total - 0.5) < 0.04
    sev = np.array([d.severity for degs in draws for d in degs])
    assert abs(sev.mean() - 0.525) < 0.02


def test_sample_options():
    rng = np.random.default_rng(5)
    many = [sample(rng, max_degradations=3, p_clean=0.0, p_local=1.0) for _ in range(500)]
    assert all(1 <= len(d) <= 3 for d in many)
    assert any(len(d) == 3 for d in many)
    assert all(x.region is not None for d in many for x in d)
    glob = [sample(rng, p_clean=0.0, p_local=0.0) for _ in range(200)]
    assert all(x.region is None for d in glob for x in d)
    assert all(sample(rng, p_clean=1.0) == [] for _ in range(50))
    a = sample(np.random.default_rng(9))
    b = sample(np.random.default_rng(9))
    assert a == b


# --- full-reference damage -------------------------------------------------------------------


def test_full_reference_damage(img):
    z = full_reference_damage(img, img)
    assert z.shape == (GRID, GRID) and z.dtype == np.float32 and np.all(z == 0)
    for kind in ("luma_noise", "jpeg", "gaussian_blur", "color_cast"):
        out = apply(img, [Degradation(kind, 0.8, (2, 1, 3, 2), 0)])
        dmg = full_reference_damage(img, out)
        assert np.unravel_index(np.argmax(dmg), dmg.shape) == (1, 2), kind  # (row, col)
    with pytest.raises(ValueError):
        full_reference_damage(img, img[:10])


def test_lab_and_transfer_functions():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    lin = synth.srgb_to_linear(x)
    assert lin.dtype == np.float32 and np.all(np.diff(lin) > 0)
    assert np.allclose(synth.linear_to_srgb(lin), x, atol=1e-5)
    assert abs(float(synth.srgb_to_linear(np.float32(0.5))) - 0.21404) < 1e-4
    lab = synth.srgb_to_lab(np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], np.uint8))
    assert np.allclose(lab[0, 0], (100, 0, 0), atol=0.05)
    assert np.allclose(lab[0, 1], (0, 0, 0), atol=0.05)
    assert np.allclose(lab[0, 2], (53.24, 80.09, 67.20), atol=0.1)


def test_colour_jitter_keeps_greys_and_luma(img):
    """`export.build --colour-jitter` turns hue and saturation of the training photos but never tints a
    neutral grey (what a colour cast does) nor changes brightness, beyond rounding and clipping."""
    from export.samples import frame, jitter_colour

    greys = np.repeat(np.arange(0, 256, 5, dtype=np.uint8)[:, None, None], 3, axis=2)
    luma = np.array([0.299, 0.587, 0.114])
    changed = 0.0
    for seed in range(8):
        out = jitter_colour(np.concatenate([img.reshape(-1, 1, 3), greys]), np.random.default_rng(seed), 15.0)
        assert out.dtype == np.uint8 and out.shape == (img.size // 3 + len(greys), 1, 3)
        assert np.abs(out[-len(greys):].astype(int) - greys).max() <= 1
        body = out[:-len(greys), 0].astype(float)
        assert np.abs(body @ luma - img.reshape(-1, 3) @ luma).mean() < 0.5
        changed = max(changed, np.abs(body - img.reshape(-1, 3)).mean())
    assert changed > 2.0  # it does turn the colours
    # off by default: framing a small photo only crops and flips it, so every colour is one of the photo's
    def code(a):
        return a.reshape(-1, 3).astype(np.int64) @ np.array([65536, 256, 1])
    assert np.isin(code(frame(img, np.random.default_rng(0))), code(img)).all()
    assert not np.isin(code(frame(img, np.random.default_rng(0), 15.0)), code(img)).all()
