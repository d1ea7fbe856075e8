"""`memory`: peak memory of a TCN run and of a `--workers 2` sweep (polled process trees), and
whether cached targets are memory-mapped and shared between workers rather than copied."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from .base import BENCHES, BenchRow, Goal
from .session import Session


def _tree_memory(proc: Any) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) in MiB over a process and its descendants (PSS: shared pages split
    among the processes mapping them, so shared memory is counted once)."""
    import psutil

    rss = pss = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return rss / 2**20, pss / 2**20


def run_polled(cmd: list[str], env: dict[str, str], interval: float = 0.1) -> dict[str, Any]:
    """Run a command, sampling the memory of its process tree; returns peaks and the exit code."""
    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        popen = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        proc = psutil.Process(popen.pid)
        peak_rss = peak_pss = 0.0
        while popen.poll() is None:
            rss, pss = _tree_memory(proc)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(interval)
        log.seek(0)
        tail = log.read()[-2000:].decode(errors="replace")
    return {"returncode": popen.returncode, "peak_tree_rss_mb": peak_rss, "peak_tree_pss_mb": peak_pss,
            "wall_s": time.perf_counter() - t0, "output_tail": tail}


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"KDBENCH_PROGRESS": "0", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def mapped_file(t: Tensor) -> str | None:
    """The file whose memory mapping holds tensor `t`'s data (Linux /proc/self/maps), else None."""
    ptr = t.untyped_storage().data_ptr()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= ptr < hi and len(parts) == 6 and parts[5].strip().startswith("/"):
                    return parts[5].strip()
    except OSError:
        return None
    return None


_MMAP_CHILD = """
import sys, numpy as np
print("base", flush=True); sys.stdin.readline()
a = np.load(sys.argv[1], mmap_mode="r" if sys.argv[2] == "1" else None)
float(a.sum(dtype=np.float64))  # touch every page
print("ready", flush=True); sys.stdin.readline()
"""


def mmap_sharing(path: str, workers: int = 2) -> dict[str, Any]:
    """Load a cached .npy in `workers` concurrent processes with and without np.load(mmap_mode='r')
    and measure what it adds to their memory: PSS (shared pages split among sharers), USS (private)."""
    import psutil

    out: dict[str, Any] = {}
    for mmap in (True, False):
        procs = [subprocess.Popen([sys.executable, "-c", _MMAP_CHILD, path, "1" if mmap else "0"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(workers)]
        try:
            def snap() -> list[tuple[float, float, float]]:
                infos = [psutil.Process(p.pid).memory_full_info() for p in procs]
                return [(i.rss / 2**20, getattr(i, "pss", i.rss) / 2**20, i.uss / 2**20) for i in infos]

            for p in procs:
                assert p.stdout.readline().strip() == "base"
            base = snap()
            for p in procs:
                p.stdin.write("\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout.readline().strip() == "ready"
            after = snap()
        finally:
            for p in procs:
                try:
                    p.stdin.write("\n")
                    p.stdin.close()
                except OSError:
                    pass
                p.wait(timeout=60)
        delta = [tuple(a - b for a, b in zip(x, y)) for x, y in zip(after, base)]
        out["mmap" if mmap else "copy"] = {"rss_mb": sum(d[0] for d in delta), "pss_mb": sum(d[1] for d in delta),
                                           "uss_mb": sum(d[2] for d in delta)}
    out["file_mb"] = Path(path).stat().st_size / 2**20
    out["workers"] = workers
    return out


@BENCHES.register("memory")
def bench_memory(s: Session) -> list[BenchRow]:
    """Peak memory of a TCN run (its record's ru_maxrss, and the polled process tree) and of a
    `--workers 2` sweep (parent + workers, polled: RSS sum and PSS sum), against 3 GB; and whether
    the cached targets are memory-mapped and shared between workers rather than copied."""
    z = s.sizes
    limit = 3072.0
    env = _child_env(s.cfg.threads)
    rows = []
    common = ["--method", "tcn", "--dataset", z.dataset, "--students", "8", "--epochs", "1", "--no-latency",
              "--param", "finetune_epochs=1", "--device", s.cfg.device]
    if s.cfg.data_root:
        common += ["--data-root", s.cfg.data_root]
    if z.recipe is not None:
        common += ["--teacher-epochs", str(z.recipe.epochs)]
    setup = s.setup("tcn", n_students=8, mode="ff")  # teacher and targets cached before the children start
    targets = s.context(setup).targets("train")
    with tempfile.TemporaryDirectory(prefix="kdbench-bench-") as tmp:
        run = run_polled([sys.executable, "-m", "kdbench", "run", *common, "--out", str(Path(tmp, "run"))], env)
        rec = next(Path(tmp, "run").glob("*.json"), None) if run["returncode"] == 0 else None
        rec_rss = json.loads(rec.read_text())["metrics"].get("peak_rss_mb") if rec else None
        rows.append(BenchRow(
            "memory: TCN run peak RSS / 3 GB", "peak RSS", rec_rss, "limit", limit, "MiB", Goal("<=", 1.0),
            notes=f"TCN ff n=8, 1 epoch on full {z.dataset} (ru_maxrss of the run); polled tree peak "
                  f"{run['peak_tree_rss_mb']:.0f} MiB",
            checks={"run ok": run["returncode"] == 0},
            details={**{k: v for k, v in run.items() if k != "output_tail"}, **({} if run["returncode"] == 0 else {"output_tail": run["output_tail"]})},
        ))
        sw = run_polled([sys.executable, "-m", "kdbench", "sweep", *common, "--seeds", str(z.memory_sweep_runs),
                         "--workers", "2", "--threads", str(s.cfg.threads), "--out", str(Path(tmp, "sweep"))], env)
        rows.append(BenchRow(
            "memory: sweep --workers 2 peak PSS / 3 GB", "peak PSS (tree)", sw["peak_tree_pss_mb"], "limit", limit, "MiB",
            Goal("<=", 1.0),
            notes=f"{z.memory_sweep_runs} such runs; parent + forkserver + workers summed, polled every 0.1 s; PSS counts "
                  f"pages shared by forked workers (torch, preloaded by the forkserver) once; the plain RSS sum, which "
                  f"counts them per process, peaked at {sw['peak_tree_rss_mb']:.0f} MiB",
            checks={"sweep ok": sw["returncode"] == 0},
            details={**{k: v for k, v in sw.items() if k != "output_tail"}, **({} if sw["returncode"] == 0 else {"output_tail": sw["output_tail"]})},
        ))
    path = mapped_file(targets.features)
    checks = {"train targets tensor is a view of the memory-mapped .npy": path is not None and path.endswith(".npy")}
    if path is None:
        rows.append(BenchRow("memory: cached targets shared (PSS copy / mmap)", "copy", None, "mmap", None, "MiB",
                             notes="targets not memory-mapped (or no /proc/self/maps)", checks=checks))
        return rows
    share = mmap_sharing(path, workers=2)
    rows.append(BenchRow(
        "memory: cached targets in 2 workers, PSS copy / mmap", "np.load copy", share["copy"]["pss_mb"], "np.load mmap",
        share["mmap"]["pss_mb"], "MiB", Goal(">=", 1.8),
        notes=f"{Path(path).name} ({share['file_mb']:.0f} MiB) loaded in 2 processes at once; private (USS) "
              f"copy {share['copy']['uss_mb']:.0f} vs mmap {share['mmap']['uss_mb']:.0f} MiB (mmap PSS is also shared "
              f"with this bench process, which maps the same file)",
        checks=checks, details={**share, "file": path},
    ))
    return rows

