"""Parameters a learner searches only when asked: LDVC's token and consensus settings on vlpt,
H-CLIP's block size on hclip. Named in a ``space:`` they join the study's search space; their
needs are checked with the file's line, and elsewhere they stay fixed options."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunevlseg.config.grid import expand
from tunevlseg.config.loader import ConfigError, load_experiment
from tunevlseg.config.spaces import ON_REQUEST, PAPER_SPACES, ParamSpace

HEAD = """\
name: t
output_dir: out
models: [clipseg]
datasets: [{name: d, root: d}]
"""


def _load(tmp_path: Path, text: str) -> list:  # type: ignore[type-arg]
    path = tmp_path / "e.yaml"
    path.write_text(HEAD + text)
    return expand(load_experiment(path)).studies


def test_asked_for_they_are_searched_with_the_given_range(tmp_path: Path) -> None:
    (vlpt, hclip) = _load(
        tmp_path,
        "learners:\n"
        "  - {name: vlpt, options: {consensus: true}, space: {consensus_top_m: {low: 4, high: 16},"
        " n_ctx_text: {}}}\n"
        "  - {name: hclip, space: {q: {choices: [64, 128]}}}\n",
    )
    assert vlpt.param_space["consensus_top_m"] == ParamSpace("int", low=4, high=16)
    assert vlpt.param_space["n_ctx_text"] == ON_REQUEST["vlpt"]["n_ctx_text"].space  # {}: as is
    assert "consensus_window" not in vlpt.param_space  # not asked for: the option's default
    assert hclip.param_space["q"] == ParamSpace("choice", choices=(64, 128))


def test_not_asked_for_they_are_not_searched(tmp_path: Path) -> None:
    (vlpt, hclip) = _load(tmp_path, "learners: [vlpt, hclip]\n")
    assert set(vlpt.param_space) == set(PAPER_SPACES["vlpt"])
    assert set(hclip.param_space) == set(PAPER_SPACES["hclip"])


def test_a_shared_space_entry_reaches_only_the_learners_that_have_it(tmp_path: Path) -> None:
    coop, hclip = _load(tmp_path, "learners: [coop, hclip]\nsearch: {space: {q: 128}}\n")
    assert "q" not in coop.param_space
    assert hclip.param_space["q"].is_fixed and hclip.param_space["q"].fixed == 128


@pytest.mark.parametrize(
    ("learners", "where"),
    [
        (
            "  - {name: vlpt, space: {consensus_top_m: {low: 4, high: 8}}}\n",
            "e.yaml:6: learners[0].space.consensus_top_m",
        ),
        (
            "  - vlpt\nsearch: {space: {consensus_window: {}}}\n",
            "e.yaml:7: search.space.consensus_window: vlpt:",
        ),
    ],
)
def test_a_consensus_setting_without_the_consensus_block_is_refused(
    tmp_path: Path, learners: str, where: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "learners:\n" + learners)
    message = str(caught.value)
    assert where in message and "needs options {consensus: true}" in message, message


def test_an_unknown_parameter_lists_the_ones_on_request_too(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"not a parameter of hclip \(valid: lr, weight_decay, q\)"
    ):
        _load(tmp_path, "learners:\n  - {name: hclip, space: {n_heads: 16}}\n")


def test_a_sampled_value_reaches_the_learner(tmp_path: Path) -> None:
    from tunevlseg.models.tiny import write_tiny_clipseg
    from tunevlseg.tuning.objective import build_model

    folder = write_tiny_clipseg(tmp_path / "clipseg-tiny")
    path = tmp_path / "e.yaml"
    path.write_text(
        f"name: t\noutput_dir: out\nmodels: [{{name: clipseg, pretrained: {folder}}}]\n"
        "datasets: [{name: d, root: d}]\n"
        "learners:\n  - {name: vlpt, options: {consensus: true}, space: {consensus_top_m: {}}}\n"
    )
    (spec,) = expand(load_experiment(path)).studies
    model = build_model(spec, {"prompt_depth": 1, "n_ctx_vision": 4, "consensus_top_m": 5})
    assert model.learner.consensus.top_m == 5
