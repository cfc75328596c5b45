"""What every command shares: ``--version``, ``--help`` with examples, documented ``--json`` keys.

The commands are read from pyproject's ``[project.scripts]``, so a new command is covered (and
held to the same conventions) without touching this file.
"""

from __future__ import annotations

import importlib
import json
import tomllib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _entry_point(target: str) -> Callable[[list[str]], int]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


def _exit(main: Callable[[list[str]], int], argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return int(stopped.value.code or 0)


def _example_lines(help_text: str) -> list[str]:
    """The lines of the ``examples:`` paragraph at the end of a help text."""
    assert "\nexamples:\n" in help_text, help_text
    block = help_text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_scripts_table_is_read() -> None:
    assert {"tvls-launch", "tvls-status", "tvls-collect", "tvls-data"} <= set(SCRIPTS)


@pytest.mark.parametrize(("script", "target"), sorted(SCRIPTS.items()))
def test_every_command_answers_version_and_help_with_examples(
    script: str, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main = _entry_point(target)

    assert _exit(main, ["--version"]) == 0
    assert capsys.readouterr().out == f"{script} {version('tunevlseg')}\n"

    assert _exit(main, ["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {script} ")
    assert "--version" in text
    # At least one example is a command line of this command, with arguments (an environment
    # assignment may lead it; an example may also show the command to run next).
    commands = []
    for line in _example_lines(text):
        words = line.split("#", 1)[0].split()
        while words and "=" in words[0] and not words[0].startswith("-"):
            words.pop(0)
        commands.append(words)
    assert any(words[:1] == [script] and len(words) > 1 for words in commands), text


@pytest.mark.parametrize("action", ["check", "synth", "binarize"])
def test_every_data_action_has_examples(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = _entry_point(SCRIPTS["tvls-data"])
    assert _exit(main, [action, "--help"]) == 0
    examples = _example_lines(capsys.readouterr().out)
    assert examples and all(line.startswith(f"tvls-data {action} ") for line in examples), examples


def test_descriptions_stay_wrapped_under_the_raw_formatter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The raw-description formatter keeps the examples' lines; descriptions are filled first."""
    for target in SCRIPTS.values():
        _exit(_entry_point(target), ["--help"])
        text = capsys.readouterr().out
        description = text.split("\n\n", 2)[1]
        assert all(len(line) <= 79 for line in description.splitlines()), description


# -- --json: machine-readable, its keys documented in --help ---------------------------------


def test_data_check_json_has_the_documented_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tunevlseg.cli.data import CHECK_JSON_KEYS, main
    from tunevlseg.data.synthetic import write_synthetic_medvlsm

    root = write_synthetic_medvlsm(tmp_path / "synth", n_train=4, n_val=2, n_test=2, image_size=32)
    assert main(["check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == list(CHECK_JSON_KEYS)
    assert report["ok"] is True and report["errors"] == 0
    assert [s["split"] for s in report["splits"]] == ["train", "val", "test"]

    assert _exit(main, ["check", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"  {key}: " in text for key in CHECK_JSON_KEYS)


OUTSIDE = """\
model,learner,dataset,category,test_dice
clipseg,coop,kvasir,Non-Radiology,0.75
clipseg,e2e,kvasir,Non-Radiology,0.8125
"""


def test_collect_json_has_the_documented_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tunevlseg.cli.collect import JSON_KEYS, main

    results = tmp_path / "paper.csv"
    results.write_text(OUTSIDE)
    out = tmp_path / "tables"
    assert main(["--results", str(results), "--out", str(out), "--no-plots", "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)  # stdout is the JSON object and nothing else
    assert list(record) == list(JSON_KEYS)
    assert record["folder"] == str(out.resolve())
    assert record["studies"] == 0 and record["main_metric"] == "dice" and record["warnings"] == []
    cells = {(row["learner"], row["dataset"]): row for row in record["results"]}
    assert cells[("coop", "kvasir")]["test_dice"] == 0.75
    assert cells[("e2e", "kvasir")]["source"] == "paper.csv"
    assert cells[("coop", "kvasir")]["test_mdice"] is None
    assert sorted(Path(p).name for p in record["files"]) == sorted(
        ["main_table.md", "main_table.tex", "main_table.csv", "report.html"]
    )
    assert all(Path(p).is_file() for p in record["files"])
    assert "wrote 4 files" in captured.err  # the messages stay on stderr

    assert _exit(main, ["--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"  {key}: " in text for key in JSON_KEYS)
