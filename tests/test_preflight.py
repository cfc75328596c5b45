"""Preflight: deterministic problems are found on the login node, before any trial runs.

Each problem here would otherwise fail every trial of its studies, minutes into the task: an
annotation without the prompt the study reads, an annotation file that is not a list of entries,
a prompt depth deeper than a model folder's layers. Preflight names the file, the entry or the
setting, and the fix, in one line per problem (a few examples and a count, never thousands).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunevlseg.assets import preflight
from tunevlseg.config.grid import StudySpec, expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.data.synthetic import write_synthetic_medvlsm, write_synthetic_natural

SYNTHETIC_MODEL = "  - {name: clipseg, pretrained: ./tiny, synthetic: true}"


def _studies(
    folder: Path,
    *,
    datasets: str = "  - {name: synth, root: synth, synthetic: true}",
    models: str = SYNTHETIC_MODEL,
    learners: str = "[coop]",
    extra: str = "",
) -> list[StudySpec]:
    path = folder / "experiment.yaml"
    path.write_text(
        f"name: pf\noutput_dir: out\nmodels:\n{models}\nlearners: {learners}\n"
        f"datasets:\n{datasets}\n{extra}"
    )
    return expand(load_experiment(path)).studies


@pytest.fixture
def kvasir(tmp_path: Path) -> Path:
    """A MedVLSM set: 4 / 3 / 2 entries with prompts p0 = "", p1 = "polyp", p2 = [two phrasings]."""
    return write_synthetic_medvlsm(tmp_path / "kvasir", n_train=4, n_val=3, n_test=2, image_size=32)


def _edit(root: Path, split: str, edit) -> Path:  # type: ignore[no-untyped-def]
    path = root / "anns" / f"{split}.json"
    entries = json.loads(path.read_text())
    edit(entries)
    path.write_text(json.dumps(entries))
    return path


def _kvasir(key: str | None = None) -> str:
    prompt_key = f", prompt_key: {key}" if key else ""
    return f"  - {{name: kvasir, root: kvasir{prompt_key}}}"


# ------------------------------------------------------------------------ prompt_key


@pytest.mark.parametrize("key", ["p0", "p1", "p2"])  # "" and a list of phrasings are prompts too
def test_a_clean_set_passes_with_every_key_it_has(tmp_path: Path, kvasir: Path, key: str) -> None:
    assert preflight(_studies(tmp_path, datasets=_kvasir(key))) == []


def test_one_entry_without_the_prompt_is_named_with_the_fix(tmp_path: Path, kvasir: Path) -> None:
    def drop(entries: list[dict]) -> None:
        del entries[1]["prompts"]["p2"]

    val = _edit(kvasir, "val", drop)
    [problem] = preflight(_studies(tmp_path, datasets=_kvasir("p2")))
    assert problem == (
        f"data set 'kvasir': {val} entry 1 (img_name 'val_0001.jpg') has no prompt 'p2' "
        "(its prompts: p0, p1); set data.prompt_key or the data set's prompt_key to one that "
        "every entry has: p0, p1"
    )


def test_many_entries_without_the_prompt_give_a_count_and_a_few_examples_per_split(
    tmp_path: Path,
) -> None:
    write_synthetic_medvlsm(tmp_path / "kvasir", n_train=40, n_val=3, n_test=2, image_size=32)
    problems = preflight(_studies(tmp_path, datasets=_kvasir("p7")))
    assert len(problems) == 3  # one line per split
    train = problems[0]
    assert (
        f"{tmp_path / 'kvasir' / 'anns' / 'train.json'}: 40 of 40 entries have no prompt 'p7'"
        in train
    )
    assert train.count("img_name") == 3  # three examples, not forty
    assert "entry 0 (img_name 'train_0000.jpg'; its prompts: p0, p1, p2)" in train
    assert train.endswith(
        "set data.prompt_key or the data set's prompt_key to one that every entry has: p0, p1, p2"
    )
    assert "val.json: 3 of 3 entries" in problems[1] and "test.json: 2 of 2 entries" in problems[2]


def test_the_data_blocks_prompt_key_is_checked_too(tmp_path: Path, kvasir: Path) -> None:
    problems = preflight(_studies(tmp_path, datasets=_kvasir(), extra="data: {prompt_key: p3}\n"))
    assert len(problems) == 3 and all("no prompt 'p3'" in p for p in problems)


def test_every_prompt_key_of_a_grid_is_checked(tmp_path: Path, kvasir: Path) -> None:
    problems = preflight(
        _studies(tmp_path, datasets=_kvasir(), extra="grid: {data.prompt_key: [p1, p4]}\n")
    )
    assert len(problems) == 3 and all("no prompt 'p4'" in p for p in problems)


def test_annotation_files_that_are_not_lists_of_entries(tmp_path: Path, kvasir: Path) -> None:
    (kvasir / "anns" / "val.json").write_text("{not json")
    (kvasir / "anns" / "test.json").write_text(json.dumps({"entries": []}))
    problems = preflight(_studies(tmp_path, datasets=_kvasir("p1")))
    assert len(problems) == 2
    assert problems[0].startswith(
        f"data set 'kvasir': {kvasir / 'anns' / 'val.json'}: not valid JSON"
    )
    assert problems[1] == (
        f"data set 'kvasir': {kvasir / 'anns' / 'test.json'}: expected a JSON list of entries, "
        "found an object"
    )


def test_an_empty_split_is_reported(tmp_path: Path, kvasir: Path) -> None:
    (kvasir / "anns" / "test.json").write_text("[]")
    [problem] = preflight(_studies(tmp_path, datasets=_kvasir("p1")))
    assert problem == f"data set 'kvasir': {kvasir / 'anns' / 'test.json'}: the split is empty"


def test_malformed_entries_are_counted_and_point_to_the_data_check(
    tmp_path: Path, kvasir: Path
) -> None:
    def damage(entries: list[dict]) -> None:
        del entries[0]["mask_name"]
        entries[2]["img_name"] = "../../etc/passwd"
        entries[3] = "not an entry"

    train = _edit(kvasir, "train", damage)
    [problem] = preflight(_studies(tmp_path, datasets=_kvasir("p1")))
    assert problem.startswith(
        f"data set 'kvasir': {train}: 3 of 4 entries are malformed, e.g. entry 0: missing key 'mask_name'"
    )
    assert "entry 2 img_name: path '../../etc/passwd' escapes the data set root" in problem
    assert "entry 3: expected an object, got str" in problem
    assert problem.endswith(f"`tvls-data check {kvasir}` lists every problem")


def test_natural_sets_need_no_prompt_key(tmp_path: Path) -> None:
    write_synthetic_natural(tmp_path / "voc", n_train=2, n_val=1, n_test=1, image_size=32)
    datasets = "  - {name: voc, root: voc, format: natural, prompt_key: p9}"
    assert preflight(_studies(tmp_path, datasets=datasets)) == []


# ------------------------------------------------------------------------ prompt_depth

TINY_CLIPSEG = {
    "model_type": "clipseg",
    "extract_layers": [1, 2, 3],
    "text_config": {"num_hidden_layers": 4},
    "vision_config": {"num_hidden_layers": 4},
}
REAL_CLIPSEG = {  # what CIDAS/clipseg-rd64-refined says
    "model_type": "clipseg",
    "extract_layers": [3, 6, 9],
    "text_config": {"num_hidden_layers": 12},
    "vision_config": {"num_hidden_layers": 12},
}


def _model_folder(tmp_path: Path, name: str, config: dict | str | None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / "config.json").write_text(text)
    return folder


def _depth(high: int, low: int = 1) -> str:
    return f"search: {{space: {{prompt_depth: {{low: {low}, high: {high}}}}}}}\n"


def test_a_depth_beyond_a_model_folders_layers_is_found_per_encoder(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, "tiny", TINY_CLIPSEG)
    models = "  - {name: clipseg, pretrained: ./tiny}"
    problems = preflight(_studies(tmp_path, models=models, learners="[coop, vpt]", extra=_depth(6)))
    assert problems == [
        (
            f"clipseg-coop: search.space.prompt_depth or learners[coop].space.prompt_depth: high=6 "
            f"exceeds the 4 layers CLIPSeg's text prompts can reach ({folder / 'config.json'}); "
            "use high <= 4"
        ),
        (
            f"clipseg-vpt: search.space.prompt_depth or learners[vpt].space.prompt_depth: high=6 "
            f"exceeds the 4 layers CLIPSeg's vision prompts can reach ({folder / 'config.json'}); "
            "use high <= 4"
        ),
    ]
    fits = _studies(tmp_path, models=models, learners="[coop, vpt]", extra=_depth(4, low=2))
    assert preflight(fits) == []


def test_the_papers_range_is_accepted_on_any_folder(tmp_path: Path) -> None:
    """[1, 11] is Table 2's range: deeper than a model's layers is clamped by design."""
    _model_folder(tmp_path, "tiny", TINY_CLIPSEG)
    models = "  - {name: clipseg, pretrained: ./tiny}"
    assert preflight(_studies(tmp_path, models=models, learners="[coop, vpt, maple]")) == []


def test_vpt_on_a_real_size_clipseg_folder_stops_at_the_last_extracted_layer(
    tmp_path: Path,
) -> None:
    _model_folder(tmp_path, "real", REAL_CLIPSEG)
    models = "  - {name: clipseg, pretrained: ./real}"
    [problem] = preflight(
        _studies(tmp_path, models=models, learners="[coop, vpt]", extra=_depth(11, low=2))
    )
    assert (
        problem.startswith("clipseg-vpt:")
        and "high=11 exceeds the 10 layers CLIPSeg's vision" in problem
    )


def test_a_cris_folder_is_read_too(tmp_path: Path) -> None:
    _model_folder(tmp_path, "cris", {"model_type": "cris", "text_layers": 4})
    models = "  - {name: cris, pretrained: ./cris}"
    [problem] = preflight(_studies(tmp_path, models=models, extra=_depth(5, low=2)))
    assert "high=5 exceeds the 4 layers CRIS's text prompts can reach" in problem


@pytest.mark.parametrize(
    ("config", "fragment"),
    [(None, "has no config.json"), ("{oops", "config.json is not valid JSON")],
)
def test_a_model_folder_without_a_readable_config(
    tmp_path: Path, config: str | None, fragment: str
) -> None:
    folder = _model_folder(tmp_path, "broken", config)
    models = "  - {name: clipseg, pretrained: ./broken}"
    [problem] = preflight(_studies(tmp_path, models=models))
    assert problem.startswith(f"model 'clipseg': {folder}") and fragment in problem


# ------------------------------------------------------------------------ layer facts


def test_the_depth_limit_is_the_learners_and_the_papers() -> None:
    from tunevlseg.catalog import MAX_PROMPT_DEPTH
    from tunevlseg.config.spaces import PAPER_SPACES
    from tunevlseg.learners.base import MAX_PROMPT_DEPTH as LEARNERS_MAX

    assert MAX_PROMPT_DEPTH == LEARNERS_MAX == PAPER_SPACES["coop"]["prompt_depth"].high


def test_catalogued_layer_counts_match_the_model_configs() -> None:
    from tunevlseg.catalog import MODELS, PromptLayers
    from tunevlseg.models.cris.config import real_size_cris_config
    from tunevlseg.models.cris.tiny import tiny_cris_config
    from tunevlseg.models.tiny import real_size_clipseg_config, tiny_clipseg_config

    clipseg, cris = MODELS["clipseg"], MODELS["cris"]
    assert clipseg.layers_from_config(tiny_clipseg_config().to_dict()) == clipseg.tiny_layers
    assert clipseg.tiny_layers == PromptLayers(text=4, vision=4)
    real = clipseg.layers_from_config(real_size_clipseg_config().to_dict())
    assert real == clipseg.known_layers_of("CIDAS/clipseg-rd64-refined") == PromptLayers(12, 10)
    assert cris.layers_from_config(tiny_cris_config().to_dict()) == cris.tiny_layers
    assert cris.layers_from_config(real_size_cris_config().to_dict()) == cris.known_layers_of(
        cris.default_pretrained
    )


@pytest.mark.parametrize("model", ["clipseg", "cris"])
def test_the_layer_counts_are_where_the_prompted_models_clamp(tmp_path: Path, model: str) -> None:
    """Read from the folder without torch, they equal the depth the built model really prompts."""
    from tunevlseg.catalog import MODELS, load_object

    info = MODELS[model]
    folder = load_object(info.tiny_writer)(tmp_path / model, image_size=64)
    layers = info.layers_from_config(json.loads((folder / "config.json").read_text()))
    build = load_object(info.builder)
    text = build(str(folder), "coop", {"prompt_depth": 11}).learner
    assert text.text_depth == layers.text
    if model == "clipseg":
        vision = build(str(folder), "vpt", {"prompt_depth": 11}).learner
        assert vision.vision_depth == layers.vision
