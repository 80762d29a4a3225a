"""benchmarks/vlm_overhead.py measures what it says, on the tiny random Qwen2.5-VL (the ``tiny_vlm`` fixture).

Consistency of the numbers only: no timing is compared with the 5% bar here (that is checked by running
``python -m benchmarks.vlm_overhead``), and the probe must leave the critic exactly as it found it.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vlm_tiny import FAST

from .conftest import SAMPLES

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_benchmark_is_light():
    code = ("import sys, benchmarks.vlm_overhead; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('qds_lite', 'export', 'llama_cpp', 'torch')]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.slow
def test_measure_one_image_is_consistent(tiny_vlm):
    jsonschema = pytest.importorskip("jsonschema")
    bench = importlib.import_module("benchmarks.vlm_overhead")
    import qds_lite.vlm
    from qds_lite import vlm_protocol as V
    from qds_lite.io import LoadedImage, load_image

    originals = (qds_lite.vlm._crop, V.grammar, V.parse_turn, LoadedImage.thumbnail)
    schema = jsonschema.Draft202012Validator(json.loads((ROOT / "qds_lite" / "trace.schema.json").read_text()))
    with bench.make_critic(tiny_vlm, zooms=2, **FAST) as critic:
        ll, mtmd = critic._ll, critic._mtmd
        out = bench.measure(critic, [SAMPLES[0]], repeat=1)
        (rec,) = out["records"]
        # the probe is gone: same module handles, no instance overrides, module functions restored
        assert critic._ll is ll and critic._mtmd is mtmd
        assert not {"_feed", "_generate", "_result"} & set(vars(critic))
        assert (qds_lite.vlm._crop, V.grammar, V.parse_turn, LoadedImage.thumbnail) == originals
        plain = critic.run(load_image(SAMPLES[0]))  # and measuring changed nothing the model did

    assert 0 < rec["inside_ms"] <= rec["wall_ms"]
    assert 0.0 <= rec["overhead_share"] <= 1.0
    assert rec["overhead_ms"] == pytest.approx(rec["wall_ms"] - rec["inside_ms"])
    assert rec["overhead_share"] == pytest.approx(rec["overhead_ms"] / rec["wall_ms"])
    assert sum(rec["llama_ms"].values()) == pytest.approx(rec["inside_ms"])
    assert sum(rec["llama_counts"].values()) == rec["n_llama_calls"]
    assert sum(rec["steps_ms"].values()) == pytest.approx(rec["overhead_ms"])  # the breakdown adds up
    assert all(v >= 0 for k, v in rec["steps_ms"].items() if k != "rest")
    assert {"generate", "feed", "crop", "glance", "grammar", "parse", "result"} <= set(rec["steps_ms"])
    assert rec["llama_counts"]["mtmd_helper_eval_chunks"] == 3 and rec["llama_counts"]["llama_decode"] > 0
    assert rec["n_tokens"] == rec["llama_counts"]["llama_decode"] and 0 <= rec["image_llama_ms"] <= rec["inside_ms"]
    assert 0 <= rec["timer_cost_ms"] and rec["decode_ms"] > 0

    # the trace is the normal one: glance + the forced two zooms, valid against the schema
    run = rec["run"]
    schema.validate(run.result.trace)
    assert rec["steps"] == ["glance", "zoom", "zoom"] and len(run.turns) == 3
    assert (plain.turns, plain.zooms, plain.result.score) == (run.turns, run.zooms, run.result.score)

    s = out["summary"]
    assert s["n"] == 1 and s["wall_ms"] == rec["wall_ms"] and s["overhead_share"] == rec["overhead_share"]
    assert s["overhead_share_pooled"] == pytest.approx(rec["overhead_share"])
    text = bench.tables(out)
    assert "overhead outside llama.cpp" in text and Path(SAMPLES[0]).name in text
