"""``tvls-prefetch``: clear per-model failures without network, cached models verified offline.

No download is possible here, so the network is a closed local port (``HF_ENDPOINT``) and the
success path uses a fresh Hugging Face cache holding a tiny random CLIPSeg in the cache layout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunevlseg.cli.prefetch import main
from tunevlseg.models.prefetch import select_files
from tunevlseg.models.tiny import write_tiny_clipseg

CLOSED_PORT = "http://127.0.0.1:9"
COMMIT = "1" * 40


def _experiment(folder: Path, models: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prefetch.yaml"
    path.write_text(
        "name: prefetch\noutput_dir: ./runs\nlearners: [coop]\n"
        "datasets:\n  - {name: d, root: ./data}\n"
        f"models:\n{models}"
    )
    return path


def _cache_with_tiny(hub: Path, repo_id: str, tiny: Path) -> Path:
    """Put ``tiny`` into a hub cache as ``repo_id``'s main revision (what a download leaves)."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(tiny, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clipseg(tmp_path_factory.mktemp("tiny") / "clipseg-tiny")


def test_without_network_each_missing_model_fails_with_a_reason(tmp_path: Path) -> None:
    experiment = _experiment(
        tmp_path / "exp",
        "  - {name: clipseg, pretrained: CIDAS/clipseg-rd64-refined}\n"
        "  - {name: clipseg, label: other, pretrained: no-org/no-model}\n"
        "  - {name: cris}\n",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=CLOSED_PORT)
    run = subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.prefetch", str(experiment)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stdout.splitlines()
    for repo_id in ("CIDAS/clipseg-rd64-refined", "no-org/no-model"):
        (line,) = [line for line in lines if repo_id in line]
        assert line.startswith("failed")
        assert f"cannot reach the Hugging Face Hub at {CLOSED_PORT}" in line
    (cris,) = [line for line in lines if "cris" in line.split()[1:2]]
    assert cris.startswith("failed") and "no Hugging Face release" in cris
    assert "3 failed" in lines[-1]
    assert str(tmp_path / "hf" / "hub") in run.stderr  # the cache it would have filled


def test_cached_and_local_models_are_verified_offline(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants as hub

    snapshot = _cache_with_tiny(tmp_path / "hub", "tiny-org/clipseg-tiny", tiny)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "ENDPOINT", CLOSED_PORT)
    experiment = _experiment(
        tmp_path / "exp",
        "  - {name: clipseg, pretrained: tiny-org/clipseg-tiny}\n"
        f"  - {{name: clipseg, label: local, pretrained: {tiny}}}\n"
        "  - {name: clipseg, label: demo, pretrained: ./assets/tiny, synthetic: true}\n",
    )
    assert main([str(experiment)]) == 0
    lines = capsys.readouterr().out.splitlines()
    cached = next(line for line in lines if "tiny-org/clipseg-tiny" in line)
    assert cached.startswith("already cached") and str(snapshot) in cached
    assert "loads offline" in cached
    local = next(line for line in lines if str(tiny) in line and "local" in line)
    assert local.startswith("local folder") and "loads offline" in local
    assert next(line for line in lines if "assets/tiny" in line).startswith("skipped")
    assert lines[-1] == "3 model(s): 1 already cached, 1 local folder, 1 skipped"
    assert not hub.HF_HUB_OFFLINE  # offline mode was only switched on for the check


def test_a_cached_model_that_does_not_load_fails(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants as hub

    snapshot = _cache_with_tiny(tmp_path / "hub", "tiny-org/broken", tiny)
    (snapshot / "model.safetensors").write_bytes(b"not weights")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "ENDPOINT", CLOSED_PORT)
    experiment = _experiment(tmp_path / "exp", "  - {name: clipseg, pretrained: tiny-org/broken}\n")
    assert main([str(experiment)]) == 1
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("failed") and "does not load offline" in line


def test_dry_run_lists_what_it_would_fetch(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants as hub

    _cache_with_tiny(tmp_path / "hub", "tiny-org/clipseg-tiny", tiny)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "ENDPOINT", CLOSED_PORT)
    experiment = _experiment(
        tmp_path / "exp",
        "  - {name: clipseg, pretrained: tiny-org/clipseg-tiny}\n"
        "  - {name: clipseg, label: real, pretrained: CIDAS/clipseg-rd64-refined}\n",
    )
    assert main([str(experiment), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would download" in out and "CIDAS/clipseg-rd64-refined" in out
    assert "already cached" in out and "dry run" in out
    assert "loads offline" not in out


def test_only_the_files_loading_needs_safetensors_first() -> None:
    repo = [
        "config.json",
        "pytorch_model.bin",
        "model.safetensors",
        "tf_model.h5",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
        "README.md",
        "onnx/model.onnx",
    ]
    chosen = select_files(repo)
    assert "model.safetensors" in chosen and "pytorch_model.bin" not in chosen
    assert {"tokenizer.json", "vocab.json", "merges.txt", "preprocessor_config.json"} <= set(chosen)
    assert not {"tf_model.h5", "README.md", "onnx/model.onnx"} & set(chosen)
    assert select_files(["config.json", "pytorch_model.bin"])[-1] == "pytorch_model.bin"
    sharded = select_files(
        [
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]
    )
    assert len(sharded) == 4
    with pytest.raises(ValueError, match="weights"):
        select_files(["config.json", "tf_model.h5"])


def test_a_download_is_verified_offline(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The download itself is faked (no hub here); what follows it is the real code."""
    import huggingface_hub.constants as hub

    from tunevlseg.models import prefetch

    def fake_download(repo_id: str) -> tuple[Path, str]:
        return _cache_with_tiny(tmp_path / "hub", repo_id, tiny), "6 files, 2.3 MB"

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(prefetch, "download", fake_download)
    experiment = _experiment(tmp_path / "exp", "  - {name: clipseg, pretrained: tiny-org/new}\n")
    assert main([str(experiment)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("downloaded") and "6 files, 2.3 MB" in line
    assert line.endswith("loads offline (0.6 M parameters)")
