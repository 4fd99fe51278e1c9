"""Speed of ``python -m valuescale.status`` on a 10,000-cell study (issue #15): prints wall
times, asserts nothing. Target: <= 2 s for the whole command.

The study is the dry-run benchmark's grid (``workflow_dryrun.py``): 4 envs x 5 utd x 5 widths x
5 batch sizes x 4 lrs = 2,000 configurations x 5 seeds = 10,000 cells, packed one seed per
train job (10,000 run folders: the most folders a 10,000-cell study can have) and, second, all
seeds of a configuration in one job (2,000 folders). Its results folder is generated: 60 % of
the jobs done (a run.json shaped like the engine's, with per-seed ``last_eval``), 5 % running (a
``.engine.lock`` held by a child process of this script, progress.json), 10 % stopped
(checkpoint.pkl, progress.json, a log), 2 % failed (a log ending in a traceback), the rest
pending (no folder).

Run: .venv/bin/python benchmarks/status_10k.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from workflow_dryrun import big_grid  # noqa: E402

from valuescale.checkpoint import LOCK_NAME  # noqa: E402
from valuescale.study import run_name, train_jobs, train_settings, validate  # noqa: E402

# Holds an flock on every lock file named on stdin until its stdin closes (a live engine each).
HOLDER = """
import fcntl, os, sys
fds = []
for line in sys.stdin:
    if line.strip() == "go":
        print("held", flush=True)
        continue
    fd = os.open(line.strip(), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
    fds.append(fd)
"""


def summary(cfg: dict, job, steps: int, complete: bool) -> dict:
    """A summary shaped like the engine's run.json / progress.json."""
    seeds = [str(s) for s in range(job.first, job.last + 1)]
    config = dict(train_settings(cfg, job.env), env=job.env, agent=job.agent, utd=float(job.utd),
                  critic_width=job.width, batch_size=job.batch_size, lr=float(job.lr),
                  seeds=[int(s) for s in seeds])  # fmt: skip
    return {
        "complete": complete,
        "config": config,
        "versions": {"jax": "0.7.0", "flax": "0.11.0", "numpy": "2.2.0", "valuescale": "0.1.0"},
        "obs_dim": 17,
        "act_dim": 6,
        "critic_params": 1_000_000,
        "passive_critic_params": None,
        "env_steps": steps,
        "gradient_steps": steps * 2,
        "reset_steps": [],
        "wall_time_s": 3600.0,
        "env_steps_per_s": steps / 3600.0,
        "resumed_at_steps": [],
        "seeds": {s: {"status": "ok"} for s in seeds},
        "last_eval": {s: {"step": steps, "return": 500.0 + random.random()} for s in seeds},
        "cpu_cores": 1,
        "platform": "cpu",
        "slurm_job_id": None,
    }


def make_study(root: Path, seeds_per_job: int | None) -> tuple[Path, subprocess.Popen]:
    """The config file and results folder of the study; the process holding the running jobs."""
    cfg = big_grid(seeds_per_job)
    config_file = root / "study.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    validate(cfg)
    jobs = train_jobs(cfg)
    rng = random.Random(0)
    results = root / "results"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    steps = cfg["train"]["steps"] if "train" in cfg else 1_000_000
    for job in jobs:
        u = rng.random()
        name = run_name(job)
        folder = results / "runs" / name
        log = results / "logs" / "train" / f"{name}.log"
        if u < 0.60:
            folder.mkdir(parents=True)
            (folder / "run.json").write_text(json.dumps(summary(cfg, job, steps, True), indent=2))
            (folder / "curves.parquet").write_bytes(b"")
        elif u < 0.65:
            folder.mkdir(parents=True)
            (folder / "progress.json").write_text(json.dumps(summary(cfg, job, 5000, False)))
            (folder / "checkpoint.pkl").write_bytes(b"")
            holder.stdin.write(f"{folder / LOCK_NAME}\n")
        elif u < 0.75:
            folder.mkdir(parents=True)
            (folder / "progress.json").write_text(json.dumps(summary(cfg, job, 5000, False)))
            (folder / "checkpoint.pkl").write_bytes(b"")
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("... INFO step 5000\n... WARNING stopped by SIGTERM at env step 5000\n")
        elif u < 0.77:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(
                "Traceback (most recent call last):\n  ...\nMemoryError: out of memory\n"
            )
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "held"
    return config_file, holder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for seeds_per_job in (1, None):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            config_file, holder = make_study(root, seeds_per_job)
            made = time.perf_counter() - t0
            folders = sum(1 for _ in (root / "results" / "runs").glob("*/*/*/*"))
            cmd = [sys.executable, "-m", "valuescale.status", "--configfile", str(config_file)]
            times, cpu = [], []
            for _ in range(args.repeat):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                out = subprocess.run(cmd + ["--json"], cwd=root, capture_output=True, text=True)
                times.append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                assert out.returncode == 0, out.stderr
            status = json.loads(out.stdout)
            t0 = time.perf_counter()
            table = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
            table_s = time.perf_counter() - t0
            holder.stdin.close()
            holder.wait()
            print(
                f"seeds_per_job={seeds_per_job}: {len(status['cells'])} train jobs, {folders} run "
                f"folders (generated in {made:.1f} s), counts {status['counts']}"
            )
            print(
                f"  status --json: median {statistics.median(times):.2f} s wall "
                f"(min {min(times):.2f}, max {max(times):.2f}), "
                f"median {statistics.median(cpu):.2f} CPU-s; table: {table_s:.2f} s "
                f"({len(table.stdout.splitlines())} lines)"
            )
            print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
