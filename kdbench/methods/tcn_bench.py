"""`kdbench bench` benchmarks that need TCN's own code (fused students, the TCN predictor, its
students' FLOPs); registered into kdbench.bench's registry when the method files load (core code
never imports this package). The one that runs the TCN paper's grid is in tcn_bench_grid.py.

- `fused`       n identical TCN students one after another vs fused (one grouped computation)
- `efficiency`  achieved GFLOP/s of the TCN students' training loop vs this machine's matmul peak
- `inference`   the teacher vs TCN's 8 fused students (+ head) at batch 1 and 256
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from kdbench.bench import BENCHES, BenchRow, Goal, Session, Timed, fit_once, interleave, loop_seconds, median
from kdbench.bench.compare import max_abs_diff, max_rel_diff, off_fraction
from kdbench.bench.timing import forward_ms, matmul_peak_gflops

from .tcn import TCNPredictor, chunk_sizes, fuse_students

@BENCHES.register("fused")
def bench_fused(s: Session) -> list[BenchRow]:
    """Identical TCN students one after another vs fused (one grouped computation): n = 8 ff (the
    goal), n = 8 gan (no goal: its discriminators are most of the FLOPs, docs/performance.md) and
    n = 4 ff, where `fused=auto` trains them one after another on CPU (no goal)."""
    rows = []
    for mode, n in (("ff", 8), ("gan", 8), ("ff", 4)):
        setups = {kind: s.setup("tcn", n_students=n, mode=mode, epochs=1, params={"fused": kind == "fused", "finetune": False})
                  for kind in ("sequential", "fused")}
        fits: dict[str, list[Timed]] = {k: [] for k in setups}

        def arm(kind: str, setups=setups, fits=fits) -> float:
            fits[kind].append(fit_once(setups[kind], s.context(setups[kind], s.sizes.fused_train)))
            return loop_seconds(fits[kind][-1].fit)

        times = interleave({k: (lambda k=k: arm(k)) for k in setups}, s.cfg.n_rounds)
        seq, fus = fits["sequential"][0].fit, fits["fused"][0].fit
        cpu = {k: median([t.train_cpu_s for t in v]) for k, v in fits.items()}
        state_diff = max_abs_diff(seq.last_state, fus.last_state)
        mse_diff = max_rel_diff(seq.metrics["feature_mse_per_student"], fus.metrics["feature_mse_per_student"])
        off = off_fraction(seq.last_state, fus.last_state, 1e-4)
        if mode == "ff":  # exact up to float reassociation, which Adam turns into lr-sized steps on
            # entries whose gradient is ~0 (noise): a few entries may differ, the outcome may not
            checks = {"per-student states equal (atol 1e-4) on >= 99.9% of entries": off <= 1e-3,
                      "per-student feature MSE equal (rel 1e-4)": mse_diff <= 1e-4}
        else:  # Adam + BN: statistically equal only (see kdbench/methods/tcn.py)
            checks = {"per-student feature MSE agree (rel 5e-2; gan+Adam is statistical)": mse_diff <= 5e-2}
        repeat_same = all(max_abs_diff(t.fit.last_state, fits[k][0].fit.last_state) == 0.0 for k in fits for t in fits[k])
        checks["repeated fits bit-identical"] = repeat_same
        n_train = min(s.sizes.fused_train, len(setups["fused"].data.train))
        students = seq.students
        auto = "fused" if fuse_students(students, "auto", setups["fused"].data.spec, s.device) else "one after another"
        rows.append(BenchRow(
            f"fused: {mode} n={n} sequential / fused", "sequential", median(times["sequential"]), "fused",
            median(times["fused"]), "s", Goal(">=", 1.4) if (mode, n) == ("ff", 8) else Goal(),
            notes=f"1 epoch on {n_train} samples; fusion {'/'.join(fus.metrics['fusion'])}; fused=auto trains these {auto}; "
                  f"CPU-time ratio of the training stage {cpu['sequential'] / cpu['fused']:.2f}; "
                  f"max |state diff| {state_diff:.2g} ({off:.2%} of entries > 1e-4), max rel feature-MSE diff {mse_diff:.2g}",
            checks=checks,
            details={"sequential_s": times["sequential"], "fused_s": times["fused"], "max_state_diff": state_diff, "fraction_of_entries_off": off,
                     "max_rel_feature_mse_diff": mse_diff, "fused_groups": fus.metrics["fused_groups"],
                     "feature_mse_per_student": {"sequential": seq.metrics["feature_mse_per_student"],
                                                 "fused": fus.metrics["feature_mse_per_student"]},
                     "fit_wall_s": {k: [t.wall_s for t in v] for k, v in fits.items()},
                     "fit_cpu_s": {k: [t.cpu_s for t in v] for k, v in fits.items()},
                     "train_stage_cpu_s": {k: [t.train_cpu_s for t in v] for k, v in fits.items()}},
        ))
    return rows


@BENCHES.register("efficiency")
def bench_efficiency(s: Session) -> list[BenchRow]:
    """Achieved GFLOP/s of the TCN student training loop (fvcore forward FLOPs x 3 for forward +
    backward, x samples / loop time) against the float32 matmul peak measured alongside; also per
    CPU second (both sides), which a loaded machine does not distort. The goal (30% of the peak)
    stays for the paper-size n = 1 student; the tiny n = 4 and n = 8 students are reported only
    (their few channels cannot fill the vector units, docs/performance.md)."""
    from kdbench.models import count_macs

    z = s.sizes
    rows = []
    for n in (1, 4, 8):
        setup = s.setup("tcn", n_students=n, mode="ff", epochs=1, params={"finetune": False})
        flops: dict[str, Any] = {}

        def loop(setup=setup, flops=flops) -> tuple[float, float]:
            ctx = s.context(setup, z.eff_train, n_eval=z.eff_eval)
            timed = fit_once(setup, ctx)
            if "per_sample" not in flops:
                flops["per_sample"] = sum(2 * count_macs(m, ctx.data.spec) for m in timed.fit.students)
                flops["fusion"] = "/".join(sorted(set(timed.fit.metrics["fusion"])))
                flops["samples"] = len(ctx.data.train)
            work = 3 * flops["per_sample"] * flops["samples"] / 1e9
            return work / loop_seconds(timed.fit), work / timed.train_cpu_s

        res = interleave({"peak": lambda: matmul_peak_gflops(z.peak_size, s.device), "loop": loop}, s.cfg.n_rounds)
        achieved, peak = median([w for w, _ in res["loop"]]), median([w for w, _ in res["peak"]])
        achieved_cpu, peak_cpu = median([c for _, c in res["loop"]]), median([c for _, c in res["peak"]])
        rows.append(BenchRow(
            f"efficiency: TCN n={n} training loop / matmul peak", "achieved", achieved, "peak", peak, "GFLOP/s",
            Goal(">=", 0.30) if n == 1 else Goal(),
            notes=f"{n} student(s), trained {flops['fusion']} (fused=auto), {flops['per_sample'] / 1e6:.3g} MFLOP/sample forward (x3), "
                  f"{flops['samples']} samples; peak = {z.peak_size}^3 float32 matmul; per CPU second "
                  f"{achieved_cpu:.3g} / {peak_cpu:.3g} = {achieved_cpu / peak_cpu:.2f}",
            details={"achieved_gflops": [w for w, _ in res["loop"]], "peak_gflops": [w for w, _ in res["peak"]],
                     "achieved_gflops_per_cpu_s": [c for _, c in res["loop"]], "peak_gflops_per_cpu_s": [c for _, c in res["peak"]],
                     "fraction_per_cpu_s": achieved_cpu / peak_cpu, "forward_flops_per_sample": flops["per_sample"],
                     "cpu_time_note": "achieved per CPU s includes the (cut) per-epoch validation in its time, not in its FLOPs"},
        ))
    return rows


@BENCHES.register("inference")
def bench_inference(s: Session) -> list[BenchRow]:
    """The teacher vs the deployed TCN predictor with 8 students fused (+ the teacher's head)."""
    from kdbench.models import dense_view
    from kdbench.tcn_fuse import FusedConcat

    setup = s.setup("tcn", n_students=8, mode="ff")
    ctx = s.context(setup)
    view = dense_view(setup.teacher.model)
    torch.manual_seed(0)
    students = [ctx.make_student(out_features=w, n_students=8) for w in chunk_sizes(view.dim, 8)]
    head = copy.deepcopy(view.classifier)
    sequential = TCNPredictor(students, head).to(s.device).eval()
    fused = nn.Sequential(FusedConcat(students), head).to(s.device).eval()
    example = setup.data.test.x[:1]
    rows = []
    for batch in (1, 256):
        x = example.expand(batch, *example.shape[1:]).contiguous().to(s.device)
        with torch.inference_mode():
            same = torch.allclose(fused(x), sequential(x), rtol=1e-5, atol=1e-5)
        reps = s.sizes.latency_repeats
        res = interleave({"teacher": lambda: forward_ms(setup.teacher.model, x, s.device, reps),
                          "fused": lambda: forward_ms(fused, x, s.device, reps),
                          "sequential": lambda: forward_ms(sequential, x, s.device, reps)}, s.cfg.n_rounds)
        rows.append(BenchRow(
            f"inference: teacher / TCN n=8 fused, batch {batch}", "teacher", median(res["teacher"]), "TCN fused",
            median(res["fused"]), "ms", Goal(">=", 3.0) if batch == 256 else Goal(),
            notes=f"median of {reps} forwards x {s.cfg.n_rounds} rounds; TCN sequential {median(res['sequential']):.3g} ms",
            checks={"fused output equals sequential": same},
            details={k + "_ms": v for k, v in res.items()},
        ))
    return rows
