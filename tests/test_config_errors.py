"""Bad experiment files: each error names the file, the line and the key path, in one message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunevlseg.cli import launch as launch_cli
from tunevlseg.config.loader import ConfigError, load_experiment

VALID = """\
name: t
output_dir: out
models:
  - name: clipseg
learners:
  - coop
  - name: vpt
datasets:
  - name: kvasir
    root: data/kvasir
search:
  n_trials: 3
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# (id, file text, key path, line, a fragment of the message)
BAD_FILES = [
    ("unknown-top-key", VALID + "lerners: [coop]\n", "lerners", 13, "did you mean 'learners'"),
    (
        "unknown-nested-key",
        VALID + "  n_trails: 3\n",
        "search.n_trails",
        13,
        "valid keys: n_trials=20",
    ),
    ("missing-name", VALID.replace("name: t\n", ""), "name", 1, "required key is missing"),
    (
        "missing-datasets",
        VALID.split("datasets:")[0] + "search: {n_trials: 3}\n",
        "datasets",
        1,
        "required",
    ),
    (
        "unknown-learner",
        VALID.replace("  - coop", "  - cop"),
        "learners[0].name",
        6,
        "unknown learner 'cop'",
    ),
    (
        "unknown-model",
        VALID.replace("name: clipseg", "name: sam"),
        "models[0].name",
        4,
        "unknown model 'sam'",
    ),
    (
        "wrong-type",
        VALID.replace("n_trials: 3", "n_trials: many"),
        "search.n_trials",
        12,
        "valid integer",
    ),
    (
        "bad-value",
        VALID.replace("n_trials: 3", "n_trials: 0"),
        "search.n_trials",
        12,
        "greater than or equal to 1",
    ),
    ("bad-sampler", VALID + "  sampler: grid\n", "search.sampler", 13, "'tpe' or 'random'"),
    (
        "bad-format",
        VALID.replace("    root: data/kvasir", "    root: data/kvasir\n    format: coco"),
        "datasets[0].format",
        11,
        "'medvlsm' or 'natural'",
    ),
    (
        "space-low-above-high",
        VALID + "  space:\n    prompt_depth: {low: 5, high: 2}\n",
        "search.space.prompt_depth",
        14,
        "low must be below high",
    ),
    (
        "space-log-nonpositive",
        VALID + "  space:\n    lr: {low: 0, high: 0.01}\n",
        "search.space.lr",
        14,
        "log-scaled range needs low > 0",
    ),
    (
        "space-empty-choices",
        VALID.replace(
            "  - name: vpt", "  - name: cocoop\n    space:\n      intermediate_dim: {choices: []}"
        ),
        "learners[1].space.intermediate_dim",
        9,
        "non-empty list",
    ),
    (
        "space-unknown-param",
        VALID.replace("  - name: vpt", "  - name: vpt\n    space: {n_heads: 16}"),
        "learners[1].space.n_heads",
        8,
        "not a parameter of vpt",
    ),
    (
        "space-wrong-kind",
        VALID + "  space:\n    lr: {choices: [a, b]}\n",
        "search.space.lr",
        14,
        "must be a number",
    ),
    (
        "grid-unknown-axis",
        VALID + "grid:\n  model.upsampler: [true, false]\n",
        "grid.model.upsampler",
        14,
        "did you mean 'model.use_upsampler'",
    ),
    (
        "grid-bad-value",
        VALID + 'grid:\n  training.precision: ["32", "fp8"]\n',
        "grid.training.precision[1]",
        14,
        "'auto', '32'",
    ),
    ("duplicate-key", VALID + "name: again\n", "name", 13, "key repeated (first at line 1)"),
    (
        "duplicate-dataset",
        VALID.replace("search:", "  - name: kvasir\n    root: other\nsearch:"),
        "datasets[1]",
        11,
        "'kvasir' is listed twice",
    ),
    (
        "bad-storage",
        VALID + "storage: mysql://db/x\n",
        "storage",
        13,
        "unknown storage scheme 'mysql'",
    ),
    (
        "storage-password",
        VALID + "storage: postgresql://me:secret@db/x\n",
        "storage",
        13,
        "PGPASSWORD",
    ),
    (
        "no-viable-combination",
        VALID.replace("name: clipseg", "name: cris").replace("  - coop\n", ""),
        "learners",
        5,
        "need a ViT image encoder",
    ),
    (
        "bad-sweep-name",
        VALID.replace("name: t\n", "name: 'my sweep; rm -rf'\n"),
        "name",
        1,
        "should match pattern",
    ),
    ("not-a-mapping", "- just\n- a list\n", "", 1, "expected a mapping of settings"),
    (
        "pruner-unknown",
        VALID + "  pruner: {name: asha2}\n",
        "search.pruner",
        13,
        "unknown name 'asha2'; expected one of 'none', 'asha'",
    ),
    (
        "pruner-no-name",
        VALID + "  pruner: {min_resource: 2}\n",
        "search.pruner",
        13,
        "a pruner needs a `name:`",
    ),
    (
        "pruner-unknown-option",
        VALID + "  pruner:\n    name: asha\n    min_resorce: 2\n",
        "search.pruner.min_resorce",
        15,
        "did you mean 'min_resource'",
    ),
    (
        "pruner-bad-option",
        VALID + "  pruner:\n    name: hyperband\n    reduction_factor: 1\n",
        "search.pruner.reduction_factor",
        15,
        "greater than or equal to 2",
    ),
    (
        "pruner-never-prunes",
        VALID + "  pruner: {name: asha, min_resource: 200}\n",
        "search.pruner.min_resource",
        13,
        "not below training.max_epochs (200)",
    ),
    (
        "pruner-never-prunes-in-a-grid-cell",
        VALID
        + "  pruner: {name: median, n_warmup_steps: 8}\ngrid:\n  training.max_epochs: [50, 8]\n",
        "search.pruner.n_warmup_steps",
        13,
        "not below training.max_epochs (8)",
    ),
    (
        "pruner-max-resource",
        VALID + "  pruner: {name: hyperband, max_resource: 500}\n",
        "search.pruner.max_resource",
        13,
        "more than training.max_epochs (200)",
    ),
    (
        "pruner-wilcoxon-on-loss",
        VALID + "  objective: val_loss\n  pruner: wilcoxon\n",
        "search.pruner.name",
        14,
        "per-image validation Dice or IoU",
    ),
    ("broken-yaml", VALID.replace("learners:\n", "learners: [\n"), "", 6, "not valid YAML"),
    (
        "unknown-learner-option",
        VALID.replace("  - name: vpt", "  - name: coop2\n    options: {initt: gaussian}"),
        "learners[1].options",
        8,
        "unknown option",
    ),
    (
        "newline-in-output-dir",
        VALID.replace("output_dir: out", 'output_dir: "out\\nx"'),
        "output_dir",
        2,
        "control character(s) '\\n'",
    ),
    (
        "max-failures-zero",
        VALID + "  max_failures: 0\n",
        "search.max_failures",
        13,
        "greater than or equal to 1",
    ),
    # prompt_depth against the learners' limit (1..11) and the layers the model runs
    (
        "depth-above-learners",
        VALID + "  space:\n    prompt_depth: {low: 1, high: 12}\n",
        "search.space.prompt_depth",
        14,
        "high=12 exceeds 11, the deepest prompt_depth a learner takes; use high <= 11",
    ),
    (
        "depth-below-one",
        VALID + "  space:\n    prompt_depth: {low: 0, high: 3}\n",
        "search.space.prompt_depth",
        14,
        "low=0 is below 1",
    ),
    (
        "depth-vpt-beyond-vision",
        VALID.replace(
            "  - name: vpt", "  - name: vpt\n    space: {prompt_depth: {low: 2, high: 11}}"
        ),
        "learners[1].space.prompt_depth",
        8,
        "high=11 exceeds the 10 layers CLIPSeg's vision prompts can reach (CIDAS/clipseg-rd64-refined",
    ),
    (
        "depth-fixed-too-deep",
        VALID.replace("  - name: vpt", "  - name: vpt\n    space: {prompt_depth: 12}"),
        "learners[1].space.prompt_depth",
        8,
        "12 exceeds",
    ),
    (
        "depth-choice-too-deep",
        VALID.replace(
            "  - name: vpt", "  - name: vpt\n    space: {prompt_depth: {choices: [1, 14]}}"
        ),
        "learners[1].space.prompt_depth",
        8,
        "choice 14 exceeds",
    ),
    (
        "depth-tiny-synthetic",
        VALID.replace(
            "  - name: clipseg", "  - {name: clipseg, pretrained: ./tiny, synthetic: true}"
        )
        + "  space:\n    prompt_depth: {low: 1, high: 6}\n",
        "search.space.prompt_depth",
        14,
        "high=6 exceeds the 4 layers CLIPSeg's text prompts can reach",
    ),
    # the paper's protocol settings (tests/test_protocol_settings.py: where each one acts)
    (
        "min-epochs-above-max",
        VALID + "training: {max_epochs: 5, min_epochs: 8}\n",
        "training.min_epochs",
        13,
        "min_epochs (8) must be at most max_epochs (5)",
    ),
    (
        "min-epochs-negative",
        VALID + "training:\n  min_epochs: -1\n",
        "training.min_epochs",
        14,
        "greater than or equal to 0",
    ),
    (
        "grid-max-below-min-epochs",
        VALID + "training: {min_epochs: 4}\ngrid:\n  training.max_epochs: [10, 3]\n",
        "grid.training.max_epochs[1]",
        15,
        "min_epochs (4) must be at most max_epochs (3)",
    ),
    (
        "scheduler-bad-monitor",
        VALID + "training:\n  scheduler: {monitor: val_iou}\n",
        "training.scheduler.monitor",
        14,
        "'val_dice' or 'val_loss'",
    ),
    (
        "scheduler-factor-one",
        VALID + "training:\n  scheduler:\n    factor: 1.0\n",
        "training.scheduler.factor",
        15,
        "less than 1",
    ),
    (
        "scheduler-negative-patience",
        VALID + "training:\n  scheduler: {patience: -2}\n",
        "training.scheduler.patience",
        14,
        "greater than or equal to 0",
    ),
    (
        "scheduler-unknown-key",
        VALID + "training:\n  scheduler: {patiense: 2}\n",
        "training.scheduler.patiense",
        14,
        "did you mean 'patience'",
    ),
    (
        "grid-over-a-block",
        VALID + "grid:\n  training.scheduler.factor: [0.1, 0.5]\n",
        "grid.training.scheduler.factor",
        14,
        "training.scheduler is a block of settings",
    ),
    (
        "early-stopping-bad-monitor",
        VALID + "training:\n  early_stopping: {monitor: train_loss}\n",
        "training.early_stopping.monitor",
        14,
        "'val_dice' or 'val_loss'",
    ),
    (
        "early-stopping-patience-zero",
        VALID + "training:\n  early_stopping: {patience: 0}\n",
        "training.early_stopping.patience",
        14,
        "greater than or equal to 1",
    ),
    (
        "early-stopping-patience-disagrees",
        VALID + "training:\n  patience: 5\n  early_stopping: {patience: 7}\n",
        "training.early_stopping.patience",
        15,
        "disagrees with training.patience (5), its short form",
    ),
    (
        "grid-patience-overridden",
        VALID + "training:\n  early_stopping: {patience: 7}\ngrid:\n  training.patience: [3, 5]\n",
        "grid.training.patience",
        16,
        "takes precedence",
    ),
    (
        "bad-objective",
        VALID + "  objective: train_loss\n",
        "search.objective",
        13,
        "'val_dice', 'val_iou' or 'val_loss'",
    ),
    (
        "augmentation-p-above-one",
        VALID + "data:\n  augmentation: {affine_p: 1.5}\n",
        "data.augmentation.affine_p",
        14,
        "less than or equal to 1",
    ),
    (
        "augmentation-p-negative",
        VALID + "data:\n  augmentation:\n    color_p: -0.1\n",
        "data.augmentation.color_p",
        15,
        "greater than or equal to 0",
    ),
    (
        "augmentation-bad-border",
        VALID + "data:\n  augmentation: {border_mode: reflect}\n",
        "data.augmentation.border_mode",
        14,
        "'constant' or 'replicate'",
    ),
    (
        "val-fraction-one",
        VALID + "data:\n  val_fraction: 1.0\n",
        "data.val_fraction",
        14,
        "less than 1",
    ),
    (
        "prompt-suffix-not-text",
        VALID + "model: {prompt_suffix: [.]}\n",
        "model.prompt_suffix",
        13,
        "valid string",
    ),
    (
        "prompt-suffix-control-character",
        VALID + 'model:\n  prompt_suffix: "\\n"\n',
        "model.prompt_suffix",
        14,
        "control character(s) '\\n'",
    ),
    # a learner restricted to some data sets (learners[i].datasets)
    (
        "learner-unknown-dataset",
        VALID.replace("  - name: vpt", "  - name: vpt\n    datasets: [kvasr]"),
        "learners[1].datasets[0]",
        8,
        "unknown data set 'kvasr'; did you mean 'kvasir'? the file's data sets: kvasir",
    ),
    (
        "learner-no-datasets",
        VALID.replace("  - name: vpt", "  - {name: vpt, datasets: []}"),
        "learners[1].datasets",
        7,
        "an empty list runs vpt on no data set",
    ),
    (
        "depth-tiny-synthetic-cris",
        VALID.replace(
            "  - name: clipseg", "  - {name: cris, pretrained: ./tiny, synthetic: true}"
        ).replace("  - name: vpt\n", "")
        + "  space:\n    prompt_depth: {low: 2, high: 5}\n",
        "search.space.prompt_depth",
        13,
        "high=5 exceeds the 4 layers CRIS's text prompts can reach",
    ),
    (
        "learner-twice-without-label",
        VALID.replace("  - name: vpt", "  - name: coop"),
        "learners[1]",
        7,
        "'coop' is listed twice (give one a `label:`)",
    ),
    (
        "learner-bad-label",
        VALID.replace("  - name: vpt", "  - name: vpt\n    label: 'v p t'"),
        "learners[1].label",
        8,
        "should match pattern",
    ),
    (
        "grid-space-unknown-param",
        VALID + "grid:\n  search.space.n_heads: [16, 20]\n",
        "grid.search.space.n_heads",
        14,
        "'n_heads' is not a parameter of any learner in this file",
    ),
    (
        "grid-space-learner-without-it",
        VALID.replace("  - name: vpt", "  - name: e2e")
        + "grid:\n  search.space.prompt_depth: [1, 2]\n",
        "grid.search.space.prompt_depth",
        14,
        "learner(s) e2e have no prompt_depth",
    ),
    (
        "grid-space-bad-value",
        VALID + "grid:\n  search.space.prompt_depth: [1, 2.5]\n",
        "grid.search.space.prompt_depth[1]",
        14,
        "whole number",
    ),
    # cluster.allow_journal_on_network_fs (tests/test_storage_safety.py: what it allows)
    (
        "allow-journal-not-a-bool",
        VALID + "cluster: {allow_journal_on_network_fs: maybe}\n",
        "cluster.allow_journal_on_network_fs",
        13,
        "valid boolean",
    ),
    (
        "allow-journal-misspelt",
        VALID + "cluster:\n  allow_journal_on_nfs: true\n",
        "cluster.allow_journal_on_nfs",
        14,
        "did you mean 'allow_journal_on_network_fs'",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_file_names_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    expected_where = f"{path}:{line}:" + (f" {key}:" if key else "")
    assert expected_where in message, message
    assert fragment in message, message


def test_depth_ranges_that_fit_are_accepted(tmp_path: Path) -> None:
    """The paper's [1, 11] stays valid everywhere (deeper than a model's layers is clamped, by
    design: VPT on CLIPSeg stops at 10); a changed range only has to fit the model."""
    tiny = VALID.replace(
        "  - name: clipseg", "  - {name: clipseg, pretrained: ./tiny, synthetic: true}"
    )
    for text in (
        VALID,
        VALID + "  space:\n    prompt_depth: {low: 1, high: 11}\n",
        VALID.replace(
            "  - name: vpt", "  - name: vpt\n    space: {prompt_depth: {low: 2, high: 10}}"
        ),
        tiny,
        tiny + "  space:\n    prompt_depth: {low: 2, high: 4}\n",
    ):
        load_experiment(_write(tmp_path, text))


def test_depth_findings_of_several_learners_are_each_reported_once(tmp_path: Path) -> None:
    text = VALID + "  space:\n    prompt_depth: {low: 2, high: 12}\n"
    with pytest.raises(ConfigError) as caught:
        load_experiment(_write(tmp_path, text))
    messages = [p.message for p in caught.value.problems]
    assert len(messages) == len(set(messages)) == 2, (
        messages
    )  # coop: the learners' 11; vpt: 10 layers
    assert any("use high <= 11" in m for m in messages) and any(
        "use high <= 10" in m for m in messages
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = VALID.replace("n_trials: 3", "n_trials: 0") + "lerners: []\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    assert len(caught.value.problems) == 2
    assert str(caught.value).startswith(f"{path}: 2 problems")


def test_cli_exits_2_with_one_message_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, VALID.replace("  - coop", "  - cop"))
    code = launch_cli.main([str(path), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    assert f"{path}:6: learners[0].name: unknown learner 'cop'" in captured.err
    assert captured.out == ""
    assert not (tmp_path / "out").exists()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_experiment(tmp_path / "absent.yaml")


def test_safe_load_only(tmp_path: Path) -> None:
    path = _write(tmp_path, "!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(path)


def test_yaml_1_1_exponent_floats_are_read_as_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID + "  space:\n    lr: {low: 1e-5, high: 1e-3}\n")
    experiment = load_experiment(path)
    from tunevlseg.config.grid import expand

    spaces = {study.learner: study.param_space for study in expand(experiment).studies}
    assert spaces["coop"]["lr"].low == pytest.approx(1e-5)
    assert spaces["vpt"]["lr"].high == pytest.approx(1e-3)
