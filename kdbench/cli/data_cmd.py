"""`kdbench data`: list the dataset catalogue (what is present, where, sizes), or download one."""
from __future__ import annotations

import argparse
from typing import Any

from tabulate import tabulate


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `data` subcommand (`kdbench data [list]`, `kdbench data download NAME`)."""
    p = subparsers.add_parser("data", help="list datasets and where they were found, or download one",
                              description="List the dataset catalogue, or download a dataset with torchvision.")
    p.add_argument("--data-root", default=None, help="extra data root searched first (also: $KDBENCH_DATA)")
    sub = p.add_subparsers(dest="data_action", metavar="{list,download}")
    ls = sub.add_parser("list", help="table of datasets (default)")
    ls.add_argument("--data-root", default=argparse.SUPPRESS, help="extra data root searched first")
    ls.add_argument("--long", "-l", dest="data_long", action="store_true", help="show descriptions too")
    dl = sub.add_parser("download", help="download mnist, fashion-mnist or cifar10 (needs network)")
    dl.add_argument("name", help="dataset name")
    dl.add_argument("--data-root", default=argparse.SUPPRESS,
                    help="where to put it (default: first $KDBENCH_DATA entry, else ~/.cache/kdbench/data)")
    p.set_defaults(func=run, data_action=None, data_long=False)
    return p


def format_table(rows: list[dict[str, Any]], verbose: bool = False) -> str:
    """The catalogue as a text table; sizes are the train pool (before the val carve) and test."""
    cols = ["name", "modality", "status", "train", "test", "location / how to get"]
    if verbose:
        cols.append("description")
    body = []
    for r in rows:
        line = [r["name"], r["modality"], r["status"], "" if r["train"] is None else r["train"],
                "" if r["test"] is None else r["test"], r["location"] if r["status"] == "found" else r["how_to_get"]]
        if verbose:
            line.append(r["description"])
        body.append(line)
    return tabulate(body, headers=cols, tablefmt="simple")


def run(args: argparse.Namespace) -> int:
    """Execute `kdbench data ...`; KdbenchError propagates to the CLI's one-line handler (exit 2)."""
    from ..data import dataset_table, download  # lazy: keeps `kdbench --help` fast

    action = getattr(args, "data_action", None) or "list"
    root = getattr(args, "data_root", None)
    if action == "download":
        where = download(args.name, root)
        print(f"{args.name}: ready at {where}")
        return 0
    rows = dataset_table(root)
    print(format_table(rows, verbose=getattr(args, "data_long", False)))
    n_found = sum(r["status"] == "found" for r in rows)
    print(f"\n{n_found} of {len(rows)} datasets found; train = pool before the val carve; blank size = not cached yet")
    return 0
