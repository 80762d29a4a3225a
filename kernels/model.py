"""The PyTorch reference of the small critic: encoder (visual tokens) and reasoner (trace decoder).

This is the maths every backend is tested against. Parameters live in one flat ``dict[str, array]``
whose names are shared with the NumPy backend and the exporters (``state_arrays`` / ``from_arrays``),
so there is no per-backend renaming.

Encoder: the first 14 blocks of an ImageNet MobileNetV2 (batch-norm folded into the convolutions),
tapped after block 3 (24 channels, stride 4), block 6 (32 channels, stride 8) and block 13 (96 channels,
stride 16). Each tap is pooled into a grid of cells (4x4 for the 256 px glance, 2x2 for a 128 px zoom;
a cell is always 64x64 view pixels) by mean and standard deviation. Pixel statistics of the cell join
them, because ImageNet features are built to ignore exactly what a critic must see: mean and std of
R, G, B and the share of clipped highlights and crushed shadows (colour casts, exposure), and the
natural-scene statistics of :func:`scene_statistics` (noise, blur, blocking, banding, shake).
A two-layer MLP turns the 345 numbers of a cell into a ``d_model`` visual token. (The exported encoders
stop at the 345 pooled features, :func:`trunk_features`; the runtime applies that MLP itself.)

Cell diagnosis: two small MLPs over the same pooled features name the degradation each grid cell shows
(or "clean"): one per glance cell, one per zoom (the zoomed cell's glance features with the mean and std
of the zoom's cells' features). The runtime grounds the reasoner's findings in them (qds_lite.diagnosis).

Reasoner: a Llama-style decoder (RMSNorm, rotary attention rotating *adjacent* pairs as llama.cpp's
``llama`` architecture does, SwiGLU) over the protocol's vocabulary plus visual-token embeddings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# MobileNetV2 inverted-residual settings (expand ratio t, channels c, repeats n, first stride s).
_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
TAP_BLOCKS = (3, 6, 13)  # feature taps: ends of blocks 3 (24 ch, stride 4), 6 (32 ch, /8), 13 (96 ch, /16)
TAP_CELL = (16, 8, 4)  # feature pixels per cell side at each tap (glance 256 px -> 4x4 cells, zoom 128 -> 2x2)
PIXEL_CELL = 64  # view pixels per cell side
FINETUNE_FROM = 13  # training may fine-tune the trunk from this block on (the frozen ones run once, cached)
LAST_TAP_FEATURES = slice(2 * (24 + 32), 2 * (24 + 32 + 96))  # mean and std of block 13 within feat_dim
CLIP_HIGH, CLIP_LOW = 0.98, 0.02  # luma thresholds for clipped highlights / crushed shadows
LUMA = (0.299, 0.587, 0.114)
# Natural-scene statistics (scene_statistics): BRISQUE's local normalisation (7x7 Gaussian window,
# sigma 7/6, stabiliser 1/255), soft thresholds in [0, 1] units, JPEG's 8-pixel block grid.
NSS_TAPS = 7
NSS_SIGMA = 7.0 / 6.0
NSS_C = 1.0 / 255.0
NSS_FLAT = 2.0 / 255.0  # local std below this reads as flat (banding, clipping, crushed shadows)
NSS_STILL = 0.5 / 255.0  # a neighbour difference below this reads as no change (posterised steps)
NSS_BLOCK = 8
NSS_STATS = 2 * 13 + 2 + 2 + 1 + 2  # per scale x2, chroma detail, blockiness, still share, gradient
# Longest sequence the reasoner sees: 1 + 16 glance tokens + 16 zooms x (2 + 4) + verdict + 3 findings x 5 + eos
# is 131; the RoPE tables (constants in the exported step graph) cover twice that.
MAX_POSITIONS = 256


def mobilenet_blocks() -> list[tuple[int, int, int, int]]:
    """(in_ch, out_ch, expand_ratio, stride) of blocks 1..13."""
    blocks, cin = [], 32
    for t, c, n, s in _MBV2:
        for i in range(n):
            blocks.append((cin, c, t, s if i == 0 else 1))
            cin = c
    return blocks


@dataclass(frozen=True)
class CriticConfig:
    feat_dim: int = 2 * (24 + 32 + 96) + 8 + NSS_STATS  # mean and std of the taps, then the pixel statistics
    proj_hidden: int = 256
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    ffn_dim: int = 384
    vocab_size: int = 0  # filled from qds_lite.protocol
    n_slots: int = 0
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0

    def to_dict(self) -> dict:
        return asdict(self)


# --- encoder ----------------------------------------------------------------------------------
def encoder_forward(p: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """pixels: (N, 3, H, W) float in [0, 1] -> visual tokens (N, cells, d_model).

    H and W must be multiples of 32 (glance 256, zoom 128)."""
    return project_features(p, trunk_features(p, pixels))


def trunk_features(p: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """pixels (N, 3, H, W) in [0, 1] -> pooled trunk features (N, cells, feat_dim)."""
    return trunk_features_and_map(p, pixels)[0]


def trunk_features_and_map(p: dict[str, torch.Tensor], pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled trunk features, and the activation entering block FINETUNE_FROM (training caches it, so the
    blocks from there on can be fine-tuned without running the frozen ones again)."""
    mean = pixels.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = pixels.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = F.relu6(F.conv2d((pixels - mean) / std, p["enc.conv0.w"], p["enc.conv0.b"], stride=2, padding=1))
    x, taps = run_blocks(p, x, 1, FINETUNE_FROM - 1)
    _, late_taps = run_blocks(p, x, FINETUNE_FROM, len(mobilenet_blocks()))
    return pool_features(taps + late_taps, pixels), x


def run_blocks(p: dict[str, torch.Tensor], x: torch.Tensor, first: int, last: int
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """MobileNetV2 blocks first..last (1-based) -> the output and the taps (TAP_BLOCKS) met on the way."""
    taps = []
    for i, (cin, cout, t, s) in enumerate(mobilenet_blocks(), start=1):
        if not first <= i <= last:
            continue
        h = x
        if t != 1:
            h = F.relu6(F.conv2d(h, p[f"enc.b{i}.expand.w"], p[f"enc.b{i}.expand.b"]))
        h = F.relu6(F.conv2d(h, p[f"enc.b{i}.dw.w"], p[f"enc.b{i}.dw.b"], stride=s, padding=1, groups=h.shape[1]))
        h = F.conv2d(h, p[f"enc.b{i}.project.w"], p[f"enc.b{i}.project.b"])
        x = x + h if (s == 1 and cin == cout) else h
        if i in TAP_BLOCKS:
            taps.append(x)
    return x, taps


def finetuned_tap_features(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The activation entering block FINETUNE_FROM (N, C, h, w) -> the last tap's pooled mean and std
    (N, cells, 2 x 96), i.e. ``trunk_features(...)[..., LAST_TAP_FEATURES]``."""
    _, taps = run_blocks(p, x, FINETUNE_FROM, len(mobilenet_blocks()))
    return torch.cat(_mean_std(taps[-1], TAP_CELL[-1]), dim=1).flatten(2).transpose(1, 2)


def _mean_std(x: torch.Tensor, cell: int) -> list[torch.Tensor]:
    m = F.avg_pool2d(x, cell)
    v = (F.avg_pool2d(x * x, cell) - m * m).clamp_min(0.0)
    return [m, torch.sqrt(v + 1e-6)]


def pool_features(taps: list[torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """Mean and std of each tap, then the pixel statistics, over each cell -> (N, cells, feat_dim)."""
    feats = []
    for x, cell in zip(taps, TAP_CELL):
        feats += _mean_std(x, cell)
    feats += _mean_std(pixels, PIXEL_CELL)
    luma = (pixels * pixels.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    for clipped in (luma >= CLIP_HIGH, luma <= CLIP_LOW):
        feats.append(F.avg_pool2d(clipped.float(), PIXEL_CELL))
    feats.append(scene_statistics(pixels, luma))
    f = torch.cat(feats, dim=1)  # (N, feat_dim, gh, gw)
    return f.flatten(2).transpose(1, 2)


def gaussian_taps() -> torch.Tensor:
    x = torch.arange(NSS_TAPS, dtype=torch.float64) - NSS_TAPS // 2
    g = torch.exp(-0.5 * (x / NSS_SIGMA) ** 2)
    return (g / g.sum()).float()


def local_mean(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian window (NSS_TAPS, NSS_SIGMA) over each channel of (N, C, H, W), reflect-padded."""
    r, c = NSS_TAPS // 2, int(x.shape[1])  # a constant channel count keeps the exported kernel static
    g = gaussian_taps().to(dtype=x.dtype, device=x.device)
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, NSS_TAPS).expand(c, 1, 1, NSS_TAPS), groups=c)
    return F.conv2d(x, g.view(1, 1, NSS_TAPS, 1).expand(c, 1, NSS_TAPS, 1), groups=c)


def neighbour_products(m: torch.Tensor) -> list[torch.Tensor]:
    """m times its right, lower, lower-right and lower-left neighbour (zero beyond the border)."""
    z = F.pad(m, (1, 1, 0, 1))
    return [m * z[:, :, :-1, 2:], m * z[:, :, 1:, 1:-1], m * z[:, :, 1:, 2:], m * z[:, :, 1:, :-2]]


def mscn_statistics(y: torch.Tensor, cell: int) -> list[torch.Tensor]:
    """13 statistics per cell of one luma scale: the mean square and mean magnitude of the locally
    normalised (MSCN) coefficients and of their products with four neighbours (BRISQUE's features
    as moments, which need no distribution fit), then the mean and std of the local contrast and a
    soft share of flat pixels.

    The local contrast is the Gaussian-weighted energy of the residual ``y - mu``, not BRISQUE's
    E[y^2] - mu^2: both measure local contrast, but the residual form has no cancellation on flat areas,
    so it is exact in float32 and runs as two small convolutions (the moment form needed float64 to
    keep the exported encoder within 1e-4, and took half the encoder's time as shifted multiply-adds)."""
    d = y - local_mean(y)
    var = local_mean(d * d)  # local energy of the residual: no E[y^2] - mu^2 cancellation on flat areas
    sigma = torch.sqrt(var)
    m = d / (sigma + NSS_C)
    out = [F.avg_pool2d(m * m, cell), F.avg_pool2d(m.abs(), cell)]
    for p in neighbour_products(m):
        out += [F.avg_pool2d(p, cell), F.avg_pool2d(p.abs(), cell)]
    out += _mean_std(sigma, cell)
    out.append(F.avg_pool2d(NSS_FLAT ** 2 / (var + NSS_FLAT ** 2), cell))
    return out


def block_contrast(d: torch.Tensor) -> torch.Tensor:
    """d: (N, 1, gh, W) column means over each cell's rows of |horizontal differences| -> (N, 1, gh, gw):
    how much the strongest of the 8 column phases stands out (JPEG block edges, wherever the grid starts)."""
    n, _, gh, _ = d.shape
    phases = d.reshape(n, gh, -1, PIXEL_CELL // NSS_BLOCK, NSS_BLOCK).mean(3)  # (N, gh, gw, 8)
    mean = phases.mean(-1)
    return ((phases.amax(-1) - mean) / (mean + NSS_C)).unsqueeze(1)


def scene_statistics(pixels: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """NSS_STATS statistics per cell of what ImageNet features are blind to (N, NSS_STATS, gh, gw):
    MSCN statistics at full and half resolution (noise, blur, oversharpening), the RMS of fine chroma
    detail (chroma noise), JPEG blockiness across columns and rows, a soft share of unchanged
    neighbours (posterisation), and the gradient energy and coherence (directional shake)."""
    half = F.avg_pool2d(luma, 2)
    feats = mscn_statistics(luma, PIXEL_CELL) + mscn_statistics(half, PIXEL_CELL // 2)
    r, b = pixels[:, 0:1], pixels[:, 2:3]
    chroma = torch.cat([0.564 * (b - luma), 0.713 * (r - luma)], dim=1)
    detail = chroma - local_mean(chroma)
    feats.append(torch.sqrt(F.avg_pool2d(detail * detail, PIXEL_CELL) + 1e-6))
    dx = F.pad(luma[..., :, 1:] - luma[..., :, :-1], (0, 1))
    dy = F.pad(luma[..., 1:, :] - luma[..., :-1, :], (0, 0, 0, 1))
    feats.append(block_contrast(F.avg_pool2d(dx.abs(), (PIXEL_CELL, 1))))
    feats.append(block_contrast(F.avg_pool2d(dy.abs(), (1, PIXEL_CELL)).transpose(2, 3)).transpose(2, 3))
    feats.append(F.avg_pool2d(NSS_STILL ** 2 / (dx * dx + NSS_STILL ** 2) * NSS_STILL ** 2 / (dy * dy + NSS_STILL ** 2),
                              PIXEL_CELL))
    jxx, jyy, jxy = (F.avg_pool2d(v, PIXEL_CELL) for v in (dx * dx, dy * dy, dx * dy))
    energy = jxx + jyy
    feats.append(torch.sqrt(energy + 1e-8))
    feats.append(torch.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy + 1e-12) / (energy + 1e-6))
    return torch.cat(feats, dim=1)


def project_features(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    return mlp(p, "proj", f)


# --- cell diagnosis ---------------------------------------------------------------------------
def mlp(p: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Two-layer SiLU MLP ``{prefix}.w1/b1/w2/b2`` (the projection's shape)."""
    h = F.silu(x @ p[f"{prefix}.w1"].T + p[f"{prefix}.b1"])
    return h @ p[f"{prefix}.w2"].T + p[f"{prefix}.b2"]


def diagnose_glance(p: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Glance cells' pooled features (..., cells, feat_dim) -> per-cell logits over the finding types, then
    "clean". The heads read the encoder's pooled features, not the visual tokens: the projection to tokens
    is trained for the reasoner and loses some of what tells one degradation from another."""
    return mlp(p, "diag.glance", features)


def zoom_evidence(glance_cell: torch.Tensor, zoom_cells: torch.Tensor) -> torch.Tensor:
    """The zoom head's input: the zoomed cell's glance features (..., f), then the mean and (population)
    std of the zoom's cells' features (..., k, f) -> (..., 3f)."""
    mean = zoom_cells.mean(-2)
    std = ((zoom_cells - mean.unsqueeze(-2)) ** 2).mean(-2).sqrt()
    return torch.cat([glance_cell, mean, std], dim=-1)


def diagnose_zoom(p: dict[str, torch.Tensor], glance_cell: torch.Tensor, zoom_cells: torch.Tensor) -> torch.Tensor:
    """One zoomed cell's logits over the finding types and "clean", from native-resolution evidence."""
    return mlp(p, "diag.zoom", zoom_evidence(glance_cell, zoom_cells))


def diagnose_cues(p: dict[str, torch.Tensor], cues: torch.Tensor) -> torch.Tensor:
    """A zoom window's pixel cues (..., len(qds_lite.pixel_cues.NAMES)) -> logits over the finding types and
    "clean": the hand-measured second opinion the runtime multiplies into the zoom head's."""
    return mlp(p, "diag.cues", cues)


# --- reasoner ---------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope_tables(n_pos: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles (n_pos, head_dim / 2), computed in float64 NumPy: constants to the
    ONNX tracer, so the exported step reads a table instead of recomputing it every step (a step took
    0.30 ms instead of 0.40 in onnxruntime here)."""
    head_dim = int(head_dim)  # a traced shape arrives as a tensor
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(n_pos, dtype=np.float64)[:, None] * inv[None, :]
    return torch.from_numpy(np.cos(ang).astype(np.float32)), torch.from_numpy(np.sin(ang).astype(np.float32))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (..., T, n_heads, head_dim); rotates adjacent pairs (x[2i], x[2i+1]) by angle pos*theta^(-2i/d)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2)


def reasoner_forward(p: dict[str, torch.Tensor], cfg: CriticConfig, x: torch.Tensor) -> torch.Tensor:
    """x: (B, T, d_model) input embeddings -> logits (B, T, vocab). Causal."""
    return reasoner_hidden(p, cfg, x) @ p["dec.output"].T


def reasoner_hidden(p: dict[str, torch.Tensor], cfg: CriticConfig, x: torch.Tensor) -> torch.Tensor:
    """x: (B, T, d_model) -> the final normed hidden states (B, T, d_model) the output head reads."""
    B, T, d = x.shape
    empty = x.new_zeros(cfg.n_layers, B, 0, cfg.n_heads, d // cfg.n_heads)
    return _decoder(p, cfg, x, empty, empty)[0]


def reasoner_step(p: dict[str, torch.Tensor], cfg: CriticConfig, x: torch.Tensor, past_k: torch.Tensor,
                  past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One incremental step, as the runtime decodes: x (1, T, d_model) appended after the cached positions.

    past_k, past_v: (n_layers, 1, P, n_heads, head_dim) keys (RoPE applied) and values of the P earlier
    positions. Returns the logits of the last position (1, vocab) and the caches extended to P + T."""
    h, k, v = _decoder(p, cfg, x, past_k, past_v)
    return h[:, -1] @ p["dec.output"].T, k, v


def _decoder(p: dict[str, torch.Tensor], cfg: CriticConfig, x: torch.Tensor, past_k: torch.Tensor,
             past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layers shared by both entry points: new positions start right after the cached ones."""
    B, T, d = x.shape
    hd = d // cfg.n_heads
    start = past_k.shape[2]
    cos, sin = (t.to(x.device)[start:start + T] for t in rope_tables(MAX_POSITIONS, hd, cfg.rope_theta))
    key_pos = torch.arange(start + T, device=x.device)
    mask = key_pos[None, :] <= (torch.arange(T, device=x.device) + start)[:, None]
    keys, values = [], []
    for li in range(cfg.n_layers):
        h = rms_norm(x, p[f"dec.{li}.attn_norm"], cfg.rms_eps)
        q = (h @ p[f"dec.{li}.wq"].T).view(B, T, cfg.n_heads, hd)
        k = (h @ p[f"dec.{li}.wk"].T).view(B, T, cfg.n_heads, hd)
        v = (h @ p[f"dec.{li}.wv"].T).view(B, T, cfg.n_heads, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = torch.cat([past_k[li], k], dim=1), torch.cat([past_v[li], v], dim=1)
        keys.append(k)
        values.append(v)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        o = torch.einsum("bhts,bshd->bthd", att, v).reshape(B, T, d)
        x = x + o @ p[f"dec.{li}.wo"].T
        h = rms_norm(x, p[f"dec.{li}.ffn_norm"], cfg.rms_eps)
        x = x + (F.silu(h @ p[f"dec.{li}.w_gate"].T) * (h @ p[f"dec.{li}.w_up"].T)) @ p[f"dec.{li}.w_down"].T
    return rms_norm(x, p["dec.out_norm"], cfg.rms_eps), torch.stack(keys), torch.stack(values)


def embed_sequence(p: dict[str, torch.Tensor], token_ids: torch.Tensor, visual: torch.Tensor,
                   slots: torch.Tensor) -> torch.Tensor:
    """Input embeddings: token rows from ``dec.tok_embd`` where ``slots < 0``, else visual token + slot embedding.

    token_ids, slots: (B, T) int64; visual: (B, T, d) (rows where slots < 0 are ignored)."""
    tok = p["dec.tok_embd"][token_ids.clamp_min(0)]
    vis = visual + p["dec.slot_embd"][slots.clamp_min(0)]
    return torch.where((slots >= 0)[..., None], vis, tok)


# --- parameters -------------------------------------------------------------------------------
def fold_mobilenet(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """torchvision MobileNetV2 state dict -> our encoder trunk with batch norm folded in (eval mode)."""

    def fold(conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
        w = state[f"{conv}.weight"].double()
        g, b = state[f"{bn}.weight"].double(), state[f"{bn}.bias"].double()
        m, v = state[f"{bn}.running_mean"].double(), state[f"{bn}.running_var"].double()
        scale = g / torch.sqrt(v + 1e-5)
        return (w * scale.view(-1, 1, 1, 1)).float().numpy(), (b - m * scale).float().numpy()

    out = {}
    out["enc.conv0.w"], out["enc.conv0.b"] = fold("features.0.0", "features.0.1")
    for i, (_, _, t, _) in enumerate(mobilenet_blocks(), start=1):
        pre = f"features.{i}.conv"
        names = ([("expand", f"{pre}.0.0", f"{pre}.0.1")] if t != 1 else []) + [
            ("dw", f"{pre}.{1 if t != 1 else 0}.0", f"{pre}.{1 if t != 1 else 0}.1"),
            ("project", f"{pre}.{2 if t != 1 else 1}", f"{pre}.{3 if t != 1 else 2}"),
        ]
        for name, conv, bn in names:
            out[f"enc.b{i}.{name}.w"], out[f"enc.b{i}.{name}.b"] = fold(conv, bn)
    return out


def init_head(cfg: CriticConfig, seed: int) -> dict[str, np.ndarray]:
    """Random init of the trainable projection and reasoner (GPT-2-style small normal init)."""
    rng = np.random.default_rng(seed)

    def lin(o: int, i: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((o, i)) * scale / math.sqrt(i)).astype(np.float32)

    d = cfg.d_model
    p = {
        "proj.w1": lin(cfg.proj_hidden, cfg.feat_dim), "proj.b1": np.zeros(cfg.proj_hidden, np.float32),
        "proj.w2": lin(d, cfg.proj_hidden), "proj.b2": np.zeros(d, np.float32),
        "dec.tok_embd": (rng.standard_normal((cfg.vocab_size, d)) * 0.5).astype(np.float32),
        "dec.slot_embd": (rng.standard_normal((cfg.n_slots, d)) * 0.1).astype(np.float32),
        "dec.out_norm": np.ones(d, np.float32),
        "dec.output": lin(cfg.vocab_size, d),
    }
    res = 1.0 / math.sqrt(2 * cfg.n_layers)
    for li in range(cfg.n_layers):
        p |= {
            f"dec.{li}.attn_norm": np.ones(d, np.float32), f"dec.{li}.ffn_norm": np.ones(d, np.float32),
            f"dec.{li}.wq": lin(d, d), f"dec.{li}.wk": lin(d, d), f"dec.{li}.wv": lin(d, d),
            f"dec.{li}.wo": lin(d, d, res), f"dec.{li}.w_gate": lin(cfg.ffn_dim, d),
            f"dec.{li}.w_up": lin(cfg.ffn_dim, d), f"dec.{li}.w_down": lin(d, cfg.ffn_dim, res),
        }
    return p


def round_to_half(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Round weights to float16-representable float32 values.

    The shipped critic stores weights as float16 (half the size); making the reference use exactly
    those values keeps every fp32 parity check exact instead of off by storage rounding."""
    return {k: v.astype(np.float16).astype(np.float32) for k, v in arrays.items()}


def to_torch(arrays: dict[str, np.ndarray], device: str = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
