"""Supervised training of the critic's projection and reasoner on oracle trajectories.

The encoder trunk is the ImageNet MobileNetV2. Its pooled features are cached by export.samples, so a
step runs only the projection MLP and the small decoder: minutes on 2 cores. With ``trunk`` (build's
--finetune) its last block(s) train too, from their cached inputs (kernels.model.FINETUNE_FROM), slower
than the head (TRUNK_LR_SCALE).

Loss per trajectory: cross-entropy on every token the reasoner chooses (zoom or stop, which cell,
finding type / severity / box, when to answer), each over the tokens the grammar allows there, plus
the KL divergence of the level distribution from the oracle's soft level target. Zoom counts are
randomly truncated (the runtime's --zooms budget) and zooms sometimes land on non-oracle cells, so the
level head learns to judge from whatever evidence it got.

Two more terms, both measured on the accuracy benchmark (README, ablation; the shipped critic uses the first):

- a per-cell diagnosis: a training-only linear head reads the reasoner's hidden state at every visual
  token and names the degradation of that token's cell (or "clean"). It is not shipped; it makes every
  visual token carry what the finding tokens later need to point at (type and place).
- a ranking term across images (VisualQuality-R1): for pairs in a batch whose oracle qualities differ
  clearly, the Thurstone probability that one is better, from the means and variances of the two
  predicted level distributions, is pulled towards the known order by the fidelity loss, so scores
  compare across content and degradation types, not only within one.

A third, for distillation (DESIGN.md section 5; export.build --teacher): a larger critic (the teacher,
:func:`teacher_config`) is first trained alone on the same samples; the shipped student then also matches
the teacher's distributions at every position where it chooses a token and at the verdict (KL at
temperature DISTILL_TEMPERATURE, over the tokens the grammar allows), so it learns which mistakes are
near-misses (defocus for blur, haze for low contrast) instead of only the oracle's one right answer.

Visual features are dropped out (training only) against over-fitting to the few training photos.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from export import oracle
from export.samples import ORACLE_CELLS
from kernels.model import (
    FINETUNE_FROM,
    LAST_TAP_FEATURES,
    CriticConfig,
    embed_sequence,
    finetuned_tap_features,
    mobilenet_blocks,
    project_features,
    reasoner_hidden,
)
from qds_lite import protocol as P

SEQ_LEN = 1 + P.GLANCE_TOKENS + P.DEFAULT_ZOOMS * (2 + P.ZOOM_TOKENS) + 2 + 5 * P.MAX_FINDINGS + 1
LEVEL_WEIGHT = 2.0
AUX_CLASSES = len(P.FINDING_TYPES) + 1  # finding types, then "clean"
AUX_MIN_SEVERITY = 0.1  # below this a degradation is invisible: the cell is labelled clean
RANK_GAP = 0.25  # pairs whose oracle qualities differ by less (in levels) are not ranked
FEATURE_DROPOUT = 0.1
TRUNK_LR_SCALE = 0.1  # fine-tuned trunk blocks learn 10x slower than the head: 193 photos are few
FINETUNED_KEY = f"enc.b{FINETUNE_FROM}.project.w"  # present in params when the trunk is fine-tuned
DISTILL_TEMPERATURE = 2.0  # softens the teacher's distributions so the runner-up tokens carry signal


def teacher_config(student: CriticConfig) -> CriticConfig:
    """The distillation teacher: the student's vocabulary and inputs, twice as wide and one layer deeper
    (about 5x the student's training compute: what fits the CPU budget); PyTorch fp32, never shipped."""
    return replace(student, proj_hidden=2 * student.proj_hidden, d_model=2 * student.d_model,
                   n_layers=student.n_layers + 1, n_heads=2 * student.n_heads, ffn_dim=2 * student.ffn_dim)


@dataclass(frozen=True)
class Teacher:
    """A trained critic whose distributions the student learns to match (head with the feature scaling
    folded in, as :func:`train` returns it)."""

    params: dict[str, torch.Tensor]
    cfg: CriticConfig

    @classmethod
    def from_head(cls, head: dict[str, np.ndarray], cfg: CriticConfig) -> Teacher:
        f = cfg.feat_dim
        params = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in head.items()}
        return cls(params | {"feat_mu": torch.zeros(f), "feat_sigma": torch.ones(f)}, cfg)

    def logits(self, data, seq, idx) -> torch.Tensor:
        with torch.no_grad():
            return forward(self.params, self.cfg, data, seq, idx)[0]


def finetunable(trunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The trunk's weights from block FINETUNE_FROM on: what --finetune trains."""
    blocks = range(FINETUNE_FROM, len(mobilenet_blocks()) + 1)
    return {k: v for k, v in trunk.items() if any(k.startswith(f"enc.b{i}.") for i in blocks)}


@dataclass(frozen=True)
class LossWeights:
    """The shipped critic's weights. Measured on the accuracy benchmark (README, ablation): the per-cell
    diagnosis names and places findings better and ranks better across images and types, at a small cost
    on the within-photo L-, D- and P-tests; the ranking term alone does the opposite, and both together
    were worse than either, so ranking is off."""

    level: float = LEVEL_WEIGHT
    cells: float = 0.5  # per-cell diagnosis
    rank: float = 0.0  # Thurstone fidelity across images
    distill: float = 1.0  # matching the teacher's distributions (only when training with a teacher)
    distill_on: str = "all"  # where: "all" chosen tokens and the verdict, or the "verdict" only


def allowed_mask(grammar: P.Grammar) -> np.ndarray:
    m = np.zeros(P.VOCAB_SIZE, bool)
    m[list(grammar.allowed())] = True
    return m


class SequenceWriter:
    """The teacher-forcing arrays of ``n`` sequences, filled one position at a time in the order the
    runtime feeds them: vocabulary tokens (each, when predicted, with its target and the grammar's
    allowed set at the position before) and visual tokens (a slot, where their features come from, and
    the per-cell diagnosis label of their cell)."""

    def __init__(self, n: int, length: int) -> None:
        self.arrays = {
            "tok": np.zeros((n, length), np.int64),
            "slot": np.full((n, length), -1, np.int64),
            "feat_src": np.full((n, length, 2), -1, np.int64),  # (zoom index or -1 for glance, sub-token)
            "target": np.full((n, length), -100, np.int64),
            "allowed": np.zeros((n, length, P.VOCAB_SIZE), bool),
            "cell_target": np.full((n, length), -100, np.int64),
            "level_pos": np.zeros(n, np.int64),
            "level_target": np.zeros((n, len(P.LEVELS)), np.float32),
            "quality": np.zeros(n, np.float32),
        }
        self.i = self.t = 0
        self.grammar = P.Grammar()

    def begin(self, i: int, max_zooms: int) -> None:
        """Start sequence ``i`` with <bos>."""
        self.i, self.t, self.grammar = i, 0, P.Grammar(max_zooms)
        self.put(P.BOS, predicted=False)

    def put(self, token: int, predicted: bool = True) -> None:
        a, i, t = self.arrays, self.i, self.t
        if predicted:
            a["allowed"][i, t - 1] = allowed_mask(self.grammar)
            a["target"][i, t - 1] = token
            self.grammar.advance(token)
        a["tok"][i, t] = token
        self.t += 1

    def visual(self, slot: int, src: tuple[int, int], cell_label: int = -100) -> None:
        a, i, t = self.arrays, self.i, self.t
        a["slot"][i, t], a["feat_src"][i, t], a["cell_target"][i, t] = slot, src, cell_label
        self.t += 1

    def untaught(self) -> None:
        """Keep the last token put as input, but do not teach the reasoner to choose it."""
        self.arrays["target"][self.i, self.t - 2] = -100  # its target sits one position before it

    def glance(self, cell_labels: np.ndarray | None = None) -> None:
        for c in range(P.GLANCE_TOKENS):
            self.visual(P.GLANCE_SLOT0 + c, (-1, c), -100 if cell_labels is None else int(cell_labels[c]))
        self.grammar.begin()

    def zoom(self, cell: int, z: int, taught: bool = True, cell_label: int = -100) -> None:
        """<zoom> <cell> and the zoom's visual tokens, taken from cached zoom ``z``."""
        self.put(P.ZOOM)
        self.put(P.CELL0 + cell)
        if not taught:
            self.untaught()
        for j in range(P.ZOOM_TOKENS):
            self.visual(P.ZOOM_SLOT0 + j, (z, j), cell_label)

    def verdict(self, level_target: np.ndarray, quality: float) -> None:
        """<stop>, whose logits are the level distribution (trained by the KL term towards
        ``level_target``), then the most likely level, fed back but not taught as a choice."""
        self.put(P.STOP)
        a = self.arrays
        a["level_pos"][self.i] = self.t - 1
        a["level_target"][self.i], a["quality"][self.i] = level_target, quality
        self.put(P.LEVEL0 + int(np.argmax(level_target)))
        self.untaught()


def build_sequences(data: dict[str, np.ndarray], rng: np.random.Generator, augment: bool) -> dict[str, np.ndarray]:
    """Teacher-forcing tensors for every synthesized sample, from its oracle (see module docstring)."""
    n = len(data["kinds"])
    w = SequenceWriter(n, SEQ_LEN)
    for i in range(n):
        degs = oracle.degradations(data, i)
        cells = oracle.cell_types(degs, AUX_MIN_SEVERITY)
        n_zoom = P.DEFAULT_ZOOMS
        zoom_idx = list(range(P.DEFAULT_ZOOMS))  # indices into the cached zooms (oracle order)
        if augment:
            if rng.random() < 0.3:
                n_zoom = int(rng.integers(0, P.DEFAULT_ZOOMS))
            if rng.random() < 0.25:  # a zoom that missed: one of the random cells instead
                missed = int(rng.integers(ORACLE_CELLS, data["zoom_cells"].shape[1]))
                zoom_idx[int(rng.integers(0, P.DEFAULT_ZOOMS))] = missed
        w.begin(i, n_zoom)
        w.glance(cells)
        for z in zoom_idx[:n_zoom]:
            cell = int(data["zoom_cells"][i, z])
            w.zoom(cell, z, taught=z < ORACLE_CELLS, cell_label=cells[cell])  # never teach a random cell
        q = np.float32(oracle.quality(degs))  # the target is made from the stored (float32) quality
        w.verdict(oracle.level_distribution(q), q)
        for token in oracle.finding_tokens(degs):
            w.put(token)
        w.put(P.EOS)
    return w.arrays


def gather_features(data: dict[str, np.ndarray], rows: np.ndarray, src: np.ndarray,
                    params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Trunk features for every position: ``rows`` (B,) samples of ``data``, ``src`` (B, T, 2).

    The cached features, except that when ``params`` holds fine-tuned trunk blocks the last tap's are
    computed from the cached block inputs, for the glance and for the zooms the sequences use."""
    glance = torch.from_numpy(data["glance"][rows].astype(np.float32))  # (B, 16, F)
    zooms = torch.from_numpy(data["zooms"][rows].astype(np.float32))  # (B, Z, 4, F)
    zi, sub = torch.from_numpy(src[..., 0]), torch.from_numpy(src[..., 1])
    if params is not None and FINETUNED_KEY in params:
        used = np.zeros(zooms.shape[:2], bool)  # (B, Z): the cached zooms these sequences look at
        zb, zz = np.nonzero(src[..., 0] >= 0)
        used[zb, src[zb, zz, 0]] = True
        b, z = np.nonzero(used)
        glance = with_tap(glance, finetuned_tap_features(params, channels_last(data["glance_map"][rows])))
        taps = finetuned_tap_features(params, channels_last(data["zoom_maps"][rows[b], z]))
        zooms = zooms.index_put((torch.from_numpy(b), torch.from_numpy(z)), with_tap(zooms[b, z], taps))
    b = torch.arange(len(rows))[:, None]
    from_glance = glance[b, sub.clamp_min(0)]
    from_zoom = zooms[b, zi.clamp_min(0), sub.clamp(0, P.ZOOM_TOKENS - 1)]
    return torch.where((zi < 0)[..., None], from_glance, from_zoom)


def with_tap(feats: torch.Tensor, tap: torch.Tensor) -> torch.Tensor:
    """Pooled features (..., F) with the last tap's mean and std replaced by ``tap`` (..., 192)."""
    return torch.cat([feats[..., :LAST_TAP_FEATURES.start], tap, feats[..., LAST_TAP_FEATURES.stop:]], -1)


def channels_last(maps: np.ndarray) -> torch.Tensor:
    """Cached fp16 activations (N, C, h, w) -> float32 in channels-last memory (2x faster depthwise
    convolutions on CPU, forward and backward)."""
    return torch.from_numpy(maps.astype(np.float32)).contiguous(memory_format=torch.channels_last)


def feature_scaling(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every pooled feature over the training views.

    Features span orders of magnitude (activation means up to 6, clipped-pixel shares near 0), so the
    MLP trains on standardized inputs; :func:`fold_scaling` then folds the affine map into its first
    layer, so the shipped model has no extra op."""
    zooms = data["zooms"][data["zoom_cells"] >= 0]  # cell -1: no zoom there (records with fewer zooms)
    f = np.concatenate([data["glance"].reshape(-1, data["glance"].shape[-1]),
                        zooms.reshape(-1, zooms.shape[-1])]).astype(np.float64)
    return f.mean(0).astype(np.float32), np.maximum(f.std(0), 1e-2).astype(np.float32)


def fold_scaling(head: dict[str, np.ndarray], mu: np.ndarray, sigma: np.ndarray) -> dict[str, np.ndarray]:
    """proj.w1 @ ((f - mu) / sigma) + b1  ==  (proj.w1 / sigma) @ f + (b1 - (proj.w1 / sigma) @ mu)."""
    w1 = head["proj.w1"] / sigma[None, :]
    return head | {"proj.w1": w1.astype(np.float32), "proj.b1": (head["proj.b1"] - w1 @ mu).astype(np.float32)}


def unfold_scaling(head: dict[str, np.ndarray], mu: np.ndarray, sigma: np.ndarray) -> dict[str, np.ndarray]:
    """The inverse of :func:`fold_scaling`: a trained head whose first layer reads raw features -> the
    same function of standardized ones (to train it further)."""
    w1 = head["proj.w1"].astype(np.float64)
    b1 = head["proj.b1"] + w1 @ mu.astype(np.float64)
    return head | {"proj.w1": (w1 * sigma[None, :]).astype(np.float32), "proj.b1": b1.astype(np.float32)}


def forward(params: dict[str, torch.Tensor], cfg: CriticConfig, data, seq, idx,
            dropout: float = 0.0, rows: np.ndarray | None = None,
            tap_dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced pass over sequences ``idx`` of ``seq`` -> (logits, final hidden states).

    ``rows``: the data sample of each sequence (default: the same index, one sequence per sample);
    ``tap_dropout``: the share of sequences whose last-tap (block 13, semantic) features are all set to
    their training mean, at every position, so the verdict cannot rest on recognising the photo."""
    rows = idx if rows is None else rows
    feats = (gather_features(data, rows, seq["feat_src"][idx], params) - params["feat_mu"]) / params["feat_sigma"]
    if tap_dropout > 0:
        semantic = torch.zeros(feats.shape[-1], dtype=torch.bool)
        semantic[LAST_TAP_FEATURES] = True
        feats = feats.masked_fill((torch.rand(len(idx), 1, 1) < tap_dropout) & semantic, 0.0)
    visual = project_features(params, F.dropout(feats, dropout, training=dropout > 0))
    x = embed_sequence(params, torch.from_numpy(seq["tok"][idx]), visual, torch.from_numpy(seq["slot"][idx]))
    h = reasoner_hidden(params, cfg, x)
    return h @ params["dec.output"].T, h


def level_probs(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Level distributions read at one position of each sequence (its <stop>)."""
    return logits[torch.arange(len(positions)), positions][:, list(P.LEVEL_IDS)].softmax(-1)


def level_moments(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of level distributions, levels numbered 1..5."""
    levels = torch.arange(1, len(P.LEVELS) + 1, dtype=probs.dtype)
    mu = probs @ levels
    return mu, probs @ levels ** 2 - mu ** 2


def thurstone_fidelity(probs: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Mean fidelity loss over the batch's clearly ordered pairs (VisualQuality-R1): P(i better than j)
    = Phi((mu_i - mu_j) / sqrt(var_i + var_j)) from each level distribution's mean and variance."""
    mu, var = level_moments(probs)
    better = (quality[:, None] - quality[None, :]) >= RANK_GAP  # i clearly better than j
    if not bool(better.any()):
        return probs.new_zeros(())
    z = (mu[:, None] - mu[None, :]) / torch.sqrt(var[:, None] + var[None, :] + 1e-4)
    p_better = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    return (1.0 - torch.sqrt(p_better[better] + 1e-8)).mean()


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) at temperature DISTILL_TEMPERATURE over the selected positions of
    (N, T, V) logits already masked to the tokens the grammar allows; scaled by T^2 (Hinton et al.) so
    its gradients stay comparable to the cross-entropy's."""
    t = DISTILL_TEMPERATURE
    s, p = student[positions] / t, teacher[positions] / t
    return F.kl_div(s.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="batchmean") * t * t


def losses(params, logits: torch.Tensor, hidden: torch.Tensor, seq, idx,
           teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    allowed = torch.from_numpy(seq["allowed"][idx])
    target = torch.from_numpy(seq["target"][idx])
    level_pos = torch.from_numpy(seq["level_pos"][idx])
    masked = logits.masked_fill(~allowed, -1e9)
    ce = F.cross_entropy(masked.reshape(-1, P.VOCAB_SIZE), target.reshape(-1), ignore_index=-100)
    probs = level_probs(logits, level_pos)
    kl = F.kl_div(torch.log(probs + 1e-9), torch.from_numpy(seq["level_target"][idx]), reduction="batchmean")
    cells = logits.new_zeros(())  # the diagnosis head exists only while the supervised stage trains
    cell_target = seq["cell_target"][idx]
    if "aux.w" in params and (cell_target != -100).any():  # (records from a teacher have no cell labels)
        cell_logits = hidden @ params["aux.w"].T + params["aux.b"]
        cells = F.cross_entropy(cell_logits.reshape(-1, AUX_CLASSES),
                                torch.from_numpy(cell_target).reshape(-1), ignore_index=-100)
    rank = thurstone_fidelity(probs, torch.from_numpy(seq["quality"][idx]))
    distill = verdict = logits.new_zeros(())
    if teacher_logits is not None:  # every chosen token, and the verdict read at <stop>
        at_level = torch.zeros_like(target, dtype=torch.bool)
        at_level[torch.arange(len(level_pos)), level_pos] = True  # allowed there: the level tokens
        teacher_masked = teacher_logits.masked_fill(~allowed, -1e9)
        distill = distillation_kl(masked, teacher_masked, (target != -100) | at_level)
        verdict = distillation_kl(masked, teacher_masked, at_level)
    return {"ce": ce, "kl": kl, "cells": cells, "rank": rank, "distill": distill, "distill_verdict": verdict}


def total_loss(parts: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    distill = parts["distill"] if w.distill_on == "all" else parts["distill_verdict"]
    return parts["ce"] + w.level * parts["kl"] + w.cells * parts["cells"] + w.rank * parts["rank"] + w.distill * distill


def evaluate(params, cfg, data, seq, teacher: Teacher | None = None) -> dict[str, float]:
    """Teacher-forced figures on a held-out split (model selection only; the benchmark runs the real loop)."""
    idx = np.arange(len(seq["tok"]))
    with torch.no_grad():
        logits, hidden = forward(params, cfg, data, seq, idx)
        parts = losses(params, logits, hidden, seq, idx, teacher.logits(data, seq, idx) if teacher else None)
        pred = level_moments(level_probs(logits, torch.from_numpy(seq["level_pos"])))[0].numpy()
        target = seq["target"]
        is_type = np.isin(target, P.TYPE_IDS)
        allowed = torch.from_numpy(seq["allowed"])
        choice = logits.masked_fill(~allowed, -1e9).argmax(-1).numpy()
    return {**{k: float(v) for k, v in parts.items()}, "srcc": float(spearmanr(pred, seq["quality"])[0]),
            "type_acc": float((choice[is_type] == target[is_type]).mean())}


def train(head: dict[str, np.ndarray], cfg: CriticConfig, data, dev, *, epochs: int, batch: int = 64,
          lr: float = 2e-3, seed: int = 0, weights: LossWeights = LossWeights(),
          trunk: dict[str, np.ndarray] | None = None, dropout: float = FEATURE_DROPOUT,
          teacher: Teacher | None = None, sequences=build_sequences, folded: bool = False,
          tap_dropout: float = 0.0, log=print) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Returns the head (scaling folded in; with ``trunk``, the fine-tuned trunk blocks too) of the epoch
    that did best on dev, and the per-epoch log. ``trunk``: the blocks to fine-tune (:func:`finetunable`);
    ``dropout``: of the standardized visual features; ``teacher``: distil from it (weights.distill);
    ``sequences(data, rng, augment)``: the teacher-forcing arrays (default: oracle trajectories of
    synthesized samples); ``folded``: ``head`` is a trained head with its feature scaling folded in."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    aux = {"aux.w": (rng.standard_normal((AUX_CLASSES, cfg.d_model)) * 0.02).astype(np.float32),
           "aux.b": np.zeros(AUX_CLASSES, np.float32)}  # training only: dropped from the shipped head
    mu, sigma = feature_scaling(data)
    if folded:
        head = unfold_scaling(head, mu, sigma)
    trainable = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in (head | aux).items()}
    blocks = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in (trunk or {}).items()}
    params = trainable | blocks | {"feat_mu": torch.from_numpy(mu), "feat_sigma": torch.from_numpy(sigma)}
    groups = [{"params": list(trainable.values()), "lr": lr}]
    if blocks:  # pretrained weights: slower, and no decay towards zero
        groups.append({"params": list(blocks.values()), "lr": lr * TRUNK_LR_SCALE, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    n = len(data["glance"])
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                pct_start=0.05)
    dev_seq = sequences(dev, np.random.default_rng(seed), augment=False)
    history, best, best_state = [], -np.inf, None
    t0 = time.time()
    for epoch in range(epochs):
        seq = sequences(data, rng, augment=True)
        order = rng.permutation(n)
        tot = 0.0
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            teacher_logits = teacher.logits(data, seq, idx) if teacher else None
            logits, hidden = forward(params, cfg, data, seq, idx, dropout, tap_dropout=tap_dropout)
            loss = total_loss(losses(params, logits, hidden, seq, idx, teacher_logits), weights)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*trainable.values(), *blocks.values()], 1.0)
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        ev = evaluate(params, cfg, dev, dev_seq, teacher)
        rec = {"epoch": epoch + 1, "train_loss": tot / n, **{f"dev_{k}": v for k, v in ev.items()},
               "seconds": round(time.time() - t0, 1)}
        history.append(rec)
        log(json.dumps(rec))
        srcc = ev["srcc"] if np.isfinite(ev["srcc"]) else 0.0  # undefined when every dev quality is the same
        score = srcc - ev["ce"]  # select on level ranking and trajectory likelihood together
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().numpy().copy() for k, v in (trainable | blocks).items()
                          if not k.startswith("aux.")}
    history[best_epoch]["selected"] = True  # the epoch whose head is returned
    return fold_scaling(best_state, mu, sigma), history
