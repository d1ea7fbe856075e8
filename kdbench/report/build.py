"""build_report: records -> tables (Markdown, LaTeX, CSV) + figures under reports/<name>/.

Regenerating from the same records gives byte-identical md / tex / csv: no timestamps, stable
ordering, fixed bootstrap seed; outputs of an earlier build that this one no longer makes are removed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..config import check_report_name
from ..errors import KdbenchError
from . import claims, paper, plots, sizes, tables, teacher_sizes
from .provenance import match_presets, preset_lines
from .context import Context
from .data import ACCURACY, load
from .render import FORMATS, invalid_heading
from .select import Selection, apply, check_selection, protocol_line, select_on_val, selection_table
from .table import Report, Skipped, Table

SPREADS = ("ci", "std")
_OWNED = {"tables": (".csv", ".tex"), "figures": (".png", ".pdf")}


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """`md,latex` or a sequence -> validated, de-duplicated format names (unknown: one-line error)."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = list(dict.fromkeys(str(f).strip() for f in items if str(f).strip()))
    if not names:
        raise KdbenchError("--format is empty; expected a comma-separated subset of " + ",".join(FORMATS.names()))
    for n in names:
        FORMATS.get(n)  # raises KdbenchError with a did-you-mean
    return names


def make_report(ctx: Context, out: Path, title: str, figures: bool = True,
                selection: Selection | None = None) -> Report:
    """Build every table and figure (writing the figures), in a fixed order; with a selection (tuning on
    val) its table comes first and the protocol says what it did."""
    built = [spec.build(ctx) for spec in tables.ordered_specs()] + paper.build_all(ctx) + [claims.build_claims(ctx)]
    if selection is not None:
        built.insert(0, selection_table(ctx, selection))
    size_tables, size_figures = sizes.build(ctx, out, figures)
    report = Report(
        title=title,
        protocol=protocol(ctx, selection),
        tables=[t for t in built if isinstance(t, Table)],
        skipped=[t for t in built if isinstance(t, Skipped)],
        figures=plots.draw_all(ctx, out) if figures else [],
        overview=[tables.runs_table(ctx)],
        appendix=[tables.teachers_table(ctx), tables.environment_table(ctx), tables.deviations_table(ctx)],
        invalid=[(i.path.name, i.reason) for i in ctx.results.invalid],
        sizes=size_tables,
        size_figures=size_figures,
        sections=teacher_sizes.build(ctx, out, figures),
    )
    return report


def protocol(ctx: Context, selection: Selection | None = None) -> list[str]:
    res = ctx.results
    n_ok = selection.n_runs if selection is not None else len(ctx.df)
    tuned = [protocol_line(selection, ctx)] if selection is not None else []
    not_counted = f"; {res.n_failed} failed records are not counted" if res.n_failed else ""
    if res.invalid:
        not_counted += f"; {len(res.invalid)} invalid record files are excluded (listed above)"
    missing = ([f"The baseline method `{ctx.baseline}` has no runs here: no significance tests."]
               if not (ctx.df["method"] == ctx.baseline).any() else [])
    preset = preset_lines(match_presets(ctx.df["run_key"], ctx.df["dataset"]), res.source, ctx.df["run_key"].nunique())
    return [
        f"Source: `{res.source}`, {n_ok} ok run records{not_counted}.",
        *preset,
        ctx.accuracy_note() + " Paper tables that report another selection are compared as published.",
        *tuned,
        ctx.spread_note(),
        f"Significance: Welch's t-test (unequal variances) of each cell against the `{ctx.baseline}` cell of the "
        "same dataset, Holm step-down adjustment across each table.",
        *missing,
        "Per-table notes give the seeds, dataset substitutes and the deviations recorded by the runs behind it.",
    ]


def _clean_stale(out: Path, written: set[Path]) -> None:
    for sub, suffixes in _OWNED.items():
        d = out / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file() and p.suffix in suffixes and p.resolve() not in written:
                    p.unlink()


def build_report(results_dir: str | Path, out_dir: str | Path = "reports", name: str | None = None,
                 formats: str | Iterable[str] = ("md", "latex", "csv"), accuracy: str = "valbest",
                 baseline_method: str = "kd", bootstrap: bool = False, spread: str = "ci",
                 figures: bool = True, log: Callable[[str], None] | None = None, select: str = "none") -> Path:
    """Write reports/<name>/{report.md, tables.tex, tables/*.csv|tex, figures/*.png|pdf}; return that folder.

    accuracy: "valbest" (test accuracy at the val-best epoch, default) or "last" (last epoch).
    spread: "ci" (± = 95% CI half-width) or "std"; bootstrap: bootstrap CIs instead of Student t;
    figures=False skips the plots (the slow part) and removes earlier ones; log (e.g. print to stderr)
    gets the warning block of invalid record files, which report.md lists as well.
    select: "none" (every configuration is a cell) or "val" (tuning on val: per cell, the hyperparameters
    with the best mean val accuracy over seeds; the tables show that choice only, and a table says what
    was searched and what won). A size study section appears by itself when the runs span several sizes."""
    choice = ACCURACY.get(accuracy)
    fmts = parse_formats(formats)
    if spread not in SPREADS:
        raise KdbenchError(f"unknown spread '{spread}' (known: {', '.join(SPREADS)})")
    check_selection(select)
    results = load(results_dir)
    selection = select_on_val(results) if select == "val" else None
    if selection is not None:
        results = apply(results, selection)
        if results.frame.empty:
            raise KdbenchError(f"--select val: no run of '{results_dir}' records a val accuracy (`val_acc`) to choose by")
    name = name or results.source
    check_report_name(name)  # the rule `kdbench sweep --report-name` checks before it runs
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(results, choice, accuracy, baseline_method, bootstrap, spread)
    report = make_report(ctx, out, f"kdbench report: {name}", figures, selection)
    written = {(out / f).resolve() for fig in report.all_figures() for f in fig.files}
    for fmt in fmts:
        written |= {p.resolve() for p in FORMATS.get(fmt)(out, report)}
    _clean_stale(out, written)
    if log is not None and report.invalid:
        log("\n".join([f"warning: {invalid_heading(report)} from the report:",
                       *[f"  - {name}: {reason}" for name, reason in report.invalid]]))
    return out
