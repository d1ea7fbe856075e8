"""Reports: tables (Markdown, LaTeX booktabs, CSV) and figures built from run records."""
from __future__ import annotations

from .build import build_report, parse_formats

__all__ = ["build_report", "parse_formats"]
