"""Time the default study's train cells: env steps/s of the full training loop, per cell.

Builds the train jobs of a study (default: ``config/config.yaml``, the README's default study)
with Snakemake into a fresh results folder (or reads a results folder that already holds them,
``--results``), then prints for every cell its wall time, CPU time, env steps/s and updates/s of
the whole loop (updates, env steps, evaluation, checkpoints: ``run.json``'s wall time, compile
included) and the Snakemake wall time of the training. The box's 2048³ float32 matmul GFLOP/s is
measured first, so that numbers from other days can be compared.

Examples::

    python benchmarks/default_study.py                      # train the default study, 2 cores
    python benchmarks/default_study.py --cores 1 --steps 3000
    python benchmarks/default_study.py --results results    # cells already trained there
    python benchmarks/default_study.py --json benchmarks/out/default_study.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from train_throughput import Timer, bench_matmul  # noqa: E402  (this folder)

from valuescale.study import load_config, run_name, train_jobs  # noqa: E402

#: the README's first command's target, relative to the study's results folder
README_TARGET = Path("figures") / "fig_scaling.pdf"


def _cpu_seconds(results: Path, name: str) -> float | None:
    """CPU seconds of one train job from Snakemake's ``benchmark:`` file, when there is one."""
    path = results / "benchmarks" / "train" / f"{name}.tsv"
    if not path.exists():
        return None
    with path.open() as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return float(row["cpu_time"])


def _print_fits(results: Path) -> list[dict]:
    """The study's D_J fits (per-env) and batch-size fits: status and exponent intervals."""
    import pandas as pd

    tables = results / "tables"
    path = tables / "fits_data_efficiency.csv"
    if not path.exists():
        print("no D_J fits (tables/fits_data_efficiency.csv is missing)")
        return []
    fits = pd.read_csv(path)
    fits = fits[fits["variant"] == "per_env"]
    print("\nD_J fits (per env), 5-95 % bootstrap intervals:")
    print(f"{'J':>8} {'status':<11} {'alpha_J':>22} {'beta_J':>22} {'D_min':>9}  both exclude 0")
    out = []
    for r in fits.itertuples():
        excl = bool(r.alpha_J_lo > 0 and r.beta_J_lo > 0)
        a = f"{r.alpha_J:.2f} [{r.alpha_J_lo:.2f}, {r.alpha_J_hi:.2f}]"
        b = f"{r.beta_J:.2f} [{r.beta_J_lo:.2f}, {r.beta_J_hi:.2f}]"
        ok = r.status == "ok"
        print(f"{r.threshold:>8.1f} {r.status:<11} {a:>22} {b:>22} {r.D_min:>9.0f}  {excl and ok}")
        out.append({"threshold": r.threshold, "status": r.status, "exclude_zero": excl})
    n_ok = sum(o["status"] == "ok" and o["exclude_zero"] for o in out)
    print(f"{n_ok} of {len(out)} thresholds: ok with both exponents bounded away from zero")
    bs = tables / "fits_batch_size.csv"
    if bs.exists():
        table = pd.read_csv(bs)
        print(f"batch-size fits: {len(table)} rows, status {dict(table['status'].value_counts())}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configfile", action="append", default=[], help="study config file(s)")
    p.add_argument("--results", type=Path, help="read the cells from here (no training)")
    p.add_argument("--cores", type=int, default=2, help="Snakemake --cores for the training")
    p.add_argument("--steps", type=int, help="train.steps override (a shorter study)")
    p.add_argument("--json", type=Path, help="also write the table here")
    args = p.parse_args(argv)

    configfiles = [str(Path(f).resolve()) for f in args.configfile]
    results_arg = args.results.resolve() if args.results else None
    os.chdir(ROOT)  # config/config.yaml is read from the repository root, as Snakemake does
    gflops = bench_matmul(Timer(max_foreign=1.0, max_retries=0), repeats=5, min_time=0.5)
    print(f"2048^3 float32 matmul: {gflops:.1f} GFLOP/s; {os.cpu_count()} CPUs")
    cfg = load_config(configfiles)
    if args.steps:
        cfg["train"]["steps"] = args.steps
    snakemake_wall = None
    tmp = None
    if results_arg is None:
        tmp = Path(tempfile.mkdtemp(prefix="valuescale-bench-"))
        results = tmp / "results"
        cfg["results_dir"] = str(results)
        study = tmp / "study.yaml"
        study.write_text(yaml.safe_dump(cfg, sort_keys=False))
        # the target first: --quiet's optional values (and --configfile's list) would swallow it
        cmd = [sys.executable, "-m", "snakemake", str(results / README_TARGET)]
        cmd += ["-s", str(ROOT / "Snakefile"), "--cores", str(args.cores)]
        cmd += ["--directory", str(tmp), "--configfile", str(study), "--quiet"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tmp)
        snakemake_wall = time.perf_counter() - start
    else:
        results = results_arg

    rows = []
    for job in train_jobs(cfg):
        name = run_name(job)
        run = json.loads((results / "runs" / name / "run.json").read_text())
        rows.append(
            {
                "cell": name,
                "seeds": len(run["seeds"]),
                "env_steps": run["env_steps"],
                "gradient_steps": run["gradient_steps"],
                "wall_s": run["wall_time_s"],
                "cpu_s": _cpu_seconds(results, name),
                "env_steps_per_s": run["env_steps"] / run["wall_time_s"],
                "updates_per_s": run["gradient_steps"] / run["wall_time_s"],
            }
        )
    print(f"{'cell':<56} {'wall s':>7} {'CPU s':>7} {'env st/s':>9} {'upd/s':>7}")
    for r in rows:
        cpu = "-" if r["cpu_s"] is None else f"{r['cpu_s']:.0f}"
        print(
            f"{r['cell']:<56} {r['wall_s']:>7.1f} {cpu:>7} "
            f"{r['env_steps_per_s']:>9.1f} {r['updates_per_s']:>7.1f}"
        )
    total = sum(r["wall_s"] for r in rows)
    print(f"{len(rows)} cells, {total:.0f} s of train-job wall time in all", end="")
    if snakemake_wall is not None:
        print(f"; the README's first command took {snakemake_wall:.0f} s on {args.cores} cores")
    else:
        print()
    fits = _print_fits(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "matmul_gflops": gflops,
            "snakemake_wall_s": snakemake_wall,
            "cells": rows,
            "fits": fits,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    if tmp is not None:
        print(f"(runs kept in {results})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
