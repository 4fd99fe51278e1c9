"""The one-node SLURM test cluster works for real: sbatch, sacct accounting, scancel, and
Snakemake's SLURM executor plugin with its default sacct-based status checks."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def test_sbatch_job_runs_and_is_accounted(slurm_cluster, tmp_path):
    out = tmp_path / "hi.txt"
    jobid = slurm_cluster.sbatch("-o", str(tmp_path / "slurm-%j.log"), "--wrap", f"echo hi > {out}")
    state = slurm_cluster.wait_for_state(jobid)
    assert state == "COMPLETED"
    assert out.read_text() == "hi\n"
    # the record comes from slurmdbd: it names the job's account, user and exit code
    fields = slurm_cluster.run(
        "sacct", "-X", "-n", "--parsable2", "-j", jobid, "-o", "JobIDRaw,Account,State,ExitCode"
    ).stdout.strip()
    assert fields == f"{jobid}|{slurm_cluster.account}|COMPLETED|0:0"


def test_scancel_two_concurrent_jobs(slurm_cluster, tmp_path):
    # DefMemPerCPU is set, so two 1-CPU jobs run side by side on the 2-CPU node
    ncpus = int(slurm_cluster.run("sinfo", "-h", "-N", "-n", "localhost", "-o", "%c").stdout)
    n = min(2, ncpus)
    pidfiles = [tmp_path / f"pid{i}" for i in range(n)]
    jobids = [
        slurm_cluster.sbatch(
            "-c", "1", "-o", str(tmp_path / "slurm-%j.log"), "--wrap", f"echo $$ > {p}; sleep 300"
        )
        for p in pidfiles
    ]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = slurm_cluster.run(
            "squeue", "-h", "-j", ",".join(jobids), "-o", "%i %T"
        ).stdout.split()
        if states.count("RUNNING") == n and all(p.exists() and p.read_text() for p in pidfiles):
            break
        time.sleep(0.2)
    else:
        pytest.fail(
            f"jobs {jobids} were not all running together: {states}\n" + slurm_cluster.diagnostics()
        )
    pids = [int(p.read_text()) for p in pidfiles]
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)

    slurm_cluster.run("scancel", *jobids)
    for jobid in jobids:
        assert slurm_cluster.wait_for_state(jobid).startswith("CANCELLED")
    # the job's processes are gone (proctrack/linuxproc killed them)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_snakemake_slurm_executor(slurm_cluster, tmp_path):
    """Two dependent rules, each a SLURM job, through a profile, with real sacct status checks."""
    workdir = tmp_path / "wf"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(
        textwrap.dedent(
            """\
            localrules: all

            rule all:
                input: "b.txt"

            rule a:
                output: "a.txt"
                shell: 'echo "$SLURM_JOB_ID" > {output}'

            rule b:
                input: "a.txt"
                output: "b.txt"
                shell: 'cat {input} > {output}; echo "$SLURM_JOB_ID" >> {output}'
            """
        )
    )
    profile = tmp_path / "profile"
    profile.mkdir()
    logdir = tmp_path / "slurm_logs"
    (profile / "config.yaml").write_text(
        textwrap.dedent(
            f"""\
            executor: slurm
            jobs: 2
            latency-wait: 5
            printshellcmds: true
            # status checks: sacct (the plugin's default where sacct exists), polled quickly
            slurm-status-command: sacct
            slurm-init-seconds-before-status-checks: 1
            seconds-between-status-checks: 1
            slurm-logdir: {logdir}
            slurm-keep-successful-logs: true
            default-resources:
              - slurm_partition={slurm_cluster.partition}
              - slurm_account={slurm_cluster.account}
              - runtime=5
              - mem_mb=500
            """
        )
    )
    t0 = time.monotonic()
    proc = slurm_cluster.run(
        SNAKEMAKE,
        "--profile",
        str(profile),
        "--directory",
        str(workdir),
        "--snakefile",
        str(workdir / "Snakefile"),
        check=False,
        timeout=240,
    )
    elapsed = time.monotonic() - t0
    print(f"snakemake --executor slurm: {elapsed:.1f} s")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log + "\n" + slurm_cluster.diagnostics()

    job_a = (workdir / "a.txt").read_text().split()
    job_b = (workdir / "b.txt").read_text().split()
    assert len(job_a) == 1 and job_a[0].isdigit(), job_a
    assert len(job_b) == 2 and job_b[0] == job_a[0] and job_b[1].isdigit(), job_b
    assert job_a[0] != job_b[1]
    for jobid in (job_a[0], job_b[1]):
        # each rule ran as its own SLURM job, recorded in accounting, with a kept log file
        assert slurm_cluster.sacct_state(jobid) == "COMPLETED"
        assert f"submitted with SLURM jobid {jobid} " in log, log
        assert list(logdir.rglob(f"{jobid}.log")), f"no log for job {jobid} under {logdir}"
