"""Dry-run speed of the workflow (issue #4): prints wall times, asserts nothing.

1. A generated 10,000-cell grid (cell = env, agent, seed, utd, width, batch size, lr):
   4 envs x 5 utd x 5 widths x 5 batch sizes x 4 lrs = 2,000 configurations x 5 seeds, packed
   as the default (all seeds of a configuration in one job: 2,000 train jobs) and one seed per job
   (10,000 train jobs). Target: <= 10 s for `snakemake -n`.
2. A no-op rerun of the default study (config/config.yaml) after its outputs exist (placeholders
   marked up to date with `snakemake --touch`, in a scratch copy). Target: <= 5 s.

Run: .venv/bin/python benchmarks/workflow_dryrun.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import resource
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


def timed(cmd: list[str], cwd: Path, repeat: int) -> tuple[float, float, str]:
    """Median wall time and CPU time (user + sys of the child) of `repeat` runs."""
    walls, cpus, out = [], [], ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        out = proc.stdout + proc.stderr
    return statistics.median(walls), statistics.median(cpus), out


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
        load = os.getloadavg()[0]
        print(
            f"snakemake dry runs, median of {args.repeat}; {os.cpu_count()} CPUs, "
            f"load average {load:.1f} at the start (wall times grow with other load; CPU less so)"
        )
        for spj, label in [(None, "all seeds per job"), (1, "one seed per job")]:
            cfg = work / f"grid_{spj}.yaml"
            cfg.write_text(yaml.safe_dump(big_grid(spj)))
            cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(work)]
            cmd += ["--configfile", str(cfg), "-n", "--quiet", "rules"]
            wall, cpu, out = timed(cmd, work, args.repeat)
            print(
                f"10,000-cell grid ({label}, {count_train_jobs(out)} train jobs): "
                f"{wall:.2f} s wall, {cpu:.2f} s CPU (target <= 10 s)"
            )

        study = work / "default"
        study.mkdir()
        shutil.copytree(ROOT / "config", study / "config")
        base = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(study)]
        # make the study look built: a placeholder for every output, then --touch marks them up
        # to date and records their provenance (params, inputs) as a real run would
        summary = subprocess.run(
            base + ["--summary"], cwd=study, capture_output=True, text=True, check=True
        ).stdout
        for line in summary.splitlines()[1:]:
            path = study / line.split("\t")[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        subprocess.run(
            base + ["--touch", "--forceall", "-c1", "--quiet", "all"],
            check=True,
            cwd=study,
            capture_output=True,
        )
        wall, cpu, out = timed(base + ["-n"], study, args.repeat)
        nothing = "Nothing to be done" in out
        print(
            f"no-op rerun of the default study: {wall:.2f} s wall, {cpu:.2f} s CPU (target <= 5 s)"
            + ("" if nothing else "  [WARNING: jobs were scheduled]")
        )


if __name__ == "__main__":
    main()
