"""Reports: tables (Markdown, LaTeX booktabs, CSV) and figures built from run records.

This package is the generic machinery; the papers' tables, comparisons and figures live in
kdbench/papers/ and are loaded with it, so every reader of the registries sees them."""
from __future__ import annotations

from .. import papers
from .build import build_report, parse_formats

papers.load_papers()  # after the report modules: the paper modules register into them

__all__ = ["build_report", "parse_formats"]
