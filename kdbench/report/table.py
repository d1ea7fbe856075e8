"""The value every table builder returns: what to show, the numbers behind it, and its protocol."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Table:
    """One report table. `display` (strings) is rendered to Markdown and LaTeX alike; `data` (tidy
    numbers) goes to CSV; `notes` state the protocol (accuracy used, n, substitutes, deviations)."""

    name: str  # file stem, e.g. "summary_accuracy"
    title: str
    display: pd.DataFrame
    data: pd.DataFrame
    notes: list[str] = field(default_factory=list)


@dataclass
class Skipped:
    """A table that could not be built from the records, and why (shown in the report, no crash)."""

    name: str
    title: str
    reason: str


@dataclass
class Figure:
    """A written figure (paths relative to the report directory) or a skipped one (reason set)."""

    name: str
    title: str
    files: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class Section:
    """A report section of its own (a study that appears only when the runs call for it): heading, one
    paragraph saying what it shows, its tables and figures."""

    heading: str
    note: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Report:
    """A whole report: protocol lines, overview, tables (and skipped ones), figures, appendix tables, and the
    record files it could not use (one warning block, never silently dropped)."""

    title: str
    protocol: list[str]
    tables: list[Table]
    skipped: list[Skipped] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    overview: list[Table] = field(default_factory=list)  # runs per cell
    appendix: list[Table] = field(default_factory=list)  # environment, deviations
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of excluded record files
    sizes: list[Table] = field(default_factory=list)  # the size study (only when runs span several sizes)
    size_figures: list[Figure] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)  # after the size study: teacher / assistant size

    def all_tables(self) -> list[Table]:
        return [*self.overview, *self.tables, *self.sizes, *(t for s in self.sections for t in s.tables),
                *self.appendix]

    def all_figures(self) -> list[Figure]:
        return [*self.figures, *self.size_figures, *(f for s in self.sections for f in s.figures)]
