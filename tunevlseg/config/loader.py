"""Read an experiment file: YAML (safe-load semantics) -> validated :class:`Experiment`.

Every problem is reported with the file, the line and the dotted key path, all of them in one
message, so a user fixes a file in one pass. PyYAML's safe loader silently keeps the last of two
equal keys; here that is an error too.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunevlseg.config.checks import check_experiment
from tunevlseg.config.schema import ExperimentSpec

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an experiment file."""

    loc: Loc
    message: str
    line: int | None = None

    @property
    def key(self) -> str:
        return format_loc(self.loc)


class ConfigError(Exception):
    """An experiment file that cannot be used; ``str()`` is the message for the user."""

    def __init__(self, path: Path | str, problems: Sequence[Problem]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = f"{self.path}: {count} problem{'s' if count > 1 else ''} in the experiment file"
        lines = [head]
        for problem in self.problems:
            where = f"{self.path}:{problem.line}" if problem.line else str(self.path)
            key = f" {problem.key}:" if problem.loc else ""
            lines.append(f"  {where}:{key} {problem.message}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file and where it came from."""

    spec: ExperimentSpec
    path: Path
    text_sha256: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, path: Path | str) -> Path:
        """A path from the file, relative to the file's folder unless absolute."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.spec.output_dir)


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _LineIndex:
    """Maps key paths of a YAML document to line numbers, from PyYAML's composed node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, loc: Loc) -> int | None:
        node = self.root
        if node is None:
            return None
        found = node.start_mark.line + 1
        for part in loc:
            child = self._child(node, part)
            if child is None:
                break
            key_node, node = child
            # For a mapping entry, the key's line is where a user looks.
            found = (key_node or node).start_mark.line + 1
        return found

    @staticmethod
    def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    return key_node, value_node
        if (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            return None, node.value[part]
        return None


def _duplicate_keys(node: yaml.Node | None, loc: Loc = ()) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    Problem((*loc, key), f"key repeated (first at line {seen[key]})", line)
                )
            seen.setdefault(key, line)
            problems += _duplicate_keys(value_node, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, (*loc, index))
    return problems


def _pydantic_problems(error: ValidationError, data: Any) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = tuple(
            p for p in item["loc"] if not isinstance(p, str) or not p.startswith("function-")
        )
        loc, model = _file_loc(loc)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = _unknown_key_message(loc, model)
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "union_tag_invalid":
            context = item.get("ctx", {})
            message = (
                f"unknown {context.get('discriminator', 'name').strip(chr(39))} "
                f"{context.get('tag')!r}; expected one of {context.get('expected_tags')}"
            )
        problems.append(Problem(loc, message))
    return problems


def _file_loc(loc: Loc) -> tuple[Loc, type[BaseModel] | None]:
    """The error's key path as written in the file, and the block model that holds its last key.

    pydantic puts the chosen member's tag into the path of an error inside a discriminated
    union (``search.pruner.asha.reduction_factor``); the file has no such key, so the tag is
    dropped, and the member it names is the block whose keys an unknown key is checked against.
    """
    kept: list[str | int] = []
    model: type[BaseModel] | None = ExperimentSpec
    parts = list(loc)
    position = 0
    while position < len(parts):
        part = parts[position]
        kept.append(part)
        position += 1
        if position == len(parts) or model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        members = _models_of(field.annotation) if field else []
        tagged = {_tag_of(m): m for m in members}
        tag = parts[position]
        if isinstance(tag, str) and tag in tagged and len(members) > 1:
            model = tagged[tag]
            position += 1  # the tag: not a key of the file
        else:
            model = members[0] if members else None
    return tuple(kept), model


def _tag_of(model: type[BaseModel]) -> str | None:
    """The ``name`` literal that tags a member of a discriminated union, if any."""
    field = model.model_fields.get("name")
    values: tuple[object, ...] = getattr(field.annotation, "__args__", ()) if field else ()
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def _unknown_key_message(loc: Loc, model: type[BaseModel] | None) -> str:
    """'unknown key', the close matches, and every valid key with its default."""
    key = str(loc[-1])
    if model is None:
        return f"unknown key {key!r}"
    valid = list(model.model_fields)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(
        name if field.is_required() else f"{name}={_default_text(field)}"
        for name, field in model.model_fields.items()
    )
    return f"unknown key {key!r}{hint}; valid keys: {listing}"


def _default_text(field: Any) -> str:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return "{...}"
    return repr(default) if not isinstance(default, (dict, list)) or default else str(default)


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    """The block models an annotation may hold (several for a union), in order."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found += _models_of(arg)
    return found


def parse_experiment(text: str, path: Path | str = "<experiment>") -> Experiment:
    """Validate experiment text; relative paths are later resolved against ``path``'s folder.

    Raises:
        ConfigError: listing every problem with its line.
    """
    path = Path(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(path, [Problem((), f"not valid YAML: {problem}", line)]) from None
    index = _LineIndex(root)
    problems = _duplicate_keys(root)
    if not isinstance(data, dict):
        found = "an empty file" if data is None else type(data).__name__
        problems.append(Problem((), f"expected a mapping of settings, found {found}", 1))
        raise ConfigError(path, problems)
    spec = None
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as error:
        problems += _pydantic_problems(error, data)
    if spec is not None:
        findings = check_experiment(spec, path.resolve().parent)
        problems += [Problem(loc, message) for loc, message in findings]
    if problems:
        located = [Problem(p.loc, p.message, p.line or index.line(p.loc)) for p in problems]
        located.sort(key=lambda p: p.line or 0)
        raise ConfigError(path, located)
    assert spec is not None
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Experiment(spec=spec, path=path.resolve(), text_sha256=digest)


def located(experiment: Experiment, loc: Loc, message: str) -> str:
    """A problem found after loading (e.g. by the launch's preflight, against the data on
    disk), in the loader's own ``file:line: key: message`` form."""
    try:
        root = yaml.compose(experiment.path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        line = _LineIndex(root).line(loc)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        line = None
    where = f"{experiment.path}:{line}" if line else str(experiment.path)
    return f"{where}: {format_loc(loc)}: {message}"


def load_experiment(path: Path | str) -> Experiment:
    """Read and validate an experiment file.

    Raises:
        ConfigError: the file is missing, unreadable, or not a valid experiment.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [Problem((), "no such file")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, [Problem((), f"cannot read the file: {error}")]) from None
    return parse_experiment(text, path)
