"""``tvls-train``: one fixed-parameter training of a demo study, parameter checks, --describe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunevlseg.cli.train import main
from tunevlseg.config.spaces import PAPER_SPACES, ParamSpace
from tunevlseg.tuning.describe import choose_params, default_value

ROOT = Path(__file__).resolve().parents[1]
COOP = "clipseg-coop/synthetic-polyps"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo file with 2 epochs, in a fresh folder (its paths are relative to it)."""
    folder = tmp_path_factory.mktemp("train") / "experiments"
    folder.mkdir()
    text = (ROOT / "experiments" / "demo.yaml").read_text()
    assert "max_epochs: 5" in text and "learners: [coop, cocoop, vpt, shared_attention]" in text
    text = text.replace("max_epochs: 5", "max_epochs: 2").replace(
        "learners: [coop, cocoop, vpt, shared_attention]",
        "learners: [coop, cocoop, vpt, maple, shared_attention, zeroshot]",
    )
    (folder / "demo.yaml").write_text(text)
    return folder / "demo.yaml"


def test_default_point_rule() -> None:
    paper = PAPER_SPACES["shared_attention"]
    assert default_value(paper["lr"]) == 2.24e-4  # sqrt(1e-5 * 5e-3), three digits
    assert default_value(paper["lr"]) == pytest.approx(math.sqrt(1e-5 * 5e-3), rel=1e-2)
    assert default_value(paper["prompt_depth"]) == 6
    assert default_value(paper["n_heads"]) == 16
    assert default_value(paper["dropout"]) == pytest.approx(0.325)
    assert default_value(ParamSpace("int", low=1, high=3)) == 2
    assert default_value(ParamSpace("int", fixed=4, is_fixed=True)) == 4
    chosen = choose_params(PAPER_SPACES["cocoop"], {"use_lora": "false", "prompt_depth": "3"})
    assert chosen.values["use_lora"] is False and chosen.values["prompt_depth"] == 3
    assert chosen.sources == {
        "lr": "default",
        "weight_decay": "default",
        "prompt_depth": "given",
        "intermediate_dim": "default",
        "use_lora": "given",
    }


def test_train_coop_prints_metrics(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(demo), "--study", COOP, "--params", "lr=0.005", "prompt_depth=2"]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)  # the epoch lines go to stderr, not into the JSON
    epochs = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], captured.err
    for line in epochs:
        assert all(f"{name} " in line for name in ("train loss", "val dice", "iou", "loss"))
        assert "from checkpoint" not in line
    assert record["study"] == "demo/" + COOP
    assert record["params"]["lr"] == 0.005 and record["params"]["prompt_depth"] == 2
    assert record["sources"]["weight_decay"] == "default"
    for key in ("val_dice", "val_iou", "test_dice", "test_iou"):
        assert 0.0 <= record["result"][key] <= 1.0
    run_dir = Path(record["run_dir"])
    assert run_dir.parent == demo.parent.parent / "runs/demo/demo/train" / COOP
    assert (run_dir / "result.json").is_file()
    assert not (demo.parent.parent / "runs/demo/optuna.journal").exists()

    # Same command, same folder: the finished run is shown, not trained again.
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "a finished run is in" in captured.err
    # Its epochs are listed once each, from the checkpoint's record.
    replayed = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in replayed] == ["epoch 1/2", "epoch 2/2"], captured.err
    assert all(line.endswith("(from checkpoint)") for line in replayed)
    assert "validation" in captured.out and "test" in captured.out
    assert f"{record['result']['test_dice']:.4f}" in captured.out
    assert "weight_decay" in captured.out and "default" in captured.out


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (["lr=0.5"], "lr=0.5 is out of range: lr takes a log-scaled float in [0.001, 0.01]"),
        (["prompt_depth=7"], "prompt_depth takes an integer in [1, 3]"),
        (["prompt_depth=1.5"], "not a whole number"),
        (["depth=2"], "unknown parameter(s) depth for learner coop: lr takes"),
        (["lr"], "KEY=VALUE"),
    ],
)
def test_bad_params_exit_2_naming_the_range(
    demo: Path, params: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(demo), "--study", COOP, "--params", *params]) == 2
    assert expected in capsys.readouterr().err


def test_a_choice_outside_the_choices(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(demo), "--study", "clipseg-cocoop/synthetic-polyps", "--params", "use_lora=maybe"]
    assert main(argv) == 2
    assert "use_lora takes one of true, false" in capsys.readouterr().err


@pytest.mark.parametrize("study", ["no-such-study", "synthetic-polyps"])
def test_unknown_or_ambiguous_study_lists_names(
    demo: Path, study: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(demo), "--study", study]) == 2
    err = capsys.readouterr().err
    assert "demo/clipseg-coop/synthetic-polyps" in err
    assert "demo/clipseg-zeroshot/synthetic-polyps" in err


def test_describe_counts_every_learner(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(demo), "--describe", "--json"]) == 0
    rows = {(row["model"], row["learner"]): row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {
        *(
            ("clipseg", x)
            for x in ("coop", "cocoop", "vpt", "maple", "shared_attention", "zeroshot")
        ),
        *(("cris", x) for x in ("coop", "cocoop", "zeroshot")),
    }
    for (_, learner), row in rows.items():
        assert row["total"] > 0
        if learner == "zeroshot":
            assert row["trainable"] == 0 and row["prompt_depth"] is None
        else:
            assert 0 < row["trainable"] < row["total"]
            assert row["prompt_depth"] == 2  # middle of the demo's [1, 3]
    assert main([str(demo), "--describe"]) == 0
    table = capsys.readouterr().out
    assert "trainable" in table and "total" in table and "share" in table
    assert all(learner in table for _, learner in rows)


def test_describe_real_size(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(demo), "--describe", "--real-size", "--study", COOP, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["prompt_depth"] for row in rows] == [1, 2, 11]
    upsampler = 64 * 5 * 5 + 1 + 1  # conv 5x5 -> 1 channel, bias, residual ratio
    # n_ctx = 4 context vectors of width 512 per prompted text layer (12 text layers run).
    assert [row["trainable"] for row in rows] == [4 * 512 * d + upsampler for d in (1, 2, 11)]
    assert 150e6 < rows[0]["total"] < 151e6
