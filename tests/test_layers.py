"""Each layer of the package only imports the layers below it (lazy imports included).

From the bottom: the core (config, data, models, learners, train, tuning: what one trial and
one study need; they use each other, e.g. the config checks a storage URL's syntax and a
monitor's name), then collect (tables from a storage), cluster (launching), and the commands
(cli) on top. A cycle between two layers (cluster/launch.py and collect/report.py once imported
each other) makes every change to one a risk for the other and breaks partial imports. Modules
directly in the package (catalog, paths, assets, ...) are shared and not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tunevlseg"
LAYERS = {
    "config": 1,
    "data": 1,
    "models": 1,
    "learners": 1,
    "train": 1,
    "tuning": 1,
    "collect": 2,
    "cluster": 3,
    "cli": 4,
}
"""Sub-packages by height; modules directly in the package (catalog, paths, ...) are height 0."""


def _height(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 2 else 0


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every tunevlseg import in the file, at any depth (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunevlseg"):
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("tunevlseg")]
    return found


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_imports_a_layer_above_its_own(path: Path) -> None:
    module = "tunevlseg." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    height = _height(
        module if not module.endswith(".__init__") else module.removesuffix(".__init__") + ".x"
    )
    upward = [
        f"line {line}: {target}"
        for line, target in _imports(path)
        if _height(target) > height and height > 0
    ]
    assert not upward, f"{module} imports from a layer above it: {upward}"
