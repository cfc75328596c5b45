"""Build the patched copy trial_startup.py compares against (--src /tmp/tvls-patched).

An unchanged copy of ``tunevlseg`` plus a copy of the installed torchmetrics whose two package
``__init__`` files no longer import the audio and text metric families (each such import
statement becomes ``pass``): what a lazier torchmetrics would save a worker process.
Nothing in the repository or the venv is modified.

Reproduce::

    .venv/bin/python benchmarks/make_patched_copy.py [/tmp/tvls-patched]
    .venv/bin/python benchmarks/trial_startup.py --runs 2 --src /tmp/tvls-patched
"""

import ast
import pathlib
import shutil
import sys

import torchmetrics as _tm

site = pathlib.Path(_tm.__file__).resolve().parents[1]
repo = pathlib.Path(__file__).resolve().parents[1]
out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tvls-patched")
shutil.rmtree(out, ignore_errors=True)
out.mkdir()
shutil.copytree(repo / "tunevlseg", out / "tunevlseg", ignore=shutil.ignore_patterns("__pycache__"))
shutil.copytree(
    site / "torchmetrics", out / "torchmetrics", ignore=shutil.ignore_patterns("__pycache__")
)
DROP = (
    "torchmetrics.audio",
    "torchmetrics.text",
    "torchmetrics.functional.audio",
    "torchmetrics.functional.text",
)
for rel in ("torchmetrics/__init__.py", "torchmetrics/functional/__init__.py"):
    path = out / rel
    lines = path.read_text().splitlines(keepends=True)
    tree = ast.parse("".join(lines))
    dropped = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(DROP):
            indent = lines[node.lineno - 1][
                : len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())
            ]
            lines[node.lineno - 1] = indent + "pass\n"
            for i in range(node.lineno, node.end_lineno):
                lines[i] = "\n"
            dropped += 1
    path.write_text("".join(lines))
    print(rel, "dropped", dropped, "imports")
