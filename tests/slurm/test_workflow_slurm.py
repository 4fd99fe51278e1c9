"""The workflow on a real SLURM cluster through the shipped profile (profiles/slurm).

The profile is used as a user would after the edits its comments ask for: partition and account
set, `gpu: 0` (the test node has no GPU). Only the status-poll timings are shortened, so that the
tests do not wait 40 s before the plugin's first `sacct` call.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from studies import (
    RETRAINED,
    SHARED_STEPS,
    copy_study,
    forget_cell,
    run_dirs,
    shared_config,
    snakemake_cmd,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+)")


TARGETS = ["results/tables/curves.parquet", "results/tables/crossings.parquet"]


def test_profile_name_resolves_from_the_repository_root(tmp_path):
    """`snakemake --profile slurm` run from the root finds profiles/slurm (through the `slurm`
    link) and its train resources scale with width, sigma and the retry attempt."""
    config = shared_config()
    config["grid"][0].update(utd=[1, 4], widths=[256, 1024])
    proc = subprocess.run(
        snakemake_cmd(tmp_path, config, *TARGETS, "--profile", "slurm", "-n"),
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Using profile slurm" in out
    runtimes = {}
    for block in out.split("rule train:")[1:]:
        wildcards = dict(
            re.findall(r"(\w+)=([^,\s]+)", block.split("wildcards:")[1].split("\n")[0])
        )
        resources = dict(
            re.findall(r"(\w+)=([^,\s]+)", block.split("resources:")[1].split("\n")[0])
        )
        assert resources["gpu"] == "1"
        runtimes[(float(wildcards["utd"]), int(wildcards["width"]))] = int(resources["runtime"])
    assert len(runtimes) == 4
    assert runtimes[(1, 1024)] > runtimes[(1, 256)]
    assert runtimes[(4, 1024)] > runtimes[(1, 1024)]
    # the analysis rules run as one group job
    assert "Group job analysis" in out

    # the same expressions for a retry (Snakemake evaluates them with `wildcards` and `attempt`)
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    wildcards = SimpleNamespace(utd="2", width="1024", batch_size="256", first="0", last="4")
    expr = profile["set-resources"]["train"]

    def value(name, attempt):
        return eval(expr[name], {"wildcards": wildcards, "attempt": attempt})

    assert value("runtime", 2) == 2 * value("runtime", 1)
    assert value("mem_mb", 2) > value("mem_mb", 1)


# --------------------------------------------------------------------------- on the cluster


def cluster_profile(cluster, path: Path, retries: int | None = None) -> Path:
    """The shipped profile with the edits its comments ask a user to make for this cluster."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"].update(
        slurm_partition=cluster.partition, slurm_account=cluster.account
    )
    profile["set-resources"]["train"]["gpu"] = 0
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["seconds-between-status-checks"] = 2
    profile["slurm-logdir"] = str(path / "slurm_logs")
    profile["slurm-keep-successful-logs"] = True
    profile["latency-wait"] = 10
    if retries is not None:
        profile["retries"] = retries
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def result_files(workdir: Path) -> set[str]:
    """Relative paths of the study's outputs (without logs and benchmarks)."""
    root = workdir / "results"
    skip = ("logs", "benchmarks")
    return {
        str(p.relative_to(workdir))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


@pytest.mark.slurm
@pytest.mark.slow
def test_study_through_slurm_retries_a_cancelled_job_and_matches_the_local_build(
    slurm_cluster, default_study, tmp_path
):
    """A copy of the shared study (built locally) with its cheapest cell forgotten is finished
    through the profile: the cell's train job is cancelled with `scancel` after its first
    checkpoint, Snakemake resubmits it (retries: 1), the retry resumes from the checkpoint that
    SIGTERM wrote, and the analysis runs as one group job. Every job went through sbatch and is
    accounted; the cell's curves and the study tables equal the local build's exactly."""
    study = copy_study(default_study.workdir, tmp_path / "study")
    forget_cell(study, RETRAINED)
    config = copy.deepcopy(default_study.config)
    config["train"]["checkpoint_every"] = 1000  # operational: no other cell goes stale
    profile = cluster_profile(slurm_cluster, tmp_path / "profile", retries=1)
    finished = {d: (d / "curves.parquet").stat().st_mtime_ns for d in run_dirs(study)}
    run_dir = study / RETRAINED

    proc = subprocess.Popen(
        snakemake_cmd(study, config, *TARGETS, "--profile", str(profile)),
        cwd=REPO, env=slurm_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: (run_dir / "checkpoint.pkl").exists(), proc, timeout=600, what="a checkpoint"
        )
        running = slurm_cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
        assert len(running) == 1, running
        first = running[0]
        slurm_cluster.run("scancel", first)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + "\n" + slurm_cluster.diagnostics()

    # three sbatch jobs: the cancelled train job, its retry, the analysis group job
    assert slurm_cluster.wait_for_state(first).startswith("CANCELLED")
    jobids = [slurm for _, slurm in SUBMITTED.findall(out)]
    assert len(jobids) == 3 and jobids[0] == first, out
    for jobid in jobids[1:]:
        assert slurm_cluster.sacct_state(jobid) == "COMPLETED", jobid
    assert "group job analysis" in out.lower(), out
    logs = {p.stem: p for p in (profile / "slurm_logs").rglob("*.log")}
    assert set(logs) == set(jobids), logs
    assert sum("rule_train" in str(p) for p in logs.values()) == 2, logs

    # the retry ran inside its SLURM job and continued from the step the cancelled job reached
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["complete"] and summary["env_steps"] == SHARED_STEPS
    assert summary["slurm_job_id"] == jobids[1]
    assert len(summary["resumed_at_steps"]) == 1
    assert 1000 <= summary["resumed_at_steps"][0] < SHARED_STEPS
    assert not (run_dir / "checkpoint.pkl").exists()

    # no other cell was redone; the outputs are the local build's, bit for bit
    for run, mtime in finished.items():
        assert (run / "curves.parquet").stat().st_mtime_ns == mtime, f"{run} was redone"
    original = default_study.workdir
    assert result_files(study) <= result_files(original)
    for name in (f"{RETRAINED}/curves.parquet", *TARGETS):
        pd.testing.assert_frame_equal(
            pd.read_parquet(study / name),
            pd.read_parquet(original / name),
            check_exact=True,
            obj=name,
        )
