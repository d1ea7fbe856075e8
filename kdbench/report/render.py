"""Markdown and LaTeX (booktabs) from the same display frame, and CSV from the numbers.

Renderers are pure functions of a Table, so the same records always give the same bytes."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Callable

import pandas as pd

from ..registry import Registry
from ..store import atomic_write_text
from .table import Figure, Report, Table

# ------------------------------------------------------------------------------------- Markdown


def _md_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def numeric_columns(frame: pd.DataFrame) -> list[bool]:
    """Which columns hold numbers (cells start with a digit, sign or `<`; empty cells allowed)."""
    out = []
    for j in range(len(frame.columns)):
        cells = ["" if v is None else str(v) for v in frame.iloc[:, j]]
        out.append(j > 0 and any(cells) and all(re.match(r"^[-+<]?\d", c) for c in cells if c))
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub pipe table; number columns right-aligned, text left-aligned."""
    cols = [str(c) for c in frame.columns]
    rows = [[_md_cell(v) for v in r] for r in frame.itertuples(index=False, name=None)]
    align = ["---:" if num else ":---" for num in numeric_columns(frame)]
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(table: Table, level: int = 3) -> str:
    """Title, table and its notes as a Markdown section."""
    parts = [f"{'#' * level} {table.title}", "", markdown_table(table.display), ""]
    if table.notes:
        parts += [f"- {n}" for n in table.notes] + [""]
    return "\n".join(parts)


INVALID_NOTE = ("These files in the results directory are not valid run records: no table counts them, "
                "and a resumed sweep reruns their runs.")


def invalid_heading(report: Report) -> str:
    n = len(report.invalid)
    return f"{n} invalid record file{'s' if n != 1 else ''} excluded"


def invalid_lines(report: Report) -> list[str]:
    """The warning block's items, `file`: reason (Markdown inline code, which LaTeX renders as texttt)."""
    return [f"`{name}`: {reason}" for name, reason in report.invalid]


def markdown_warning(report: Report) -> list[str]:
    """The one warning block listing the record files the report could not use ([] when there are none)."""
    if not report.invalid:
        return []
    return [f"## Warning: {invalid_heading(report)}", "", INVALID_NOTE, "", *[f"- {line}" for line in invalid_lines(report)], ""]


SIZE_NOTE = ("The runs span more than one student size: accuracy against the deployed predictor's params and MACs, "
             "the Pareto front, and which method wins at which budget.")


def markdown_figure(f: Figure) -> list[str]:
    """A figure's section (PNG inline, the other formats linked), or one line saying why it was skipped."""
    if f.reason:
        return [f"- {f.title}: skipped, {f.reason}", ""]
    png = [p for p in f.files if p.endswith(".png")]
    others = [p for p in f.files if not p.endswith(".png")]
    out = [f"### {f.title}", ""]
    out += [f"![{f.title}]({p})" for p in png]
    if others:
        out += ["", "Also as " + ", ".join(f"[{Path(p).suffix[1:].upper()}]({p})" for p in others) + "."]
    return out + [""]


def markdown_report(report: Report) -> str:
    """The whole report.md, in a fixed section order (no timestamps: regenerating gives the same bytes)."""
    out = [f"# {report.title}", "", *markdown_warning(report), "## Protocol", ""]
    out += [f"- {p}" for p in report.protocol] + [""]
    if report.overview:
        out += ["## Runs", ""] + [markdown(t) for t in report.overview]
    out += ["## Tables", ""]
    out += [markdown(t) for t in report.tables]
    if report.skipped:
        out += ["### Skipped tables", ""]
        out += [f"- {s.title}: {s.reason}" for s in report.skipped] + [""]
    if report.sizes or report.size_figures:
        out += ["## Size study", "", SIZE_NOTE, ""]
        out += [markdown(t) for t in report.sizes]
        out += [line for f in report.size_figures for line in markdown_figure(f)]
    for section in report.sections:
        out += [f"## {section.heading}", "", section.note, ""]
        out += [markdown(t) for t in section.tables]
        out += [line for f in section.figures for line in markdown_figure(f)]
    if report.figures:
        out += ["## Figures", ""]
        out += [line for f in report.figures for line in markdown_figure(f)]
    if report.appendix:
        out += ["## Appendix", ""] + [markdown(t) for t in report.appendix]
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------- LaTeX

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "†": r"\textsuperscript{\dag}", "–": "--", "—": "---", "−": "-",
                  "×": r"$\times$", "≤": r"$\le$", "≥": r"$\ge$", "Δ": r"$\Delta$", "≈": r"$\approx$",
                  "→": r"$\to$", "·": r"$\cdot$", "µ": r"$\mu$", "…": r"\ldots{}", "’": "'", "‘": "`",
                  "“": "``", "”": "''"}


def latex_escape(text: object) -> str:
    """Escape LaTeX specials; map known symbols; transliterate other non-ASCII (never a compile error)."""
    out = []
    for ch in "" if text is None else str(text):
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ch in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[ch])
        elif ch == "`":
            out.append(r"\textasciigrave{}")
        elif ord(ch) < 128:
            out.append(ch)
        else:
            ascii_ = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(latex_escape(ascii_) if ascii_ else "?")
    return "".join(out)


def _latex_inline(text: str) -> str:
    """Notes use Markdown `code`; in LaTeX that becomes \\texttt{...}."""
    pieces = re.split(r"`([^`]*)`", text)
    return "".join(r"\texttt{" + latex_escape(p) + "}" if i % 2 else latex_escape(p) for i, p in enumerate(pieces))


INCLUDE_HEADER = "% kdbench table; needs \\usepackage{booktabs,graphicx,longtable} (see ../tables.tex)\n"
LONG_TABLE_ROWS = 30  # longer tables break across pages (longtable) instead of floating


def _latex_spec(frame: pd.DataFrame) -> str:
    return "".join("r" if num else "l" for num in numeric_columns(frame))


def _latex_rows(frame: pd.DataFrame) -> list[str]:
    return [" & ".join(latex_escape(v) for v in r) + r" \\" for r in frame.itertuples(index=False, name=None)]


def _latex_header(frame: pd.DataFrame) -> str:
    return " & ".join(latex_escape(c) for c in frame.columns) + r" \\"


def latex_tabular(frame: pd.DataFrame) -> str:
    """A booktabs tabular of a display frame (text columns left, number columns right)."""
    lines = [rf"\begin{{tabular}}{{{_latex_spec(frame)}}}", r"\toprule", _latex_header(frame), r"\midrule",
             *_latex_rows(frame), r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _latex_notes(notes: list[str]) -> list[str]:
    if not notes:
        return []
    return [r"\par\smallskip\noindent", r"\begin{minipage}{\linewidth}\footnotesize",
            *[_latex_inline(n) + r"\par" for n in notes], r"\end{minipage}"]


def latex(table: Table) -> str:
    """An includable table: a `table` float (tabular shrunk to the line width if wider) with caption and
    notes, or for long tables a `longtable` that breaks across pages (header repeated)."""
    label = re.sub(r"[^A-Za-z0-9:-]", "-", table.name)
    caption = rf"\caption{{{_latex_inline(table.title)}}}\label{{tab:{label}}}"
    if len(table.display) > LONG_TABLE_ROWS:
        frame = table.display
        lines = [r"\begingroup\footnotesize\setlength{\tabcolsep}{4pt}",
                 rf"\begin{{longtable}}{{{_latex_spec(frame)}}}", caption + r" \\", r"\toprule",
                 _latex_header(frame), r"\midrule", r"\endfirsthead", r"\toprule", _latex_header(frame),
                 r"\midrule", r"\endhead", r"\bottomrule", r"\endlastfoot", *_latex_rows(frame),
                 r"\end{longtable}", r"\endgroup", *_latex_notes(table.notes), r"\par\bigskip", ""]
        return "\n".join(lines)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small", caption,
             r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
             latex_tabular(table.display) + "%", "}", *_latex_notes(table.notes), r"\end{table}", ""]
    return "\n".join(lines)


LATEX_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage[a4paper,landscape,margin=1.5cm]{geometry}
\usepackage{booktabs}
\usepackage{longtable}
\usepackage{graphicx}
\setcounter{topnumber}{4}
\setcounter{totalnumber}{6}
\renewcommand{\topfraction}{0.95}
\renewcommand{\textfraction}{0.05}
\renewcommand{\floatpagefraction}{0.6}
"""


def latex_document(title: str, tables: list[Table], intro: list[str] = ()) -> str:
    """A standalone document holding every table (compiles with pdflatex and texlive-latex-recommended)."""
    body = [LATEX_PREAMBLE, r"\begin{document}", rf"\section*{{{latex_escape(title)}}}"]
    body += [_latex_inline(p) + r"\par" for p in intro]
    for i, t in enumerate(tables):
        body.append(latex(t))
        if i % 3 == 2:  # flush floats now and then: never "too many unprocessed floats"
            body.append(r"\clearpage")
    body += [r"\end{document}", ""]
    return "\n".join(body)


# ------------------------------------------------------------------------------------------ CSV

def csv_text(frame: pd.DataFrame) -> str:
    """Stable CSV: fixed float format, Unix newlines, no index."""
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.10g")


# ------------------------------------------------------------------------------- format registry

Writer = Callable[[Path, Report], list[Path]]
FORMATS: Registry[Writer] = Registry("report format")


@FORMATS.register("md")
def write_markdown(out: Path, report: Report) -> list[Path]:
    """report.md: protocol, runs, tables with notes, skipped tables, figures, environment, deviations."""
    p = out / "report.md"
    atomic_write_text(p, markdown_report(report))
    return [p]


@FORMATS.register("latex")
def write_latex(out: Path, report: Report) -> list[Path]:
    """tables.tex (standalone document) plus one includable tables/<name>.tex per table."""
    paths = []
    for t in report.all_tables():
        p = out / "tables" / f"{t.name}.tex"
        atomic_write_text(p, INCLUDE_HEADER + latex(t))
        paths.append(p)
    doc = out / "tables.tex"
    warning = [f"Warning: {invalid_heading(report)}. {INVALID_NOTE}", *invalid_lines(report)] if report.invalid else []
    atomic_write_text(doc, latex_document(report.title, report.all_tables(), [*warning, *report.protocol]))
    return [doc, *paths]


@FORMATS.register("csv")
def write_csv(out: Path, report: Report) -> list[Path]:
    """tables/<name>.csv: the numbers behind each table (means, CI bounds, n, p-values)."""
    paths = []
    for t in report.all_tables():
        p = out / "tables" / f"{t.name}.csv"
        atomic_write_text(p, csv_text(t.data))
        paths.append(p)
    return paths
