"""The bad-input corpus: malformed experiment files, data sets, result CSVs and command lines,
each through the real command line. Every case must exit with its code, print no traceback, and
name the file (and line or key) and what to do.

The experiment-file cases of ``test_config_errors.BAD_FILES`` run here too, through
``tvls-launch --dry-run``: there they are checked key by key, here as a user meets them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_config_errors import BAD_FILES

from tunevlseg.cli import collect as collect_cli, launch as launch_cli, train as train_cli

HEADER = "model,learner,dataset,category,test_dice\n"

EXPERIMENT = """\
name: bad
output_dir: out
models: [{{name: clipseg, pretrained: ./tiny, synthetic: true}}]
learners: [coop]
datasets:
  - {dataset}
search: {{n_trials: 2}}
cluster: {{parallelism: 1}}
"""


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, str | bytes]
    command: Callable[[list[str]], int]
    argv: list[str]
    code: int
    fragments: tuple[str, ...]


def _medvlsm(root: str, **anns: str) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {
        f"{root}/anns/{split}.json": "[]" for split in ("train", "val", "test")
    }
    files.update({f"{root}/anns/{split}.json": text for split, text in anns.items()})
    return files


def _experiment(dataset: str) -> str:
    return EXPERIMENT.format(dataset=dataset)


CASES = [
    # Result CSVs (tvls-collect --results): exit 2, the file (and line) named.
    Case(
        "csv-not-utf8",
        {"o.csv": HEADER.encode() + "clipseg,coop,kvasir,Non-Radiology,0.5\n".encode("utf-16")},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        ("{o.csv}: not UTF-8 text", "save it as a UTF-8 CSV"),
    ),
    Case(
        "csv-binary",
        {"o.csv": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        ("{o.csv}: not UTF-8 text (byte 0x89 at offset 0)",),
    ),
    Case(
        "csv-nul-bytes",
        {"o.csv": HEADER + "clipseg,coop,kvasir\x00,Non-Radiology,0.5\n"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        ("{o.csv}:2: control characters (NUL, ...) in a cell",),
    ),
    Case(
        "csv-empty",
        {"o.csv": ""},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        (
            "{o.csv}:1: missing column(s) model, learner, dataset, category, test_dice; found nothing (empty file)",
        ),
    ),
    Case(
        "csv-missing-column",
        {"o.csv": "model,learner,dataset,test_dice\nclipseg,coop,k,0.5\n"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        ("{o.csv}:1: missing column(s) category",),
    ),
    Case(
        "csv-percent-dice",
        {"o.csv": HEADER + "clipseg,coop,kvasir,Non-Radiology,81.2\n"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        ("{o.csv}:2: test_dice 81.2 is outside [0, 1]", "as a fraction"),
    ),
    Case(
        "csv-dice-not-a-number",
        {"o.csv": HEADER + "clipseg,coop,kvasir,Non-Radiology,n/a\n"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        ("{o.csv}:2: test_dice 'n/a' is not a number",),
    ),
    Case(
        "csv-empty-cell",
        {"o.csv": HEADER + "clipseg,,kvasir,Non-Radiology,0.5\n"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        ("{o.csv}:2: empty learner",),
    ),
    Case(
        "csv-duplicate-row",
        {"o.csv": HEADER + "clipseg,coop,k,C,0.5\nclipseg,CoOp,k,C,0.6\n"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        2,
        ("{o.csv}:3: duplicate result", "first at {o.csv}:2"),
    ),
    Case(
        "csv-unknown-model",
        {"o.csv": HEADER + "clipsg,coop,k,C,0.5\n"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        0,
        ("warning: o.csv: model 'clipsg' is not a model", "check its spelling"),
    ),
    Case(
        "csv-unknown-learner",
        {"o.csv": HEADER + "clipseg,copo,k,C,0.5\n"},
        collect_cli.main,
        ["--results", "{o.csv}", "--out", "{tmp}/t"],
        0,
        ("warning: o.csv: learner 'copo' is not a learner",),
    ),
    Case(
        "csv-absent",
        {},
        collect_cli.main,
        ["--results", "{tmp}/none.csv", "--out", "{tmp}/t"],
        2,
        ("{tmp}/none.csv: cannot read: No such file or directory",),
    ),
    # Data sets (tvls-launch --dry-run): exit 1, the data set, the path and the fix named.
    Case(
        "data-root-missing",
        {"bad.yaml": _experiment("{name: kvasir, root: nowhere}")},
        launch_cli.main,
        ["{bad.yaml}", "--dry-run", "--local"],
        1,
        ("data set 'kvasir': root {tmp}/nowhere does not exist", "edit `root:`"),
    ),
    Case(
        "data-split-missing",
        {
            "bad.yaml": _experiment("{name: kvasir, root: k}"),
            "k/anns/train.json": "[]",
            "k/anns/test.json": "[]",
        },
        launch_cli.main,
        ["{bad.yaml}", "--dry-run", "--local"],
        1,
        ("data set 'kvasir' (medvlsm layout): missing {tmp}/k/anns/val.json",),
    ),
    Case(
        "data-natural-split-missing",
        {
            "bad.yaml": _experiment("{name: voc, root: v, format: natural}"),
            "v/annotations/train/x": "",
        },
        launch_cli.main,
        ["{bad.yaml}", "--dry-run", "--local"],
        1,
        ("data set 'voc' (natural layout): missing", "{tmp}/v/annotations/val"),
    ),
    Case(
        "model-folder-missing",
        {
            "bad.yaml": _experiment("{name: s, root: d, synthetic: true}").replace(
                "pretrained: ./tiny, synthetic: true", "pretrained: ./weights"
            )
        },
        launch_cli.main,
        ["{bad.yaml}", "--dry-run", "--local"],
        1,
        ("model 'clipseg': folder {tmp}/weights does not exist",),
    ),
    Case(
        "output-dir-is-a-file",
        {"bad.yaml": _experiment("{name: s, root: d, synthetic: true}"), "out": "x"},
        launch_cli.main,
        ["{bad.yaml}", "--dry-run", "--local"],
        1,
        ("output_dir {tmp}/out: {tmp}/out is a file",),
    ),
    Case(
        "sqlite-in-parallel",
        {
            "bad.yaml": _experiment("{name: s, root: d, synthetic: true}").replace(
                "parallelism: 1", "parallelism: 4"
            )
            + "storage: sqlite:///out/s.db\n"
        },
        launch_cli.main,
        ["{bad.yaml}", "--dry-run", "--local"],
        1,
        ("sqlite storage cannot take parallel tasks", "set parallelism to 1"),
    ),
    # Command lines: exit 2 with a usage message.
    Case(
        "parallelism-zero",
        {"bad.yaml": _experiment("{name: s, root: d, synthetic: true}")},
        launch_cli.main,
        ["{bad.yaml}", "--local", "--parallelism", "0"],
        2,
        ("--parallelism: must be at least 1, got 0",),
    ),
    Case(
        "parallelism-negative",
        {"bad.yaml": _experiment("{name: s, root: d, synthetic: true}")},
        launch_cli.main,
        ["{bad.yaml}", "--local", "--parallelism", "-2"],
        2,
        ("--parallelism: must be at least 1, got -2",),
    ),
    Case(
        "collect-nothing-to-read",
        {},
        collect_cli.main,
        [],
        2,
        ("give an experiment file, --storage URL or at least one --results",),
    ),
    Case(
        "train-params-without-file",
        {},
        train_cli.main,
        ["--params", "lr=0.01"],
        2,
        ("the experiment file is missing", "give it first"),
    ),
    Case(
        "absent-experiment-file",
        {},
        launch_cli.main,
        ["{tmp}/none.yaml", "--dry-run"],
        2,
        ("{tmp}/none.yaml", "no such file"),
    ),
]
CASES += [
    Case(
        f"experiment-{name}",
        {"experiment.yaml": text},
        launch_cli.main,
        ["{experiment.yaml}", "--dry-run", "--local"],
        2,
        (f"{{experiment.yaml}}:{line}: {key}" if key else f"{{experiment.yaml}}:{line}", fragment),
    )
    for name, text, key, line, fragment in BAD_FILES
]


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_exits_with_one_clear_message(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    names = {"tmp": str(tmp_path)}
    for relative, content in case.files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        names[relative] = str(path)

    def fill(text: str) -> str:
        for key, value in names.items():
            text = text.replace("{" + key + "}", value)
        return text

    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    try:
        code = case.command([fill(arg) for arg in case.argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    assert code == case.code, captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in case.fragments:
        assert fill(fragment) in captured.err, (fill(fragment), captured.err)
    if case.code != 0:  # a refused input writes nothing
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_params_after_the_file_or_before_it_mean_the_same(tmp_path: Path) -> None:
    file = str(tmp_path / "e.yaml")
    after = train_cli.parse_args([file, "--params", "lr=0.01", "prompt_depth=2"])
    before = train_cli.parse_args(["--params", "lr=0.01", "prompt_depth=2", file])
    assert (
        (after.experiment, after.params)
        == (before.experiment, before.params)
        == (file, ["lr=0.01", "prompt_depth=2"])
    )
    assert json.dumps(vars(after), default=str) == json.dumps(vars(before), default=str)
