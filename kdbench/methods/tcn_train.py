"""TCN's training (kdbench/methods/tcn.py): one run's setup, the student stage (a group of students
alone or fused, or the groups of several seeds at once), and the assembly of the deployed predictor
with the head's fine-tuning and the metrics."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdbench import seed_fuse
from kdbench.engine import Members, Step, accuracy, predict
from kdbench.errors import KdbenchError
from kdbench.method import Context
from kdbench.tcn_fuse import Grouped, Single, load_tensors, stack

from .tcn_gan import Discriminator, gan_metrics, gan_steps
from .tcn_parts import (TCNPredictor, Trained, batched, chunk_bounds, chunk_sizes, ff_steps, fuse_students, head_loss,
                        mse_per_student, student_groups, swapped_accuracy)

OFFICIAL_VAL_FRACTION = 0.2


def setup(ctx: Context, p: Any) -> dict[str, Any]:
    """Checks, deviations, chunking and the val targets of one run, and its students (and
    discriminators), each seeded by the run's seed and its index."""
    from kdbench.models import dense_view

    spec = ctx.spec
    mode = spec.mode or "ff"
    n = spec.n_students
    if ctx.teacher is None:
        raise KdbenchError("tcn needs a teacher")
    view = dense_view(ctx.teacher)  # KdbenchError when the teacher has no dense layer
    sizes = chunk_sizes(view.dim, n)
    bounds = chunk_bounds(sizes)
    if len(set(sizes)) > 1:
        ctx.deviations.append(f"tcn: {n} does not divide the dense width {view.dim}; numpy.array_split chunks {sizes}")
    if spec.val_fraction is not None and abs(spec.val_fraction - OFFICIAL_VAL_FRACTION) > 1e-9:
        ctx.deviations.append(f"tcn: val fraction {spec.val_fraction} (the official code uses an 80/20 split)")
    feats_val = ctx.targets("val").features  # training batches read theirs through ctx.teacher_outputs
    if feats_val.shape[1] != view.dim:
        raise KdbenchError(f"cached teacher features are {feats_val.shape[1]}-d, the teacher's dense width is {view.dim}")
    if ctx.augmented and p.finetune:
        ctx.deviations.append("tcn: the head is fine-tuned on the students' outputs on clean (not augmented) train images")

    students, discs = [], []
    for j, w in enumerate(sizes):  # seeded per student: the fused and sequential paths start equal
        torch.manual_seed(ctx.seed * 1000 + j)
        students.append(ctx.make_student(out_features=w, n_students=n))
        discs.append(Discriminator(w, p.d_bn_momentum, p.d_bn_eps).to(ctx.device) if mode == "gan" else None)
    groups = student_groups(students, fuse_students(students, p.fused, ctx.data.spec, ctx.device))
    return {"mode": mode, "n": n, "view": view, "sizes": sizes, "bounds": bounds, "feats_val": feats_val,
            "students": students, "discs": discs, "groups": groups}


def train_group(ctx: Context, p: Any, mode: str, members: list[int], students, discs, bounds, feats_val, head: nn.Module):
    """Train the students `members` (one, or several fused) with the shared loop; per-student
    val-best (by feature MSE; `head`, the teacher's classifier, gives each epoch's swapped-in val
    accuracy). Returns their outcomes, history rows and how they ran (single / grouped / vmap)."""
    k = len(members)
    wrap = stack if k > 1 else (lambda ms, bi: Single(ms[0], bi))
    s = wrap([students[j] for j in members], False).to(ctx.device)
    d = wrap([discs[j] for j in members], True).to(ctx.device) if mode == "gan" else None
    cols = torch.stack([torch.arange(*bounds[j]) for j in members]).to(feats_val.device)  # (k, w)
    tgt_val = feats_val[:, cols].transpose(0, 1)  # (k, Nv, w)
    target = lambda b: ctx.teacher_outputs(b).features[:, cols].transpose(0, 1)  # noqa: E731  (k, B, w)

    opt_s = ctx.optimizer(s.parameters())
    if d is not None:
        steps = gan_steps(s, d, opt_s, ctx.optimizer(d.parameters()), target, p.gan_variant, p.lam, p.g_step_bn)
    else:
        steps = ff_steps(s, opt_s, target)
    x_val, y_val = ctx.split("val")

    def evaluate() -> dict[str, float]:
        out = batched(s, x_val)
        mse = mse_per_student(out, tgt_val)
        acc = swapped_accuracy(head, feats_val, cols, out, y_val)
        row = {"val_mse": float(mse.mean()), "val_acc_swapped": float(np.mean(acc))}
        if d is not None:
            real = torch.sigmoid(batched(d, tgt_val, dim=1)[0]).flatten(1).mean(1)
            fake = torch.sigmoid(batched(d, out, dim=1)[0]).flatten(1).mean(1)
            row.update({"d_valid_real": float(real.mean()), "d_valid_fake": float(fake.mean())})
        for i, j in enumerate(members):
            row[f"val_mse_s{j}"] = float(mse[i])
            row[f"val_acc_swapped_s{j}"] = acc[i]
        return row

    per_student = Members([f"val_mse_s{j}" for j in members],  # each student's own val-best state
                          lambda i: {"s": s.member_tensors(i), "d": d.member_tensors(i) if d is not None else None})

    modules = {"students": s, **({"discs": d} if d is not None else {})}
    desc = f"tcn {mode} s{members[0]}" if k == 1 else f"tcn {mode} fused x{k}"
    res = ctx.train(steps, modules, evaluate=evaluate, score_key="val_mse", higher_is_better=False, desc=desc,
                    members=per_student)
    out: dict[int, Trained] = {}
    for i, (j, b) in enumerate(zip(members, res.members)):
        out[j] = Trained(s.member_tensors(i), b.state["s"], b.state["d"], b.epoch, b.score, res.train_time_s / k)
    if d is not None:  # discriminators keep their last state; the val-best one is in best_d
        d.unstack_into([discs[j] for j in members])
    rows = [{**r, "stage": "students", "students": list(members)} for r in res.history]
    kind = "grouped" if isinstance(s, Grouped) else "vmap" if k > 1 else "single"
    return out, rows, kind


def train_group_seeds(ctxs: list[Context], members: list[int], students: list[list[nn.Module]], bounds, feats_val,
                      head: nn.Module):
    """`train_group` (ff) for the students `members` of every seed at once: copies ordered seed
    by seed, the copies of seed i reading seed i's batches. Returns per seed its outcomes and rows."""
    s, m = len(ctxs), len(members)
    k = s * m
    ctx = ctxs[0]
    st = stack([students[i][j] for i in range(s) for j in members], batched_input=True, share=m).to(ctx.device)
    cols = torch.stack([torch.arange(*bounds[j]) for j in members]).to(feats_val.device)  # (m, w)
    tgt_val = feats_val[:, cols].transpose(0, 1).repeat(s, 1, 1)  # (k, Nv, w)

    def target(b) -> Tensor:  # (k, B, w): seed i's batch rows, student j's columns
        t = seed_fuse.teacher_outputs(ctx, b).features[:, :, cols]  # (s, B, m, w)
        return t.transpose(1, 2).reshape(k, t.shape[1], -1)

    opt = ctx.optimizer(st.parameters())
    steps = [Step("s", opt, lambda b: {"mse": mse_per_student(st(b.x), target(b)).view(s, m).sum(1)})]
    x_val, y_val = ctx.split("val")

    def evaluate() -> list[dict[str, float]]:
        out = seed_fuse.predict_copies(st, x_val, s)
        mse = mse_per_student(out, tgt_val).view(s, m)
        acc = np.array(swapped_accuracy(head, feats_val, cols.repeat(s, 1), out, y_val)).reshape(s, m)
        rows = []
        for i in range(s):
            row = {"val_mse": float(mse[i].mean()), "val_acc_swapped": float(acc[i].mean())}
            for a, j in enumerate(members):
                row[f"val_mse_s{j}"] = float(mse[i, a])
                row[f"val_acc_swapped_s{j}"] = float(acc[i, a])
            rows.append(row)
        return rows

    desc = f"tcn ff s{members[0]} x{s} seeds" if m == 1 else f"tcn ff fused x{m} x{s} seeds"
    results = seed_fuse.train(ctxs, steps, {"students": st}, evaluate=evaluate, score_key="val_mse", higher_is_better=False,
                              desc=desc, stage=f"tcn ff s{members[0]}" if m == 1 else f"tcn ff fused x{m}",  # as alone
                              member_state=lambda i: {},
                              members=Members([f"val_mse_s{j}" for j in members], lambda i, a: {"s": st.member_tensors(i * m + a)}))
    out = []
    for i, res in enumerate(results):
        trained = {j: Trained(st.member_tensors(i * m + a), b.state["s"], None, b.epoch, b.score, res.train_time_s / k)
                   for a, (j, b) in enumerate(zip(members, res.members))}
        out.append((trained, [{**r, "stage": "students", "students": list(members)} for r in res.history]))
    return out


def assemble(ctx: Context, p: Any, predictor: TCNPredictor, trained: dict[int, Trained], sizes, bounds, feats_val, discs):
    """Accuracy without and with fine-tuning, feature MSE, and the last / val-best states.

    The students are frozen from here on, so their concatenated outputs are computed once per
    split and state (and reused when every student's val-best epoch is its last)."""
    data = ctx.data
    metrics: dict[str, Any] = {}
    states: dict[str, dict[str, Tensor]] = {}
    rows: list[dict[str, Any]] = []
    teacher_head = copy.deepcopy(predictor.head.state_dict())
    same = all(all(torch.equal(t.last[k], t.best[k]) for k in t.last) for t in trained.values())
    z: dict[str, Tensor] = {}
    for tag, pick in (("last", lambda t: t.last), ("valbest", lambda t: t.best)):
        for j, s in enumerate(predictor.students):
            load_tensors(s, pick(trained[j]))
        predictor.eval()
        if not (same and z):
            z = {split: predict(predictor.concat, getattr(data, split).x) for split in ("val", "test")}
            if p.finetune:
                z["train"] = predict(predictor.concat, data.train.x)
        predictor.head.load_state_dict(teacher_head)
        suffix = "" if tag == "last" else "_valbest"
        metrics[f"test_acc{suffix}_no_finetune"] = accuracy(predict(predictor.head, z["test"]), data.test.y)
        metrics[f"val_acc{suffix}_no_finetune"] = accuracy(predict(predictor.head, z["val"]), data.val.y)
        per = [float(mse_per_student(z["val"][None, :, a:b], feats_val[None, :, a:b])[0]) for a, b in bounds]
        metrics[f"feature_mse{'_last' if tag == 'last' else ''}"] = float(np.dot(per, sizes) / sum(sizes))
        metrics[f"feature_mse_per_student{'_last' if tag == 'last' else ''}"] = per
        if p.finetune:
            ft_rows, ft_time = finetune(ctx, p.finetune_epochs, predictor.head, z, tag)
            rows += ft_rows
            metrics[f"finetune_time_s_{tag}"] = ft_time
            metrics[f"val_acc{suffix}_finetune"] = accuracy(predict(predictor.head, z["val"]), data.val.y)
        states[tag] = {k: v.detach().clone() for k, v in predictor.state_dict().items()}
    metrics["finetuned"] = bool(p.finetune)
    if discs[0] is not None:
        gan_metrics(ctx, predictor, trained, bounds, feats_val, discs, metrics)
    return metrics, states, rows


def finetune(ctx: Context, epochs: int, head: nn.Module, z: dict[str, Tensor], tag: str):
    """Train only the head with CE on the frozen students' outputs `z` (eval mode, so computed
    once); the head ends at its last epoch for `last`, at its val-best epoch for `valbest`."""
    y_tr, y_val = ctx.split("train")[1], ctx.split("val")[1]
    opt = ctx.optimizer(head.parameters())
    loss = lambda b: {"ce": head_loss(head(b.x), b.y)}  # noqa: E731
    res = ctx.train([Step("finetune", opt, loss)], {"head": head}, inputs=(z["train"], y_tr), epochs=epochs,
                    desc=f"tcn finetune {tag}", evaluate=lambda: {"val_acc": accuracy(predict(head, z["val"]), y_val)})
    if tag == "valbest":
        res.restore_best({"head": head})
    head.eval()
    return [{**r, "stage": f"finetune_{tag}"} for r in res.history], res.train_time_s
