"""Grid expansion of the shipped experiment files and of grid axes; the paper's search space."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment, parse_experiment
from tunevlseg.config.spaces import PAPER_SPACES, ParamSpace, resolve_space

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# file -> (studies, trials)
SHIPPED = {
    "demo.yaml": (6, 12),
    "medical.yaml": (64, 1280),
    "natural.yaml": (16, 320),
    "paper.yaml": (84, 1680),
    "table4-maple-init.yaml": (20, 400),
    "ablation-upsampler.yaml": (160, 3200),
    "fig5-prompt-depth.yaml": (480, 9600),
    "unseen-voc.yaml": (11, 220),
}
"""Also the counts the README states for each file."""


def test_every_shipped_file_is_counted() -> None:
    assert {p.name for p in EXPERIMENTS.glob("*.yaml")} == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_file_expands(name: str) -> None:
    expansion = expand(load_experiment(EXPERIMENTS / name))
    studies, trials = SHIPPED[name]
    assert len(expansion.studies) == studies
    assert expansion.n_trials == trials
    names = [s.name for s in expansion.studies]
    assert len(set(names)) == len(names)


def test_paper_combinations_follow_the_viability_rule() -> None:
    expansion = expand(load_experiment(EXPERIMENTS / "paper.yaml"))
    combos = sorted({s.combination for s in expansion.studies})
    assert combos == sorted(
        [
            f"clipseg-{x}"
            for x in ("coop", "cocoop", "vpt", "maple", "shared_separate", "shared_attention")
        ]
        + ["cris-coop", "cris-cocoop", "clipseg-decoder", "cris-decoder"]
    )
    # Table 3's E2E rows exist only for the natural sets.
    decoder = {s.dataset.name for s in expansion.studies if s.learner == "decoder"}
    assert decoder == {"cityscapes", "pascal-voc"}
    skipped = {(s.model, s.learner) for s in expansion.skipped}
    assert skipped == {("cris", x) for x in ("vpt", "maple", "shared_separate", "shared_attention")}
    categories = {s.dataset.name: s.dataset.category for s in expansion.studies}
    assert list(categories.values()).count("Radiology") == 3
    assert list(categories.values()).count("Open Domain") == 2


GRID_FILE = """\
name: abl
output_dir: out
models: [clipseg]
learners: [coop, vpt]
datasets:
  - {name: kvasir, root: data/kvasir, prompt_key: p3}
grid:
  model.use_upsampler: [true, false]
  data.prompt_key: [p1, p2]
search: {n_trials: 4}
"""


def test_grid_axes_multiply_into_named_studies(tmp_path: Path) -> None:
    experiment = parse_experiment(GRID_FILE, tmp_path / "abl.yaml")
    studies = expand(experiment).studies
    assert len(studies) == 2 * 2 * 2
    by_name = {s.name: s for s in studies}
    study = by_name["abl/clipseg-vpt/kvasir/use_upsampler=false,prompt_key=p2"]
    assert study.model_settings.use_upsampler is False
    assert study.dataset.prompt_key == "p2"  # the grid wins over the data set's own key
    assert study.dataset.root == (tmp_path / "data/kvasir").resolve()
    assert study.grid == {"model.use_upsampler": False, "data.prompt_key": "p2"}


def test_a_learner_restricted_to_some_data_sets_skips_the_others(tmp_path: Path) -> None:
    text = (
        GRID_FILE.replace(
            "learners: [coop, vpt]", "learners: [coop, {name: decoder, datasets: [voc]}]"
        )
        .replace(
            "  - {name: kvasir, root: data/kvasir, prompt_key: p3}\n",
            "  - {name: kvasir, root: data/kvasir, prompt_key: p3}\n"
            "  - {name: voc, root: data/voc, format: natural}\n",
        )
        .replace("grid:\n  model.use_upsampler: [true, false]\n  data.prompt_key: [p1, p2]\n", "")
    )
    expansion = expand(parse_experiment(text, tmp_path / "r.yaml"))
    assert [s.name for s in expansion.studies] == [
        "abl/clipseg-coop/kvasir",
        "abl/clipseg-coop/voc",
        "abl/clipseg-decoder/voc",
    ]
    assert expansion.skipped == []
    decoder = expansion.studies[-1]
    assert decoder.space == {k: v.to_dict() for k, v in PAPER_SPACES["decoder"].items()}
    assert decoder.n_trials == 4 and decoder.model_settings.use_upsampler


def test_study_names_are_deterministic(tmp_path: Path) -> None:
    first = [s.name for s in expand(parse_experiment(GRID_FILE, tmp_path / "a.yaml")).studies]
    second = [s.name for s in expand(parse_experiment(GRID_FILE, tmp_path / "a.yaml")).studies]
    assert first == second


def test_study_spec_round_trips_through_user_attrs(tmp_path: Path) -> None:
    from tunevlseg.config.grid import StudySpec

    for study in expand(parse_experiment(GRID_FILE, tmp_path / "abl.yaml")).studies:
        again = StudySpec.model_validate(study.to_attrs())
        assert again == study
        assert again.param_space == study.param_space


def test_zeroshot_is_one_untrained_trial_without_upsampler(tmp_path: Path) -> None:
    text = GRID_FILE.replace("learners: [coop, vpt]", "learners: [zeroshot]").replace(
        "  model.use_upsampler: [true, false]\n", ""
    )
    studies = expand(parse_experiment(text, tmp_path / "z.yaml")).studies
    assert all(s.n_trials == 1 and not s.model_settings.use_upsampler for s in studies)
    assert all(s.space == {} for s in studies)


def test_paper_table_2_space() -> None:
    coop = PAPER_SPACES["coop"]
    assert coop["lr"] == ParamSpace("float", low=1e-5, high=5e-3, log=True)
    assert coop["weight_decay"] == ParamSpace("float", low=1e-5, high=1e-2, log=True)
    assert coop["prompt_depth"] == ParamSpace("int", low=1, high=11)
    for learner in ("cocoop", "maple"):
        assert PAPER_SPACES[learner]["intermediate_dim"].choices == (32, 64, 96, 128)
        assert PAPER_SPACES[learner]["use_lora"].choices == (True, False)
    attention = PAPER_SPACES["shared_attention"]
    assert attention["n_heads"].choices == (16, 20, 32)
    assert (attention["dropout"].low, attention["dropout"].high) == (0.1, 0.55)
    assert attention["ff_dim"].choices == (1280, 1420)
    assert attention["norm_first"].choices == (True, False)
    assert PAPER_SPACES["shared_separate"]["shared_dim"].choices == (32, 64)


def test_overrides_keep_the_kind_and_can_fix() -> None:
    space = resolve_space(
        "shared_attention", {"prompt_depth": {"low": 2, "high": 4}}, {"n_heads": 20}
    )
    assert space["prompt_depth"] == ParamSpace("int", low=2, high=4)
    assert space["n_heads"].is_fixed and space["n_heads"].fixed == 20
    assert space["lr"] == PAPER_SPACES["shared_attention"]["lr"]


def test_fixed_and_sampled_parameters_reach_the_trial() -> None:
    import optuna

    space = resolve_space("cocoop", {"use_lora": True, "intermediate_dim": {"choices": [32]}})
    study = optuna.create_study()
    trial = study.ask()
    values = {name: p.suggest(trial, name) for name, p in space.items()}
    assert values["use_lora"] is True
    assert values["intermediate_dim"] == 32
    assert 1 <= values["prompt_depth"] <= 11
    assert 1e-5 <= values["lr"] <= 5e-3
    assert trial.user_attrs["fixed.use_lora"] is True


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_dry_run_plans_each_shipped_file(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What a user sees first: the plan of each file, printed even though its data is absent."""
    import json

    from tunevlseg.cli import launch as launch_cli

    launch_cli.main([str(EXPERIMENTS / name), "--dry-run", "--local", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (report["studies"].__len__(), report["trials"]) == SHIPPED[name]
    readme = (EXPERIMENTS.parent / "README.md").read_text()
    studies, trials = SHIPPED[name]
    (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
    assert row.endswith(f"| {studies} studies, {trials:,} trials |"), row


def test_labelled_entries_of_one_learner_are_separate_studies(tmp_path: Path) -> None:
    text = GRID_FILE.replace(
        "learners: [coop, vpt]",
        "learners: [{name: maple, label: maple-text}, {name: maple, label: maple-gaussian, options: {init: gaussian}}]",
    ).replace("grid:\n  model.use_upsampler: [true, false]\n  data.prompt_key: [p1, p2]\n", "")
    studies = expand(parse_experiment(text, tmp_path / "l.yaml")).studies
    assert [s.name for s in studies] == [
        "abl/clipseg-maple-text/kvasir",
        "abl/clipseg-maple-gaussian/kvasir",
    ]
    assert [s.learner for s in studies] == ["maple", "maple"]
    assert [s.learner_options for s in studies] == [{}, {"init": "gaussian"}]
    assert studies[1].combination == "clipseg-maple-gaussian"


def test_a_search_space_axis_fixes_the_parameter_in_each_cell(tmp_path: Path) -> None:
    text = GRID_FILE.replace(
        "  model.use_upsampler: [true, false]\n  data.prompt_key: [p1, p2]\n",
        "  search.space.prompt_depth: [1, 3]\n",
    )
    studies = expand(parse_experiment(text, tmp_path / "d.yaml")).studies
    assert [s.name for s in studies] == [
        "abl/clipseg-coop/kvasir/prompt_depth=1",
        "abl/clipseg-coop/kvasir/prompt_depth=3",
        "abl/clipseg-vpt/kvasir/prompt_depth=1",
        "abl/clipseg-vpt/kvasir/prompt_depth=3",
    ]
    assert [s.param_space["prompt_depth"].fixed for s in studies] == [1, 3, 1, 3]
    assert studies[1].param_space["lr"].fixed is None  # the rest is still searched
    assert studies[1].grid == {"search.space.prompt_depth": 3}
