"""Dry-run speed of the workflow (issue #4): prints wall times, asserts nothing.

1. A generated 10,000-cell grid (cell = env, agent, seed, utd, width, batch size, lr):
   4 envs x 5 utd x 5 widths x 5 batch sizes x 4 lrs = 2,000 configurations x 5 seeds, packed
   as the default (all seeds of a configuration in one job: 2,000 train jobs) and one seed per job
   (10,000 train jobs). Target: <= 10 s for `snakemake -n`.
2. A no-op rerun of the default study (config/config.yaml) after its outputs exist: the outputs
   are created with `snakemake --touch` in a scratch copy. Target: <= 5 s.

Run: .venv/bin/python benchmarks/workflow_dryrun.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def big_grid(seeds_per_job: int | None) -> dict:
    return {
        "results_dir": "results",
        "seeds": 5,
        "seeds_per_job": seeds_per_job,
        "grid": [
            {
                "envs": ["cheetah-run", "walker-run", "hopper-hop", "quadruped-run"],
                "agents": ["bro"],
                "utd": [0.5, 1, 2, 4, 8],
                "widths": [128, 256, 512, 1024, 2048],
                "batch_sizes": [64, 128, 256, 512, 1024],
                "lrs": [1.0e-4, 3.0e-4, 6.0e-4, 1.0e-3],
            }
        ],
    }


def timed(cmd: list[str], cwd: Path, repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        out = proc.stdout + proc.stderr
    return statistics.median(times), out


def count_train_jobs(output: str) -> int:
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "train" and parts[1].isdigit():
            return int(parts[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"snakemake dry runs, median of {args.repeat}; {os.cpu_count()} CPUs")
        for spj, label in [(None, "all seeds per job"), (1, "one seed per job")]:
            cfg = work / f"grid_{spj}.yaml"
            cfg.write_text(yaml.safe_dump(big_grid(spj)))
            cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(work)]
            cmd += ["--configfile", str(cfg), "-n", "--quiet", "rules"]
            seconds, out = timed(cmd, work, args.repeat)
            print(
                f"10,000-cell grid ({label}, {count_train_jobs(out)} train jobs): "
                f"{seconds:.2f} s (target <= 10 s)"
            )

        study = work / "default"
        study.mkdir()
        shutil.copytree(ROOT / "config", study / "config")
        base = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(study)]
        subprocess.run(base + ["--touch", "-c1", "--quiet", "all"], check=True, cwd=study)
        # --touch creates the outputs but records no metadata; touch again so every output is
        # newer than its inputs, then time the no-op dry run.
        seconds, out = timed(base + ["-n"], study, args.repeat)
        nothing = "Nothing to be done" in out
        print(
            f"no-op rerun of the default study: {seconds:.2f} s (target <= 5 s)"
            + ("" if nothing else "  [WARNING: jobs were scheduled]")
        )


if __name__ == "__main__":
    main()
