"""FT (Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer"): its
claim (FT >= KD > no KD), its published CIFAR numbers beside kdbench's, and the paraphraser's
reconstruction loss (step 1 of the method) per cell.

The published anchors (kdbench/reference/ft_reference.csv) are third-party reproductions: CIFAR-10
resnet110 -> resnet20 with crop-flip augmentation, and RepDistiller's CIFAR-100 table."""
from __future__ import annotations

from ..report.claims import Claim, Side, Step, claim
from ..report.context import Context, label, sort_cells
from ..report.data import METHOD_DISPLAY, MethodDisplay, numeric
from ..report.paper import (Comparison, RefRow, acc_fmt, column, comparison, from_teacher_of, method_runs, num, reference,
                            teacher_runs, where_ran)
from ..report.table import Skipped, Table
from ..report.tables import cell_keys, csv_frame, table

METHOD_DISPLAY.add("ft", MethodDisplay("FT", 50))
OWN = "ft."  # the columns of FT's own metrics (metrics["ft"] of its records)

_FT, _KD, _NOKD = (Side("FT", method_runs("ft")), Side("KD", from_teacher_of("ft", "kd")),
                   Side("no KD", method_runs("student")))
claim(20, "ft", Claim("FT (factor transfer)", "FT ≥ KD > no KD",
                      (Step(_FT, _KD, strict=False), Step(_KD, _NOKD), Step(_FT, _NOKD)),
                      within=("dataset", "student", "max_train", "epochs"), datasets=("cifar10", "cifar100")))


@comparison(75, "ft_cifar")
def _ft_cifar(ctx: Context) -> Comparison:
    acc = ctx.accuracy.column
    rows = []
    for r in reference("ft_reference").itertuples():
        ident = {"dataset": r.dataset, "config": f"T={r.teacher} S={r.student}", "method": r.method}
        if r.method == "teacher":
            select, value = teacher_runs, column("teacher_test_acc")
        else:
            select, value = where_ran("ft", _KD.select if r.method == "kd" else method_runs(r.method)), column(acc)
        rows.append(RefRow(ident, r.dataset, num(r.test_accuracy_pct), select, value,
                           "; ".join(x for x in (r.source, r.note) if x)))
    kd = ctx.df[ctx.df["method"].isin(["kd", "ft"])]
    pairs = sorted({f"T={str(t).removeprefix('file:').split('=')[0]} S={s}" for t, s in zip(kd["teacher"], kd["student"])})
    ran = f" (kdbench's distillation runs here: {', '.join(pairs)})" if pairs else ""
    return Comparison("paper_ft", "Paper vs kdbench: factor transfer on CIFAR (test accuracy, %)", rows, acc_fmt,
                      [ctx.accuracy_note(), "Every kdbench cell of the paper's dataset is set beside every published "
                       f"configuration of it: compare the pair each cell ran{ran} with the row's `Config`; a smaller "
                       "pair, a train subset or no augmentation are recorded deviations below."])


@table(85, "ft_paraphraser", "FT: paraphraser reconstruction")
def ft_paraphraser(ctx: Context) -> Table | Skipped:
    col = f"{OWN}paraphraser_val_l1"
    df = ctx.df[ctx.df["method"] == "ft"]
    if col not in df.columns or numeric(df, col).isna().all():
        return Skipped("ft_paraphraser", "FT: paraphraser reconstruction", f"no FT run records with `{col}`")
    keys, extras = cell_keys(df)
    summ = sort_cells(ctx.summary(df, col, keys), extras)
    display = summ[["dataset"]].rename(columns={"dataset": "Dataset"}).assign(**{
        "Configuration": [label(r, extras) for _, r in summ.iterrows()],
        "Val L1 (paraphraser)": [ctx.cell(r, 4) for _, r in summ.iterrows()]})
    notes = ["Step 1 of FT: the paraphraser (a conv autoencoder) reconstructs the frozen teacher's last feature "
             "map; its mean absolute error on the val images at its best epoch (lower is better; the scale is "
             "the teacher's feature values).", ctx.spread_note(), *ctx.protocol_notes(df)]
    return Table("ft_paraphraser", "FT: paraphraser reconstruction loss (val L1)", display,
                 csv_frame(summ, extras, metric=col), notes)
