"""One self-contained HTML page with every table and plot (inline CSS, PNGs as base64).

Self-contained so that it can be copied off the cluster, mailed or attached to an issue and still
show everything: no file beside it is needed.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #e4e4e4; text-align: left; }
th { background: #f4f4f4; text-align: center; }
td.num, table.main td:nth-child(n+3) { text-align: right; font-variant-numeric: tabular-nums; }
table.main tr.group td { border-top: 2px solid #999; }
table.main tr.average td { border-top: 2px solid #333; font-style: italic; }
p.note { font-size: 0.8em; color: #555; margin: 0.2em 0; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
ul.warnings { color: #a40; font-size: 0.85em; }
"""


@dataclass(frozen=True)
class Section:
    title: str
    body: str  # HTML


def image_section(title: str, paths: Sequence[Path]) -> Section:
    """PNG files embedded as data URIs."""
    images = []
    for path in paths:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        images.append(f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">')
    return Section(title, "\n".join(images))


def render_page(title: str, sections: Sequence[Section], warnings: Sequence[str] = ()) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        parts.append(f'<ul class="warnings">{items}</ul>')
    parts.extend(
        f"<section><h2>{html.escape(section.title)}</h2>\n{section.body}</section>"
        for section in sections
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
