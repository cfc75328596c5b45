"""The fidelity options in the experiment file: errors at file:line, studies, identity, counts.

Learner options (``proj_norm``, ``normalize_image_features``, VPT's ``init``/``init_std``) and the
model settings ``model.upsampler_padding`` and ``model.upsampler_input`` (CRIS only) must be
checked when the file is read, reach the model builder, count in ``tvls-train --describe`` and
change a trial's identity digest; ``experiments/paper.yaml`` sets the authors' values.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunevlseg.config.grid import StudySpec, expand
from tunevlseg.config.loader import ConfigError, load_experiment
from tunevlseg.train.run_folder import identity_digest
from tunevlseg.tuning.describe import describe_studies
from tunevlseg.tuning.identity import trial_identity
from tunevlseg.tuning.objective import model_settings_kwargs

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

BASE = """\
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


def _with_learner(entry: str) -> str:
    return BASE.replace("  - name: vpt", entry)


CRIS_ONLY = BASE.replace("name: clipseg", "name: cris").replace("  - name: vpt\n", "")
BOTH_MODELS = BASE.replace("  - name: clipseg", "  - name: clipseg\n  - name: cris").replace(
    "  - name: vpt\n", ""
)

# (id, file text, key path, line, a fragment of the message)
BAD_FILES = [
    (
        "padding-unknown",
        BASE + "model:\n  upsampler_padding: reflect\n",
        "model.upsampler_padding",
        14,
        "'zeros' or 'replicate'",
    ),
    (
        "input-unknown",
        CRIS_ONLY + "model:\n  upsampler_input: neck\n",
        "model.upsampler_input",
        13,
        "'projector' or 'decoder'",
    ),
    (
        "input-on-clipseg",
        BASE + "model:\n  upsampler_input: decoder\n",
        "model.upsampler_input",
        14,
        "applies to cris only, and this file's models are clipseg",
    ),
    (
        "input-grid-beside-clipseg",
        BOTH_MODELS + "grid:\n  model.upsampler_input: [projector, decoder]\n",
        "grid.model.upsampler_input",
        14,
        "every cell would repeat the studies of clipseg",
    ),
    (
        "proj-norm-on-vpt",
        _with_learner("  - name: vpt\n    options: {proj_norm: true}"),
        "learners[1].options",
        8,
        "option proj_norm belongs to cocoop, maple, not vpt",
    ),
    (
        "proj-norm-not-a-bool",
        _with_learner("  - name: maple\n    options: {proj_norm: 'true'}"),
        "learners[1].options",
        8,
        "proj_norm must be true or false, got 'true'",
    ),
    (
        "normalize-on-maple",
        _with_learner("  - name: maple\n    options: {normalize_image_features: false}"),
        "learners[1].options",
        8,
        "belongs to cocoop, not maple",
    ),
    (
        "vpt-init-unknown",
        _with_learner("  - name: vpt\n    options: {init: normal}"),
        "learners[1].options",
        8,
        "init must be uniform | gaussian, got 'normal'",
    ),
    (
        "vpt-init-text-value",
        _with_learner("  - name: vpt\n    options: {init: layerwise}"),
        "learners[1].options",
        8,
        "init must be uniform | gaussian",
    ),
    (
        "coop-init-vpt-value",
        _with_learner("  - name: vpt\n  - {name: coop, label: c2, options: {init: uniform}}"),
        "learners[2].options",
        8,
        "init must be embedding | gaussian | layerwise",
    ),
    (
        "init-std-without-gaussian",
        _with_learner("  - name: vpt\n    options: {init_std: 0.05}"),
        "learners[1].options",
        8,
        "init_std applies to `init: gaussian` only",
    ),
    (
        "init-std-negative",
        _with_learner("  - name: vpt\n    options: {init: gaussian, init_std: -1}"),
        "learners[1].options",
        8,
        "init_std must be a positive number",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_settings_name_file_line_and_key(
    tmp_path: Path, text: str, key: str, line: int, fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert f"{path}:{line}: {key}:" in message, message
    assert fragment in message, message


MIXED = """\
name: mixed
output_dir: out
models:
  - name: clipseg
  - name: cris
learners:
  - {name: cocoop, options: {proj_norm: true, normalize_image_features: false}}
datasets:
  - {name: kvasir, root: data/kvasir}
search: {n_trials: 2}
model: {upsampler_padding: replicate, upsampler_input: decoder}
"""


def _studies(tmp_path: Path, text: str) -> list[StudySpec]:
    return expand(load_experiment(_write(tmp_path, text))).studies


def test_upsampler_input_reaches_cris_studies_only(tmp_path: Path) -> None:
    clipseg, cris = _studies(tmp_path, MIXED)
    assert (clipseg.model.name, cris.model.name) == ("clipseg", "cris")
    assert clipseg.model_settings.upsampler_input == "projector"  # no choice: the default kept
    assert cris.model_settings.upsampler_input == "decoder"
    for spec in (clipseg, cris):
        assert spec.model_settings.upsampler_padding == "replicate"
        assert spec.learner_options == {"proj_norm": True, "normalize_image_features": False}
    assert "upsampler_input" not in model_settings_kwargs(clipseg)
    assert model_settings_kwargs(cris)["upsampler_input"] == "decoder"
    assert model_settings_kwargs(clipseg)["upsampler_padding"] == "replicate"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("upsampler_padding: replicate", "upsampler_padding: zeros"),
        ("upsampler_input: decoder", "upsampler_input: projector"),
        ("proj_norm: true", "proj_norm: false"),
        ("normalize_image_features: false", "normalize_image_features: true"),
    ],
)
def test_each_setting_changes_the_cris_trial_identity(
    tmp_path: Path, before: str, after: str
) -> None:
    def digest(text: str) -> str:
        cris = _studies(tmp_path, text)[1]
        return identity_digest(trial_identity(cris, {"lr": 1e-3}, lineage=0, seed=1))

    assert digest(MIXED) != digest(MIXED.replace(before, after))


def test_vpt_init_options_change_the_identity(tmp_path: Path) -> None:
    def digest(options: str) -> str:
        (spec,) = _studies(tmp_path, _with_learner(f"  - {{name: vpt, options: {options}}}"))[1:]
        return identity_digest(trial_identity(spec, {}, lineage=0, seed=1))

    digests = {digest("{}"), digest("{init: gaussian}"), digest("{init: gaussian, init_std: 0.05}")}
    assert len(digests) == 3


TINY = """\
name: tiny
output_dir: out
models:
  - {name: cris, pretrained: ./tiny-cris, synthetic: true}
learners: [coop]
datasets:
  - {name: kvasir, root: data/kvasir}
search: {n_trials: 2, space: {prompt_depth: 1}}
"""


def test_describe_counts_the_decoder_input_upsampler(tmp_path: Path) -> None:
    from tunevlseg.assets import prepare_synthetic
    from tunevlseg.models.cris.config import CRISConfig

    (projector,) = _studies(tmp_path, TINY)
    (decoder,) = _studies(tmp_path, TINY + "model: {upsampler_input: decoder}\n")
    prepare_synthetic([projector])
    (projector_row,) = describe_studies([projector])
    (decoder_row,) = describe_studies([decoder])
    assert decoder_row.settings["upsampler_input"] == "decoder"
    assert "upsampler_input" not in projector_row.settings
    config = CRISConfig.load(tmp_path / "tiny-cris" / "config.json")
    extra = config.vis_dim * 64 + 64 * 25 - config.projector_dim * 25
    assert decoder_row.trainable == projector_row.trainable + extra


def test_paper_yaml_sets_the_authors_values() -> None:
    studies = expand(load_experiment(EXPERIMENTS / "paper.yaml")).studies
    assert len(studies) == 84  # the count the README and tests/test_config_grid.py state
    by_learner: dict[str, dict[str, object]] = {}
    for spec in studies:
        assert spec.model_settings.upsampler_padding == "replicate"
        assert spec.training.dice_smooth == 1e-5  # MONAI DiceCELoss's smoothing
        expected_input = "decoder" if spec.model.name == "cris" else "projector"
        assert spec.model_settings.upsampler_input == expected_input
        by_learner.setdefault(spec.learner, spec.learner_options)
    assert by_learner["cocoop"] == {"proj_norm": True, "normalize_image_features": False}
    assert by_learner["maple"] == {"proj_norm": True}
    assert by_learner["vpt"] == {"init": "gaussian"}
    assert by_learner["coop"] == {}
