"""Reinforcement stage: GRPO over the critic's own sampled trajectories (after the supervised stage).

In the spirit of the seed papers, on the cached training samples:

- **Rollouts** (Q-Insight / VisualQuality-R1's GRPO): for every image, a group of GROUP trajectories is
  sampled from the reasoner under the protocol grammar - whether and where to zoom (among the cells whose
  zoom features are cached), then the findings; the verdict is the level distribution read at <stop>.
- **Reward** = pairwise Thurstone fidelity of the verdict against the other images of the batch whose
  oracle quality differs clearly (VisualQuality-R1), plus finding correctness (type of the top finding
  and its box against the most severe degradation; no finding on a clean image) under a **Perceptual
  Curriculum Reward** (Q-DeepSight): graded partial credit first (same family of type, box IoU), sharpened
  linearly to all-or-nothing (exact type, IoU >= 0.5) by the last epoch.
- **Evidence Gradient Filtering** (Q-DeepSight): the zoom decisions of a trajectory get policy gradient
  only when its zoom evidence changed the outcome - the expected level with the zooms differs from the
  one the reasoner gives at <stop> straight after the glance by at least EGF_DELTA levels. Finding
  tokens are always credited (their correctness is judged directly).
- Advantages are normalised within each group; a k3 KL term to the supervised policy keeps it close,
  and the verdict keeps its supervised level target on the sampled trajectories.

Whether this stage helps is measured by the accuracy benchmark against the supervised model (README,
ablation); ``python -m export.build --rl-epochs N`` runs it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import ndtr
from scipy.stats import spearmanr

from benchmarks.accuracy import box_iou  # the reward scores boxes as the benchmark does
from export import oracle
from export.train import LEVEL_WEIGHT, RANK_GAP, build_sequences, evaluate, forward, level_moments, level_probs
from kernels.model import CriticConfig
from qds_lite import protocol as P

GROUP = 4
TEMPERATURE = 1.0
KL_BETA = 0.05
EGF_DELTA = 0.1  # expected-level change (in levels) that counts as the zoom evidence changing the outcome
# type families for the graded (early) finding reward: a near miss earns half
FAMILY = {"blur": "blur", "motion_blur": "blur", "defocus": "blur", "noise": "noise", "jpeg": "coding",
          "banding": "coding", "overexposure": "exposure", "underexposure": "exposure", "low_contrast": "contrast",
          "haze": "contrast", "color_cast": "colour", "oversharpen": "sharpening", "upscale_artifacts": "coding",
          "generative_artifacts": "generative"}


@dataclass
class Rollout:
    """One sampled trajectory of sample ``row``, as teacher-forcing rows plus the actions taken."""

    row: int
    tok: list[int] = field(default_factory=lambda: [P.BOS])
    slot: list[int] = field(default_factory=lambda: [-1])
    src: list[tuple[int, int]] = field(default_factory=lambda: [(-1, -1)])
    actions: list[tuple[int, tuple[int, ...], int, bool]] = field(default_factory=list)  # pos, allowed, token, zoom?
    stop_pos: int = -1
    findings: list[P.Finding] = field(default_factory=list)

    def add_visual(self, slot: int, src: tuple[int, int]) -> None:
        self.tok.append(P.PAD)
        self.slot.append(slot)
        self.src.append(src)

    def add_token(self, token: int) -> None:
        self.tok.append(token)
        self.slot.append(-1)
        self.src.append((-1, -1))


def as_sequences(rolls: list[Rollout]) -> dict[str, np.ndarray]:
    """Right-padded teacher-forcing arrays (causal attention: padding never reaches earlier positions)."""
    n, length = len(rolls), max(len(r.tok) for r in rolls)
    tok = np.full((n, length), P.PAD, np.int64)
    slot = np.full((n, length), -1, np.int64)
    src = np.full((n, length, 2), -1, np.int64)
    for i, r in enumerate(rolls):
        tok[i, :len(r.tok)], slot[i, :len(r.slot)], src[i, :len(r.src)] = r.tok, r.slot, r.src
    return {"tok": tok, "slot": slot, "feat_src": src}


def start(row: int) -> Rollout:
    r = Rollout(row)
    for c in range(P.GLANCE_TOKENS):
        r.add_visual(P.GLANCE_SLOT0 + c, (-1, c))
    return r


def sample_rollouts(params, cfg: CriticConfig, data, rows: np.ndarray, rng: np.random.Generator,
                    temperature: float) -> list[Rollout]:
    """Decode every row under the grammar; zooms only on cells with cached features. temperature 0 = greedy."""
    rolls = [start(int(r)) for r in rows]
    grammars = [P.Grammar(P.DEFAULT_ZOOMS) for _ in rolls]
    for g in grammars:
        g.begin()
    active = list(range(len(rolls)))
    while active:
        sub = [rolls[i] for i in active]
        seq = as_sequences(sub)
        last = torch.tensor([len(r.tok) - 1 for r in sub])
        with torch.no_grad():
            logits, _ = forward(params, cfg, data, seq, np.arange(len(sub)), rows=np.array([r.row for r in sub]))
            logits = logits[torch.arange(len(sub)), last].numpy().astype(np.float64)
        still = []
        for k, i in enumerate(active):
            r, g = rolls[i], grammars[i]
            state = g.state
            if state == "level":  # the verdict is read at <stop>; its argmax is fed back, not an action
                token = P.LEVEL0 + int(np.argmax(logits[k][list(P.LEVEL_IDS)]))
            else:
                allowed = g.allowed()
                if state == "after_zoom":
                    cached = set(int(c) for c in data["zoom_cells"][r.row])
                    allowed = tuple(t for t in allowed if t - P.CELL0 in cached)
                z = logits[k][list(allowed)]
                if temperature > 0:
                    p = np.exp((z - z.max()) / temperature)
                    token = int(allowed[rng.choice(len(allowed), p=p / p.sum())])
                else:
                    token = int(allowed[int(np.argmax(z))])
                r.actions.append((len(r.tok) - 1, allowed, token, state in ("looking", "after_zoom")))
            g.advance(token)
            r.add_token(token)
            if token == P.STOP:
                r.stop_pos = len(r.tok) - 1
            if state == "after_zoom":
                z_index = [int(c) for c in data["zoom_cells"][r.row]].index(token - P.CELL0)
                for j in range(P.ZOOM_TOKENS):
                    r.add_visual(P.ZOOM_SLOT0 + j, (z_index, j))
            if not g.done:
                still.append(i)
        active = still
    for r, g in zip(rolls, grammars):
        r.findings = g.findings
    return rolls


def truth(data, row: int) -> tuple[str, tuple[float, float, float, float]] | None:
    """The finding a perfect critic reports first (type, box), or None when nothing is visible."""
    degs = [d for d in oracle.degradations(data, row) if d[1] >= oracle.REPORTABLE]
    if not degs:
        return None
    kind, _, region = degs[0]
    tl, br = oracle.region_cells(region)
    return kind, P.span_box(tl, br)


def top_finding(found: list[P.Finding]) -> P.Finding:
    """The most severe finding, the first on a tie (as the accuracy benchmark reads a trace)."""
    return max(found, key=lambda f: f.severity_bin)


def finding_reward(found: list[P.Finding], expected, sharpness: float) -> float:
    """Perceptual Curriculum Reward for the findings: graded (sharpness 0) to all-or-nothing (1)."""
    if expected is None:
        return 1.0 if not found else 0.0
    if not found:
        return 0.0
    top = top_finding(found)
    kind, box = expected
    got = P.FINDING_TYPES[top.type_index]
    iou = box_iou(P.span_box(top.cell_tl, top.cell_br), box)
    graded = 0.5 * (1.0 if got == kind else 0.5 if FAMILY[got] == FAMILY[kind] else 0.0) + 0.5 * iou
    sharp = 0.5 * float(got == kind) + 0.5 * float(iou >= 0.5)
    return (1.0 - sharpness) * graded + sharpness * sharp


def rank_reward(mu: np.ndarray, var: np.ndarray, quality: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Per rollout: mean Thurstone fidelity of its verdict against every other image's group verdict."""
    images = np.unique(group)
    g_mu = np.array([mu[group == g].mean() for g in images])
    g_var = np.array([var[group == g].mean() for g in images])
    g_q = np.array([quality[group == g][0] for g in images])
    out = np.zeros(len(mu))
    for k in range(len(mu)):
        gap = quality[k] - g_q
        pairs = np.abs(gap) >= RANK_GAP
        if not pairs.any():
            out[k] = 0.5
            continue
        z = (mu[k] - g_mu[pairs]) / np.sqrt(var[k] + g_var[pairs] + 1e-4)
        p = ndtr(z)  # standard normal CDF
        t = (gap[pairs] > 0).astype(np.float64)
        out[k] = float(np.mean(np.sqrt(p * t) + np.sqrt((1.0 - p) * (1.0 - t))))
    return out


def glance_verdicts(params, cfg, data, rows: np.ndarray) -> np.ndarray:
    """Expected level when the reasoner stops right after the glance (the counterfactual for EGF)."""
    rolls = [start(int(r)) for r in rows]
    for r in rolls:
        r.add_token(P.STOP)
    seq = as_sequences(rolls)
    with torch.no_grad():
        logits, _ = forward(params, cfg, data, seq, np.arange(len(rolls)), rows=rows)
        probs = level_probs(logits, torch.full((len(rolls),), len(rolls[0].tok) - 1))
    return level_moments(probs)[0].numpy()


def rl_step(params, ref_params, cfg, data, rows: np.ndarray, rng, sharpness: float, quality: np.ndarray,
            level_target: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
    group_rows = np.repeat(rows, GROUP)
    rolls = sample_rollouts(params, cfg, data, group_rows, rng, TEMPERATURE)
    seq = as_sequences(rolls)
    idx = np.arange(len(rolls))
    logits, _ = forward(params, cfg, data, seq, idx, rows=group_rows)
    with torch.no_grad():
        ref_logits, _ = forward(ref_params, cfg, data, seq, idx, rows=group_rows)
    probs = level_probs(logits, torch.tensor([r.stop_pos for r in rolls]))
    mu, var = (m.detach().numpy() for m in level_moments(probs))
    q = quality[group_rows]
    r_rank = rank_reward(mu, var, q, group_rows)
    r_find = np.array([finding_reward(r.findings, truth(data, r.row), sharpness) for r in rolls])
    reward = r_rank + r_find
    grouped = reward.reshape(-1, GROUP)
    adv = ((grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, keepdims=True) + 1e-4)).ravel()
    mu0 = np.repeat(glance_verdicts(params, cfg, data, rows), GROUP)
    evidence = np.abs(mu - mu0) >= EGF_DELTA  # Evidence Gradient Filtering
    pg, kl, n_tok = logits.new_zeros(()), logits.new_zeros(()), 0
    for k, r in enumerate(rolls):
        for pos, allowed, token, is_zoom in r.actions:
            a = list(allowed)
            logp = logits[k, pos, a].log_softmax(-1)[a.index(token)]
            ref_logp = ref_logits[k, pos, a].log_softmax(-1)[a.index(token)]
            log_ratio = ref_logp - logp
            kl = kl + torch.exp(log_ratio) - log_ratio - 1.0  # k3 estimator of KL(policy || reference)
            n_tok += 1
            if is_zoom and not evidence[k]:
                continue
            pg = pg - float(adv[k]) * logp
    target = torch.from_numpy(level_target[group_rows])
    level_kl = F.kl_div(torch.log(probs + 1e-9), target, reduction="batchmean")
    loss = pg / len(rolls) + KL_BETA * kl / max(n_tok, 1) + LEVEL_WEIGHT * level_kl
    return loss, {"reward": float(reward.mean()), "rank": float(r_rank.mean()), "find": float(r_find.mean()),
                  "evidence": float(evidence.mean()), "kl": kl.item() / max(n_tok, 1)}


def oracle_quality(data) -> np.ndarray:
    """The oracle's quality (1..5) of every sample."""
    return np.array([oracle.quality(oracle.degradations(data, i)) for i in range(len(data["kinds"]))], np.float32)


def free_running(params, cfg, data) -> dict[str, float]:
    """Greedy decoding on held-out samples, as the runtime decodes: level SRCC and top-finding accuracy."""
    rows = np.arange(len(data["kinds"]))
    rolls = sample_rollouts(params, cfg, data, rows, np.random.default_rng(0), 0.0)
    seq = as_sequences(rolls)
    with torch.no_grad():
        logits, _ = forward(params, cfg, data, seq, rows, rows=rows)
        mu = level_moments(level_probs(logits, torch.tensor([r.stop_pos for r in rolls])))[0].numpy()
    q = oracle_quality(data)
    exp = [truth(data, int(i)) for i in rows]
    sharp = [finding_reward(r.findings, e, 1.0) for r, e in zip(rolls, exp)]
    type_hit = [bool(r.findings) and P.FINDING_TYPES[top_finding(r.findings).type_index] == e[0]
                for r, e in zip(rolls, exp) if e is not None]
    return {"free_srcc": float(spearmanr(mu, q)[0]), "free_find_reward": float(np.mean(sharp)),
            "free_type_top1": float(np.mean(type_hit)) if type_hit else float("nan"),
            "free_zooms": float(np.mean([sum(a[2] == P.ZOOM for a in r.actions) for r in rolls]))}


def reinforce(head: dict[str, np.ndarray], cfg: CriticConfig, data, dev, *, epochs: int, batch: int = 32,
              per_epoch: int = 2048, lr: float = 1e-4, seed: int = 0,
              log=print) -> tuple[dict[str, np.ndarray], list[dict]]:
    """GRPO from a supervised head (scaling folded in) on ``per_epoch`` random samples an epoch (rollouts
    cost ~0.1 s a sample here); returns the best head on dev by free-running figures, and the history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    trainable = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in head.items()}
    feat_dim = head["proj.w1"].shape[1]
    unit = {"feat_mu": torch.zeros(feat_dim), "feat_sigma": torch.ones(feat_dim)}
    params = trainable | unit
    ref_params = {k: torch.from_numpy(v.copy()) for k, v in head.items()} | unit
    opt = torch.optim.AdamW(trainable.values(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    quality = oracle_quality(data)
    level_target = np.stack([oracle.level_distribution(q) for q in quality])
    dev_seq = build_sequences(dev, np.random.default_rng(seed), augment=False)
    n = len(data["kinds"])
    history = []
    t0 = time.time()

    def score_dev() -> dict[str, float]:
        return free_running(params, cfg, dev) | {f"tf_{k}": v for k, v in evaluate(params, cfg, dev, dev_seq).items()}

    best_ev = score_dev()
    best, best_state = best_ev["free_srcc"] + best_ev["free_find_reward"], {k: v.copy() for k, v in head.items()}
    history.append({"epoch": 0, **best_ev, "seconds": round(time.time() - t0, 1)})
    log(json.dumps(history[-1]))
    for epoch in range(epochs):
        sharpness = epoch / max(epochs - 1, 1)
        order = rng.permutation(n)[:per_epoch]
        stats: dict[str, float] = {}
        for s in range(0, len(order), batch):
            rows = order[s:s + batch]
            loss, st = rl_step(params, ref_params, cfg, data, rows, rng, sharpness, quality, level_target)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
            opt.step()
            for k, v in st.items():
                stats[k] = stats.get(k, 0.0) + v * len(rows) / len(order)
        ev = score_dev()
        history.append({"epoch": epoch + 1, "sharpness": sharpness, **{f"train_{k}": v for k, v in stats.items()},
                        **ev, "seconds": round(time.time() - t0, 1)})
        log(json.dumps(history[-1]))
        score = ev["free_srcc"] + ev["free_find_reward"]
        if score > best:
            best, best_state = score, {k: v.detach().numpy().copy() for k, v in trainable.items()}
    return best_state, history
