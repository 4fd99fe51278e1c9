"""The workflow on a real SLURM cluster through the shipped profile (profiles/slurm).

The profile is used as a user would after the edits its comments ask for: partition and account
set, `gpu: 0` (the test node has no GPU). Only the status-poll timings are shortened, so that the
tests do not wait 40 s before the plugin's first `sacct` call.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+)")


def tiny_study(steps: int, widths: list[int], checkpoint_every: int) -> dict:
    """One cheap env, one seed, tiny networks: a train job is mostly JAX start-up and compiling."""
    return {
        "seeds": [0],
        "grid": [
            {
                "envs": ["cartpole-balance"],
                "utd": [1],
                "widths": widths,
                "batch_sizes": [16],
                "lrs": [3.0e-4],
            }
        ],
        "train": {
            "steps": steps,
            "warmup_steps": 200,
            "eval_interval": 250,
            "eval_episodes": 1,
            "replay_size": steps,
            "checkpoint_every": checkpoint_every,
            "log_interval": 250,
            "actor_width": 16,
            "n_quantiles": 4,
            "max_episode_steps": 250,
        },
        "analysis": {"envs": {"cartpole-balance": {"j_min": 100.0}}},
    }


TARGETS = ["results/tables/curves.parquet", "results/tables/crossings.parquet"]


def write_study(workdir: Path, study: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_profile_name_resolves_from_the_repository_root(tmp_path):
    """`snakemake --profile slurm` run from the root finds profiles/slurm (through the `slurm`
    link) and its train resources scale with width, sigma and the retry attempt."""
    study = tiny_study(steps=1000, widths=[256, 1024], checkpoint_every=500)
    study["grid"][0]["utd"] = [1, 4]
    config = write_study(tmp_path, study)
    proc = subprocess.run(
        [*SNAKEMAKE, *TARGETS, "--profile", "slurm", "-n", "--directory", str(tmp_path),
         "--configfile", str(config)],
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
def test_tiny_study_through_slurm_matches_the_local_run(slurm_cluster, tmp_path):
    study = tiny_study(steps=1000, widths=[16, 24], checkpoint_every=500)

    local = tmp_path / "local"
    config = write_study(local, study)
    proc = subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), *TARGETS, "--cores", "2",
         "--directory", str(local), "--configfile", str(config)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    remote = tmp_path / "slurm"
    config = write_study(remote, study)
    profile = cluster_profile(slurm_cluster, tmp_path / "profile")
    t0 = time.monotonic()
    proc = slurm_cluster.run(
        *SNAKEMAKE, "-s", str(REPO / "Snakefile"), *TARGETS, "--profile", str(profile),
        "--directory", str(remote), "--configfile", str(config),
        check=False, timeout=1200,
    )  # fmt: skip
    print(f"tiny study through SLURM: {time.monotonic() - t0:.1f} s")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log + "\n" + slurm_cluster.diagnostics()

    # every job went through sbatch: 2 train jobs and one analysis group job, all accounted
    jobids = [slurm for _, slurm in SUBMITTED.findall(log)]
    assert len(jobids) == 3, log
    for jobid in jobids:
        assert slurm_cluster.sacct_state(jobid) == "COMPLETED", jobid
    logs = {p.stem: p for p in (profile / "slurm_logs").rglob("*.log")}
    assert set(logs) == set(jobids), logs
    assert sum("rule_train" in str(p) for p in logs.values()) == 2, logs
    # each train run ran inside its SLURM job (the engine records the job id)
    for run_json in (remote / "results" / "runs").rglob("run.json"):
        summary = json.loads(run_json.read_text())
        assert summary["complete"]
        assert summary["slurm_job_id"] in jobids

    # the same outputs as the local run
    assert result_files(remote) == result_files(local)
    local_runs = {p.name for p in (local / "results" / "runs").rglob("seeds*")}
    assert len(local_runs) == 1  # one seed block per configuration; two configurations
    assert len(list((remote / "results" / "runs").rglob("run.json"))) == 2


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_of_a_train_job_is_retried_and_resumes_from_the_checkpoint(slurm_cluster, tmp_path):
    study = tiny_study(steps=4000, widths=[16], checkpoint_every=250)
    workdir = tmp_path / "wf"
    config = write_study(workdir, study)
    profile = cluster_profile(slurm_cluster, tmp_path / "profile", retries=1)
    run_dir = workdir / "results/runs/cartpole-balance/bro/utd1_w16_b16_lr3e-4/seeds0-0"
    target = str((run_dir / "curves.parquet").relative_to(workdir))
    proc = subprocess.Popen(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), target, "--profile", str(profile),
         "--directory", str(workdir), "--configfile", str(config)],
        env=slurm_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint.pkl").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        running = slurm_cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
        assert len(running) == 1, running
        first = running[0]
        slurm_cluster.run("scancel", first)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + "\n" + slurm_cluster.diagnostics()

    assert slurm_cluster.wait_for_state(first).startswith("CANCELLED")
    jobids = [slurm for _, slurm in SUBMITTED.findall(out)]
    assert len(jobids) == 2 and jobids[0] == first, out
    assert slurm_cluster.sacct_state(jobids[1]) == "COMPLETED"
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["complete"] and summary["env_steps"] == 4000
    assert summary["slurm_job_id"] == jobids[1]
    # the retry continued from the step the cancelled job reached (its SIGTERM checkpoint)
    assert len(summary["resumed_at_steps"]) == 1
    assert 250 <= summary["resumed_at_steps"][0] < 4000
    assert not (run_dir / "checkpoint.pkl").exists()
