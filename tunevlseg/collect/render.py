"""Plain tables (a header and rows of already formatted text) in Markdown, LaTeX and HTML.

The summary tables (trial states, best parameters, parameter counts, compute, importances) are
formatted once into text cells by :mod:`tunevlseg.collect.summaries`; this module only lays the
text out, so the three formats cannot disagree on a number.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
    "±": r"$\pm$",
    "×": r"$\times$",
}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell (data set names like ``kvasir_seg`` have ``_``)."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


@dataclass(frozen=True)
class TextTable:
    """A titled table of text cells; ``numeric`` columns are right-aligned."""

    name: str  # file stem, e.g. "trial_states"
    title: str
    header: list[str]
    rows: list[list[str]]
    numeric: frozenset[int] = frozenset()
    notes: list[str] = field(default_factory=list)
    bold: frozenset[tuple[int, int]] = frozenset()  # (row, column) cells shown in bold


def _pipe(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def to_markdown(table: TextTable) -> str:
    align = ["---:" if i in table.numeric else "---" for i in range(len(table.header))]
    lines = [_pipe(table.header), "|" + "|".join(align) + "|"]
    for r, row in enumerate(table.rows):
        lines.append(_pipe([f"**{c}**" if (r, i) in table.bold else c for i, c in enumerate(row)]))
    lines += [f"\n{note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_latex(table: TextTable) -> str:
    """A booktabs ``tabular`` (no float: the paper decides where it goes)."""
    spec = "".join("r" if i in table.numeric else "l" for i in range(len(table.header)))
    lines = [f"% {latex_escape(table.title)}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in table.header) + " \\\\")
    lines.append("\\midrule")
    for r, row in enumerate(table.rows):
        cells = [
            f"\\textbf{{{latex_escape(c)}}}" if (r, i) in table.bold else latex_escape(c)
            for i, c in enumerate(row)
        ]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"\\par\\smallskip{{\\footnotesize {latex_escape(note)}}}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_html(table: TextTable) -> str:
    esc = html.escape
    parts = ["<table>", "<thead><tr>"]
    parts += [f"<th>{esc(h)}</th>" for h in table.header]
    parts.append("</tr></thead><tbody>")
    for r, row in enumerate(table.rows):
        cells = []
        for i, cell in enumerate(row):
            text = f"<b>{esc(cell)}</b>" if (r, i) in table.bold else esc(cell)
            cells.append(
                f'<td class="num">{text}</td>' if i in table.numeric else f"<td>{text}</td>"
            )
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    parts += [f'<p class="note">{esc(note)}</p>' for note in table.notes]
    return "\n".join(parts) + "\n"
