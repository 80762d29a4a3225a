"""`qds models pull` with no network: a test registry, and huggingface-hub's cache built on disk in tmp_path
in its own layout (blobs/, snapshots/<commit>/ symlinks, refs/main) with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qds_lite import registry
from qds_lite.cli import main
from qds_lite.errors import ModelError

hub = pytest.importorskip("huggingface_hub")
constants = pytest.importorskip("huggingface_hub.constants")

COMMIT = "a" * 40
GGUF_COMMIT = "b" * 40
CHECKPOINT = {"config.json": b'{"architectures": ["Qwen2_5_VLForConditionalGeneration"]}',
              "model.safetensors": b"weights" * 100}
PATTERNS = ["*.safetensors", "config.json"]
TEMPLATE = "<|im_start|>system\n{{ messages }}<|im_end|>"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_in_cache(cache: Path, repo_id: str, commit: str, files: dict[str, bytes]) -> Path:
    """What huggingface-hub leaves after a download: content-addressed blobs, a snapshot of symlinks, refs/main."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    for path, data in files.items():
        blob = storage / "blobs" / sha(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


def gguf_bytes(tmp_path: Path, arch: str) -> bytes:
    from gguf import GGUFWriter

    path = tmp_path / f"{arch}.gguf"
    w = GGUFWriter(path, arch)
    w.add_chat_template(TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture
def ggufs(tmp_path) -> dict[str, bytes]:
    pytest.importorskip("gguf")
    return {"m-Q4_K_M.gguf": gguf_bytes(tmp_path, "qwen2vl"), "mmproj-m-f16.gguf": gguf_bytes(tmp_path, "clip")}


def write_registry(path: Path, ggufs: dict[str, bytes] | None = None) -> Path:
    critics = {
        "verified-ckpt": {"format": "hf-checkpoint", "hf_repo": "test-org/verified-ckpt", "revision": COMMIT,
                          "allow_patterns": PATTERNS, "files": {p: sha(d) for p, d in CHECKPOINT.items()},
                          "estimated_size_gb": {"Q4_K_M": 4.7, "mmproj-F16": 1.4}},
        "unverified-ckpt": {"format": "hf-checkpoint", "hf_repo": "test-org/unverified-ckpt", "revision": None,
                            "allow_patterns": PATTERNS, "files": {}},
        "ready-gguf": {"format": "gguf", "hf_repo": "test-org/ready-gguf", "revision": GGUF_COMMIT,
                       "architecture": "Qwen2_5_VLForConditionalGeneration",
                       "llm": {"Q4_K_M": "m-Q4_K_M.gguf", "Q8_0": "m-Q8_0.gguf"}, "mmproj": "mmproj-m-f16.gguf",
                       "files": {p: sha(d) for p, d in (ggufs or {}).items()} | {"m-Q8_0.gguf": "0" * 64}},
    }
    path.write_text(json.dumps({"registry_version": 2, "critics": critics}))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty, offline Hugging Face cache in tmp_path and a test registry; returns the cache folder."""
    cache = tmp_path / "hf" / "hub"
    for var, value in (("HF_HOME", tmp_path / "hf"), ("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1"),
                       ("QDS_CACHE_DIR", tmp_path / "qds")):
        monkeypatch.setenv(var, str(value))
    # huggingface-hub reads its environment once, at import: set what it read
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(registry, "REGISTRY_PATH", tmp_path / "registry.json")
    return cache


@pytest.fixture
def reg(cache, tmp_path) -> Path:
    return write_registry(tmp_path / "registry.json")


def run(*args: str):
    return CliRunner().invoke(main, ["models", *args])


def test_verified_pull_from_the_cache_offline(reg, cache):
    from qds_lite.hub import pull

    snapshot = put_in_cache(cache, "test-org/verified-ckpt", COMMIT, CHECKPOINT | {"README.md": b"not fetched"})
    p = pull("verified-ckpt")
    assert p.verified and p.commit == COMMIT and p.snapshot == snapshot and p.model_dir is None
    assert p.sha256 == {path: sha(data) for path, data in CHECKPOINT.items()}
    assert all((p.snapshot / path).read_bytes() == data for path, data in CHECKPOINT.items())

    r = run("pull", "verified-ckpt")
    assert r.exit_code == 0, r.output
    assert "every file matches its sha256 in the registry" in r.stdout and str(snapshot) in r.stdout
    assert f"python -m export.vlm_convert {snapshot} --out models/verified-ckpt --name verified-ckpt" in r.stdout
    assert "qds score photo.jpg --model models/verified-ckpt" in r.stdout


def test_sha256_mismatch_names_the_file_expected_and_got(reg, cache):
    tampered = CHECKPOINT | {"config.json": b"{}"}
    put_in_cache(cache, "test-org/verified-ckpt", COMMIT, tampered)
    r = run("pull", "verified-ckpt")
    assert r.exit_code == 2
    assert (f"config.json does not match its sha256 in the registry (expected {sha(CHECKPOINT['config.json'])}, "
            f"got {sha(b'{}')})") in r.stderr


def test_a_verified_file_missing_from_the_cache_fails(reg, cache):
    put_in_cache(cache, "test-org/verified-ckpt", COMMIT, {"config.json": CHECKPOINT["config.json"]})
    r = run("pull", "verified-ckpt")
    assert r.exit_code == 2 and "not in the download: model.safetensors" in r.stderr


def test_unverified_entry_is_refused_before_any_download(reg, monkeypatch):
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: pytest.fail("downloaded"))
    r = run("pull", "unverified-ckpt")
    assert r.exit_code == 2
    assert "records no sha256" in r.stderr and "--allow-unverified" in r.stderr
    r = run("pull", "verified-ckpt", "--revision", "c" * 40)  # the recorded sha256s are for another commit
    assert r.exit_code == 2 and f"recorded for commit {COMMIT}" in r.stderr


def test_allow_unverified_prints_every_sha256_to_record(reg, cache):
    put_in_cache(cache, "test-org/unverified-ckpt", COMMIT, CHECKPOINT)
    r = run("pull", "unverified-ckpt", "--allow-unverified")
    assert r.exit_code == 0, r.output
    assert "UNVERIFIED, trust on first use" in r.stdout
    record, _ = json.JSONDecoder().raw_decode(r.stdout, r.stdout.index("{"))
    assert record == {"revision": COMMIT, "files": {path: sha(data) for path, data in CHECKPOINT.items()}}


def test_online_pull_asks_huggingface_hub_for_the_revision_and_patterns(reg, cache, monkeypatch):
    """The download itself, replaced at the boundary by a fake that leaves what a real one would."""
    from qds_lite.hub import pull

    calls = []

    def snapshot_download(repo_id, *, revision, allow_patterns):
        calls.append((repo_id, revision, allow_patterns))
        return str(put_in_cache(cache, repo_id, revision, CHECKPOINT))

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    p = pull("unverified-ckpt", revision="d" * 40, allow_unverified=True)
    assert calls == [("test-org/unverified-ckpt", "d" * 40, PATTERNS)]
    assert not p.verified and p.commit == "d" * 40 and set(p.sha256) == set(CHECKPOINT)


def test_offline_and_not_cached_says_so(reg):
    r = run("pull", "verified-ckpt")
    assert r.exit_code == 2
    assert "test-org/verified-ckpt@" + COMMIT in r.stderr and "HF_HUB_OFFLINE is set" in r.stderr


def test_unknown_name_lists_the_known_ones(reg):
    r = run("pull", "nope")
    assert r.exit_code == 2 and "unknown critic 'nope' (known: verified-ckpt, unverified-ckpt, ready-gguf)" in r.stderr


def test_gguf_entry_gets_a_manifest_that_score_reads(cache, tmp_path, ggufs):
    from qds_lite.hub import pull
    from qds_lite.vlm import resolve_vlm

    write_registry(tmp_path / "registry.json", ggufs)
    put_in_cache(cache, "test-org/ready-gguf", GGUF_COMMIT, ggufs)  # Q4_K_M only: Q8_0 is never asked for
    with pytest.raises(ModelError, match="no Q5_K_M language model"):
        pull("ready-gguf", quant="Q5_K_M")
    p = pull("ready-gguf")
    assert p.verified and p.model_dir == tmp_path / "qds" / "models" / "ready-gguf"
    files = resolve_vlm(p.model_dir)  # sha256-checks both files against the manifest
    assert files.quant == "Q4_K_M" and files.manifest["chat_template"] == TEMPLATE
    assert (files.llm, files.mmproj) == (p.snapshot / "m-Q4_K_M.gguf", p.snapshot / "mmproj-m-f16.gguf")
    r = run("pull", "ready-gguf")
    assert r.exit_code == 0 and f"next: qds score photo.jpg --model {p.model_dir}" in r.stdout
    assert run("verify", str(p.model_dir)).exit_code == 0


def test_models_list_shows_what_is_pulled(reg, cache, monkeypatch):
    r = run("list")
    assert r.exit_code == 0 and r.stdout.count("    not pulled\n") == 3
    put_in_cache(cache, "test-org/verified-ckpt", COMMIT, CHECKPOINT)
    r = run("list")
    assert r.exit_code == 0 and f"pulled: commit {COMMIT[:12]}, 2 files" in r.stdout
    assert r.stdout.count("    not pulled\n") == 2 and "Q4_K_M needs ~7.1 GB" in r.stdout

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    r = run("list")
    assert r.exit_code == 0 and r.stdout.count("not pulled (pip install 'qds-lite[hub]')") == 3
    r = run("pull", "verified-ckpt")
    assert r.exit_code == 2 and "huggingface-hub is not installed (pip install 'qds-lite[hub]')" in r.stderr


def test_environment_alone_sets_the_cache_and_offline_mode(tmp_path):
    """In a fresh process huggingface-hub reads HF_HOME and HF_HUB_OFFLINE itself; nothing is patched."""
    put_in_cache(tmp_path / "hf" / "hub", "test-org/verified-ckpt", COMMIT, CHECKPOINT)
    write_registry(tmp_path / "registry.json")
    code = ("import sys; from pathlib import Path; from qds_lite import registry; from qds_lite.cli import main; "
            f"registry.REGISTRY_PATH = Path({str(tmp_path / 'registry.json')!r}); "
            "main(['models', 'pull', sys.argv[1]])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-c", code, "verified-ckpt"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and "every file matches" in ok.stdout, ok.stderr
    env["HF_HOME"] = str(tmp_path / "elsewhere")
    bad = subprocess.run([sys.executable, "-c", code, "verified-ckpt"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert f"cache {tmp_path / 'elsewhere' / 'hub'} and HF_HUB_OFFLINE is set" in bad.stderr


def test_importing_qds_lite_never_imports_huggingface_hub():
    code = ("import sys, qds_lite, qds_lite.cli, qds_lite.hub; "
            "assert 'huggingface_hub' not in sys.modules, 'huggingface_hub imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
