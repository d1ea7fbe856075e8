"""`kdbench teacher train|import|list`: the teacher cache."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..errors import KdbenchError
from ..models.protocol import NORMALIZE_HELP
from ..models.zoo import TIMM_PREFIX
from .common import print_table


def add_parser(sub) -> None:
    p = sub.add_parser("teacher", help="train, import or list cached teachers")
    tsub = p.add_subparsers(dest="teacher_command", metavar="ACTION")
    for action in ("train", "import"):
        q = tsub.add_parser(action, help=f"{action} a teacher into the cache")
        q.add_argument("--dataset", default="mnist")
        q.add_argument("--arch", default="auto", help="zoo architecture (default: the dataset's paper teacher)")
        q.add_argument("--data-root")
        q.add_argument("--val-fraction", type=float, default=0.1)
        q.add_argument("--split-seed", type=int, default=0)
        q.add_argument("--max-train", type=int)
        q.add_argument("--device", default="auto")
        q.add_argument("--normalize", metavar="NORM", help=f"input normalisation inside the model: {NORMALIZE_HELP}; "
                       "imported weights need the one they were trained with (the shared CIFAR ResNets: imagenet)")
        if action == "train":
            q.add_argument("--epochs", type=int, help="override the dataset's recipe")
            q.add_argument("--lr", type=float)
            q.add_argument("--seed", type=int, default=0)
        else:
            q.add_argument("checkpoint", help=".safetensors or torch checkpoint (loaded with weights_only=True)")
    tsub.add_parser("list", help="list cached teachers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..teachers import list_teachers

    if args.teacher_command in (None, "list"):
        print_table(list_teachers())
        return 0
    from ..data import load_dataset
    from ..engine import resolve_device
    from ..models import MODELS, create_model, place
    from ..models.protocol import parse_normalize
    from ..models.weights import read_state_dict
    from ..teachers import default_recipe, default_teacher, get_teacher, import_teacher, model_options

    arch = default_teacher(args.dataset) if args.arch == "auto" else args.arch
    device = resolve_device(args.device)
    parse_normalize(args.normalize)  # a malformed value -> one line before any work
    options = model_options(args.normalize)
    if not arch.startswith(TIMM_PREFIX):
        MODELS.get(arch)  # an unknown architecture -> one line (with suggestions) before any work
    if args.teacher_command == "import":
        if not Path(args.checkpoint).is_file():
            raise KdbenchError(f"teacher checkpoint '{args.checkpoint}' does not exist")
        read_state_dict(args.checkpoint)  # an unreadable checkpoint fails before the dataset is decoded
    data = load_dataset(args.dataset, args.data_root, val_fraction=args.val_fraction, split_seed=args.split_seed, max_train=args.max_train)

    def build(name: str, **kw):
        return place(create_model(name, data.spec, **kw), device)

    build(arch, **options)  # unknown architecture or options -> one clear line before any work
    t0 = time.perf_counter()
    if args.teacher_command == "train":
        recipe = default_recipe(args.dataset)
        changes = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("seed", args.seed)) if v is not None}
        if changes.get("epochs", 1) < 1:
            raise KdbenchError(f"--epochs must be >= 1, got {args.epochs}")
        teacher = get_teacher(arch, data, dataclasses.replace(recipe, **changes), device, build, normalize=args.normalize)
    else:
        teacher = import_teacher(Path(args.checkpoint), arch, data, device, build, args.normalize)
    m = teacher.info.get("metrics", {})
    print(f"teacher {teacher.key}: test_acc={m.get('test_acc', float('nan')):.2f} val_acc={m.get('val_acc', float('nan')):.2f} "
          f"train_time_s={m.get('train_time_s', 0.0):.1f} (this command: {time.perf_counter() - t0:.1f}s)")
    return 0
