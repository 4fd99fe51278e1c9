"""Session fixture `slurm_cluster`: a real one-node SLURM cluster (with slurmdbd accounting).

`tests/slurm/cluster.sh start` brings it up (installing Debian's packages if missing) and
`cluster.sh stop` takes it down at the end of the session. Exit code 77 from `start` (not root,
no apt-get) skips the tests, unless the environment variable CI is set: then they fail.

A cluster that was already running before the session is left running afterwards; set
VALUESCALE_SLURM_KEEP=1 to keep a cluster this session started, too.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CLUSTER_SH = Path(__file__).resolve().with_name("cluster.sh")

#: states after which a job never changes again (as `sacct -o State` prints them)
TERMINAL_STATES = (
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
)


def _cluster_sh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class SlurmCluster:
    """What a test needs to talk to the cluster."""

    env: dict[str, str]  # os.environ plus SLURM_CONF (pass it to every subprocess)
    slurm_conf: Path
    state_dir: Path
    partition: str
    account: str
    cluster_name: str
    start_seconds: float  # wall time of `cluster.sh start`
    timings: dict[str, float] = field(default_factory=dict)

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, sacct, ...) against this cluster."""
        proc = subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def sbatch(self, *args: str) -> str:
        """Submit with `sbatch --parsable` to the test partition/account; returns the job id."""
        out = self.run(
            "sbatch", "--parsable", "-p", self.partition, "-A", self.account, *args
        ).stdout.strip()
        return out.split(";")[0]

    def sacct_state(self, jobid: str) -> str | None:
        """The job's state as the accounting database reports it (None: not recorded yet)."""
        out = self.run(
            "sacct",
            "-X",
            "-n",
            "--parsable2",
            "-j",
            str(jobid),
            "-o",
            "JobIDRaw,State",
            check=False,
        ).stdout
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            if jid.strip() == str(jobid):
                return state.strip()
        return None

    def wait_for_state(self, jobid: str, states=TERMINAL_STATES, timeout: float = 60) -> str:
        """Poll sacct until the job's state starts with one of `states`; return that state."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.sacct_state(jobid)
            if state and state.startswith(tuple(states)):
                return state
            time.sleep(0.2)
        raise AssertionError(
            f"job {jobid} did not reach {states} within {timeout}s (last sacct state: {state})\n"
            + self.diagnostics()
        )

    def diagnostics(self) -> str:
        return _cluster_sh("status", timeout=60).stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    was_running = _cluster_sh("status", timeout=60).returncode == 0
    t0 = time.monotonic()
    proc = _cluster_sh("start")
    start_seconds = time.monotonic() - t0
    if proc.returncode == 77:
        msg = f"no SLURM test cluster here: {proc.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (and CI is set, so this is a failure)")
        pytest.skip(msg)
    if proc.returncode != 0:
        stop = _cluster_sh("stop")
        pytest.fail(
            f"cluster.sh start failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
            f"cluster.sh stop:\n{stop.stderr}"
        )

    variables = {}
    for line in _cluster_sh("env").stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        variables[key] = value
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = variables["SLURM_CONF"]
    cluster = SlurmCluster(
        env=env,
        slurm_conf=Path(variables["SLURM_CONF"]),
        state_dir=Path(variables["VALUESCALE_SLURM_DIR"]),
        partition=variables["VALUESCALE_SLURM_PARTITION"],
        account=variables["VALUESCALE_SLURM_ACCOUNT"],
        cluster_name=variables["VALUESCALE_SLURM_CLUSTER"],
        start_seconds=start_seconds,
    )
    print(f"\nSLURM test cluster up in {start_seconds:.1f} s\n{proc.stderr}")
    try:
        yield cluster
    finally:
        if not was_running and not os.environ.get("VALUESCALE_SLURM_KEEP"):
            t0 = time.monotonic()
            stop = _cluster_sh("stop")
            if stop.returncode != 0:
                print(f"cluster.sh stop failed (exit {stop.returncode}):\n{stop.stderr}")
            else:
                print(f"SLURM test cluster stopped in {time.monotonic() - t0:.1f} s")
