"""The training objectives: per-cell labels, Thurstone fidelity, and the GRPO stage's rewards and rollouts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import oracle  # noqa: E402
from export.rl import finding_reward, rank_reward, sample_rollouts  # noqa: E402
from export.train import RANK_GAP, thurstone_fidelity  # noqa: E402
from qds_lite import protocol as P  # noqa: E402

NOISE, BLUR, DEFOCUS = (P.FINDING_TYPES.index(t) for t in ("noise", "blur", "defocus"))
CLEAN = len(P.FINDING_TYPES)


def test_cell_types_take_the_most_severe_visible_degradation():
    degs = [("noise", 0.6, (0, 0, 2, 2)), ("blur", 0.3, None), ("defocus", 0.05, (3, 3, 4, 4))]
    cells = oracle.cell_types(degs, min_severity=0.1).reshape(P.GRID, P.GRID)
    assert (cells[:2, :2] == NOISE).all()
    assert cells[3, 3] == BLUR  # the defocus is below the visibility threshold; the global blur shows
    assert (cells[2:, :2] == BLUR).all()
    assert (oracle.cell_types([("blur", 0.05, None)], 0.1) == CLEAN).all()


def test_oracle_names_only_reportable_damage_but_grades_all_of_it():
    faint, clear = ("noise", oracle.REPORTABLE / 2, None), ("blur", oracle.REPORTABLE, (0, 0, 2, 2))
    tokens = oracle.finding_tokens([clear, faint])
    assert tokens.count(P.FIND) == 1 and tokens[1] == P.TYPE0 + BLUR
    assert oracle.finding_tokens([faint]) == []  # a clean verdict for barely visible damage ...
    assert oracle.quality([faint]) < oracle.quality([])  # ... whose quality target is still lower


def test_thurstone_fidelity_rewards_the_right_order_only():
    sharp_good, sharp_bad = [0, 0, 0, 0.1, 0.9], [0.9, 0.1, 0, 0, 0]
    quality = torch.tensor([5.0, 1.0])
    right = thurstone_fidelity(torch.tensor([sharp_good, sharp_bad]), quality)
    wrong = thurstone_fidelity(torch.tensor([sharp_bad, sharp_good]), quality)
    assert right < 0.01 < 0.9 < wrong
    tie = thurstone_fidelity(torch.tensor([sharp_good, sharp_bad]), torch.tensor([3.0, 3.0 + RANK_GAP / 2]))
    assert tie == 0  # no pair differs clearly: nothing to rank


def test_finding_reward_is_graded_early_and_sharp_late():
    expected = ("blur", (0.0, 0.0, 0.5, 0.5))
    near = [P.Finding(DEFOCUS, 3, 0, 5)]  # same family, the right box
    exact = [P.Finding(BLUR, 3, 0, 5)]
    assert finding_reward(exact, expected, 0.0) == pytest.approx(1.0)
    assert finding_reward(exact, expected, 1.0) == pytest.approx(1.0)
    assert finding_reward(near, expected, 0.0) == pytest.approx(0.75)  # half credit for the type family
    assert finding_reward(near, expected, 1.0) == pytest.approx(0.5)  # the box only
    assert finding_reward([], expected, 0.5) == 0.0
    assert finding_reward([], None, 1.0) == 1.0 and finding_reward(exact, None, 1.0) == 0.0


def test_rank_reward_prefers_verdicts_in_the_known_order():
    quality = np.array([5.0, 5.0, 1.0, 1.0])
    group = np.array([0, 0, 1, 1])
    var = np.full(4, 0.2)
    right = rank_reward(np.array([4.5, 4.5, 1.5, 1.5]), var, quality, group)
    wrong = rank_reward(np.array([1.5, 1.5, 4.5, 4.5]), var, quality, group)
    assert (right > 0.95).all() and (wrong < 0.05).all()


def test_rollouts_follow_the_grammar_and_zoom_only_on_cached_cells():
    from export.build import critic_config
    from kernels.model import init_head

    cfg = critic_config()
    head = init_head(cfg, 0)
    feat = cfg.feat_dim
    params = {k: torch.from_numpy(v) for k, v in head.items()} | {
        "feat_mu": torch.zeros(feat), "feat_sigma": torch.ones(feat)}
    rng = np.random.default_rng(0)
    n = 6
    data = {"glance": rng.standard_normal((n, P.GLANCE_TOKENS, feat)).astype(np.float16),
            "zooms": rng.standard_normal((n, 6, P.ZOOM_TOKENS, feat)).astype(np.float16),
            "zoom_cells": np.array([rng.choice(P.N_CELLS, 6, replace=False) for _ in range(n)], np.int8)}
    rolls = sample_rollouts(params, cfg, data, np.arange(n), rng, temperature=1.0)
    for r in rolls:
        cells = [t - P.CELL0 for t in r.tok if P.CELL0 <= t < P.CELL0 + P.N_CELLS]
        zoomed = cells[:len(cells) - 2 * len(r.findings)]  # finding boxes come after the zooms
        assert set(zoomed) <= set(int(c) for c in data["zoom_cells"][r.row])
        assert r.tok[r.stop_pos] == P.STOP and r.tok[-1] == P.EOS
        g = P.Grammar(P.DEFAULT_ZOOMS)
        g.begin()
        for t in (t for t, s in zip(r.tok[1:], r.slot[1:]) if s < 0):
            g.advance(t)  # raises if the sampled sequence breaks the grammar
        assert g.done


def test_finetuning_starts_from_the_cached_features_and_trains_the_trunk(weights):
    """The fine-tuned path recomputes the last tap from the cached block inputs: at the start it must
    give the cached features (up to their float16 storage), and its gradient must reach the trunk."""
    from export.train import FINETUNED_KEY, finetunable, gather_features
    from kernels.model import LAST_TAP_FEATURES, to_torch, trunk_features_and_map

    rng = np.random.default_rng(0)
    n, z = 2, 6
    with torch.no_grad():
        p = to_torch(weights)
        glance, glance_map = trunk_features_and_map(p, torch.from_numpy(rng.random((n, 3, 256, 256), np.float32)))
        zooms, zoom_maps = trunk_features_and_map(p, torch.from_numpy(rng.random((n * z, 3, 128, 128), np.float32)))
    data = {"glance": glance.numpy().astype(np.float16), "glance_map": glance_map.numpy().astype(np.float16),
            "zooms": zooms.numpy().reshape(n, z, P.ZOOM_TOKENS, -1).astype(np.float16),
            "zoom_maps": zoom_maps.numpy().reshape(n, z, *zoom_maps.shape[1:]).astype(np.float16)}
    glance_src = [(-1, c) for c in range(P.GLANCE_TOKENS)]
    src = np.array([glance_src + [(zi, j) for zi in used for j in range(P.ZOOM_TOKENS)]
                    for used in ((0, 4), (5, 1))])
    rows = np.arange(n)
    cached = gather_features(data, rows, src)
    blocks = {k: torch.nn.Parameter(torch.from_numpy(v)) for k, v in finetunable(weights).items()}
    tuned = gather_features(data, rows, src, blocks)
    np.testing.assert_allclose(tuned.detach().numpy(), cached.numpy(), rtol=0, atol=2e-3)
    assert not torch.equal(tuned[..., LAST_TAP_FEATURES], cached[..., LAST_TAP_FEATURES])  # really recomputed
    tuned[..., LAST_TAP_FEATURES].square().mean().backward()
    assert float(blocks[FINETUNED_KEY].grad.abs().sum()) > 0


def _toy_samples(cfg, n: int, seed: int) -> dict[str, np.ndarray]:
    """Random features with real oracle labels: enough for one teacher-forced batch."""
    from export.samples import KIND_NAMES, MAX_DEGS

    rng = np.random.default_rng(seed)
    kinds = np.full((n, MAX_DEGS), -1, np.int8)
    kinds[:, 0] = rng.integers(0, len(KIND_NAMES), n)
    region = np.full((n, MAX_DEGS, 4), -1, np.int8)
    region[::2, 0] = (0, 0, 2, 2)  # every other sample degraded locally, in the top-left quarter
    return {"kinds": kinds, "severity": rng.uniform(0.2, 1.0, (n, MAX_DEGS)).astype(np.float32), "region": region,
            "glance": rng.standard_normal((n, P.GLANCE_TOKENS, cfg.feat_dim)).astype(np.float16),
            "zooms": rng.standard_normal((n, 6, P.ZOOM_TOKENS, cfg.feat_dim)).astype(np.float16),
            "zoom_cells": np.array([rng.choice(P.N_CELLS, 6, replace=False) for _ in range(n)], np.int8)}


def test_distillation_matches_the_teacher_over_allowed_tokens_only():
    """The distillation term is zero when the student already speaks like the teacher, ignores tokens
    the grammar forbids, and otherwise pulls the student's own parameters towards the teacher."""
    from export.build import critic_config
    from export.train import Teacher, build_sequences, forward, losses, teacher_config
    from kernels.model import init_head

    cfg = critic_config()
    tcfg = teacher_config(cfg)
    assert tcfg.d_model > cfg.d_model and tcfg.n_layers > cfg.n_layers and tcfg.vocab_size == cfg.vocab_size
    data = _toy_samples(cfg, 8, 0)
    seq = build_sequences(data, np.random.default_rng(0), augment=False)
    idx = np.arange(8)
    teacher = Teacher.from_head(init_head(tcfg, 1), tcfg)
    student = {k: torch.nn.Parameter(v) for k, v in Teacher.from_head(init_head(cfg, 2), cfg).params.items()}
    logits, hidden = forward(student, cfg, data, seq, idx)
    same = losses(student, logits, hidden, seq, idx, logits.detach())["distill"]
    assert float(same.detach()) == pytest.approx(0, abs=1e-5)
    forbidden = ~torch.from_numpy(seq["allowed"][idx])
    noisy = torch.where(forbidden, logits.detach() + 50 * torch.randn_like(logits), logits.detach())
    assert float(losses(student, logits, hidden, seq, idx, noisy)["distill"].detach()) == pytest.approx(0, abs=1e-5)
    teacher_logits = teacher.logits(data, seq, idx)
    assert teacher_logits.shape == logits.shape
    parts = losses(student, logits, hidden, seq, idx, teacher_logits)
    assert float(parts["distill"].detach()) > 0.01 and float(parts["distill_verdict"].detach()) > 0.01
    at_verdict = (torch.arange(8), torch.from_numpy(seq["level_pos"]))
    agrees_there = teacher_logits.clone()
    agrees_there[at_verdict] = logits.detach()[at_verdict]  # the teacher agrees at the verdict only
    verdict_only = losses(student, logits, hidden, seq, idx, agrees_there)["distill_verdict"]
    assert float(verdict_only.detach()) == pytest.approx(0, abs=1e-5)
    parts["distill"].backward()
    assert float(student["dec.output"].grad.abs().sum()) > 0 and float(student["proj.w1"].grad.abs().sum()) > 0


def test_tap_dropout_hides_the_semantic_tap_from_whole_sequences():
    """`--tap-dropout p`: a dropped sequence reads its block-13 features at their training mean at every
    position (as if they said nothing), the rest of its features as they are; p = 0 changes nothing."""
    from export.build import critic_config
    from export.train import Teacher, build_sequences, forward
    from kernels.model import LAST_TAP_FEATURES, init_head

    cfg = critic_config()
    data = _toy_samples(cfg, 8, 0)
    seq = build_sequences(data, np.random.default_rng(0), augment=False)
    idx = np.arange(8)
    params = Teacher.from_head(init_head(cfg, 2), cfg).params
    blind = dict(data)
    for key in ("glance", "zooms"):  # the features a dropped sequence should be reading
        blind[key] = data[key].copy()
        blind[key][..., LAST_TAP_FEATURES] = params["feat_mu"].numpy()[LAST_TAP_FEATURES]
    plain, _ = forward(params, cfg, data, seq, idx)
    assert torch.equal(forward(params, cfg, data, seq, idx, tap_dropout=0.0)[0], plain)
    blind_logits, _ = forward(params, cfg, blind, seq, idx)
    torch.manual_seed(0)
    mixed, _ = forward(params, cfg, data, seq, idx, tap_dropout=0.5)
    dropped = [bool(torch.allclose(mixed[i], blind_logits[i], atol=1e-4)) for i in range(8)]
    kept = [bool(torch.allclose(mixed[i], plain[i], atol=1e-4)) for i in range(8)]
    assert all(d != k for d, k in zip(dropped, kept)) and any(dropped) and any(kept)
