"""Snakemake runs for the tests, and the one trained study that the workflow, report, staleness,
resume and SLURM tests share.

The shared study is the README's default study (``config/config.yaml``) with one difference, its
length: ``train.steps`` is ``SHARED_STEPS`` instead of the default's 20,000 (every other key, the
grid, seeds, evaluation, thresholds and fits included, is the default's). It is built once per
pytest run by the README's first command, ``snakemake --cores all results/figures/fig_scaling.pdf``,
then ``snakemake --cores all`` for the rest of the study. The build starts in a background thread
as soon as collection is done (``conftest.py``), so that it trains while the other tests run; the
tests that read it run last. Tests that change it work on a copy (``copy_study``).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"

#: The shared study's one departure from config/config.yaml: env steps per seed (20,000 there).
#: At 3,000 steps (three evaluations, the first at the end of the warm-up) the crossings table
#: has a row for every (cell, threshold) (test_workflow_run.py asserts that every cell has the same
#: number, more than one); the 20,000-step default's fits are measured in config/README.md
#: ("The default study") and by benchmarks/default_study.py. The build took about 6 CPU-minutes on
#: 2026-12-06 (W 8-32, 4 seeds; 9.9 on 2026-12-03 for the earlier W 32-128, 3-seed default).
SHARED_STEPS = 3000

#: the README's first command, then the rest of the study
README_TARGET = "results/figures/fig_scaling.pdf"


def default_config() -> dict:
    """config/config.yaml as Snakemake reads it."""
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def shared_config() -> dict:
    """The shared study's config: the default with ``train.steps = SHARED_STEPS``."""
    config = default_config()
    config["train"]["steps"] = SHARED_STEPS
    return config


def write_config(config: dict, path: Path) -> Path:
    """``config`` as the YAML file ``path`` that Snakemake reads with ``--configfile``."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_cmd(
    workdir: Path, config: dict, *args: str, config_file: Path | None = None
) -> list[str]:
    """``snakemake`` on this repository's Snakefile in ``workdir`` with ``config``, written to
    ``config_file`` (default ``workdir/study.yaml``; give another one to leave ``workdir`` as it
    is)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = write_config(config, config_file or workdir / "study.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE)]
    # ``args`` first: --configfile takes several values and would swallow targets after it
    return cmd + [*args, "--directory", str(workdir), "--configfile", str(cfg)]


def snakemake_without(
    workdir: Path, config: dict, modules: list[str], *args: str
) -> subprocess.CompletedProcess:
    """``snakemake`` (as ``snakemake_cmd``) in a process of its own in which each of ``modules``
    cannot be imported, as if it were not installed (run in ``workdir``)."""
    cmd = snakemake_cmd(workdir, config, *args)
    hide = "import runpy, sys; "
    hide += "".join(f"sys.modules[{name!r}] = None; " for name in modules)
    hide += "sys.argv[0] = 'snakemake'; runpy.run_module('snakemake', run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", hide, *cmd[3:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
    )


class _Server:
    """This test process's ``snakemake_server.py``: Snakemake's command line without the imports
    that each ``python -m snakemake`` repeats (started on first use, one request at a time)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.cpu_s = 0.0  # CPU time of the runs served (their processes and jobs)

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            script = Path(__file__).with_name("snakemake_server.py")
            self._proc = subprocess.Popen(
                [sys.executable, str(script)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert json.loads(self._proc.stdout.readline()) == {"ready": True}
            atexit.register(self.stop)
        return self._proc

    def run(self, argv: list[str], cwd: Path, env: dict | None, timeout: float | None) -> tuple:
        """(returncode, stdout, stderr) of ``snakemake ARGV``; TimeoutExpired past ``timeout``."""
        with self._lock, tempfile.TemporaryDirectory(prefix="snakemake-run-") as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {
                "argv": argv,
                "cwd": str(cwd),
                "env": dict(os.environ if env is None else env),
                "stdout": str(out),
                "stderr": str(err),
                "timeout": timeout,
            }
            proc = self._start()
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())
            self.cpu_s += answer["cpu_s"]
            stdout, stderr = out.read_text(), err.read_text()
        if answer["timed_out"]:
            raise subprocess.TimeoutExpired(["snakemake", *argv], timeout, stdout, stderr)
        return answer["returncode"], stdout, stderr

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)


SERVER = _Server()


def snakemake(
    workdir: Path,
    config: dict,
    *args: str,
    check: bool = True,
    timeout: float | None = None,
    env: dict | None = None,
    config_file: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``snakemake ARGS`` to completion in ``workdir`` (through ``SERVER``: the command line
    in a process of its own); with ``check``, fail with its output unless it exits 0."""
    cmd = snakemake_cmd(workdir, config, *args, config_file=config_file)
    argv = cmd[3:]  # after ``python -m snakemake``
    returncode, stdout, stderr = SERVER.run(argv, workdir, env, timeout)
    proc = subprocess.CompletedProcess(cmd, returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_study(src: Path, dst: Path) -> Path:
    """A private copy of a built study: outputs, logs, compilation cache and Snakemake's records,
    with their modification times (so that the copy is exactly as up to date as the original)."""
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    return dst


def cell_dir(env: str, utd: str, width: int, batch_size: int, lr: str, seeds: str) -> str:
    """A run folder of the study, relative to its root."""
    return f"results/runs/{env}/bro/utd{utd}_w{width}_b{batch_size}_lr{lr}/seeds{seeds}"


def _cheapest_cell() -> str:
    """The default grid's cheapest cell (its first block's first env, smallest σ and width,
    smallest batch size, first learning rate; all seeds in one job)."""
    from valuescale.study import fmt_lr, fmt_utd

    config = default_config()
    block = config["grid"][0]
    last = config["seeds"] - 1
    return cell_dir(
        block["envs"][0],
        fmt_utd(min(block["utd"])),
        min(block["widths"]),
        min(block["batch_sizes"]),
        fmt_lr(block["lrs"][0]),
        f"0-{last}",
    )


#: the cheapest cell of the default grid: the one that the kill-and-resume and SLURM tests retrain
RETRAINED = _cheapest_cell()


def run_dirs(workdir: Path) -> list[Path]:
    """Every run folder of a study (one per train job)."""
    return sorted(p.parent for p in (workdir / "results" / "runs").rglob("run.json"))


def forget_cell(workdir: Path, run: str) -> None:
    """Remove a cell's outputs from a copied study, as if it had never been trained, and the study
    tables built from them (Snakemake does not remake a missing input of an up-to-date output)."""
    shutil.rmtree(workdir / run)
    shutil.rmtree(workdir / "results" / "tables")


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail if ``proc`` ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.1)


@dataclass
class Stage:
    """One Snakemake command of the build, as run."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    files_after: list[str]  # results/ and resources/ files right after this command


@dataclass
class BuiltStudy:
    """The shared study, built: read it, never write to it (copy it with ``copy_study``)."""

    workdir: Path
    config: dict
    stages: list[Stage] = field(default_factory=list)

    def complete_runs(self) -> list[dict]:
        return [json.loads((d / "run.json").read_text()) for d in run_dirs(self.workdir)]


def record_path(workdir: Path) -> Path:
    """The file next to the study's folder that says how its build ended."""
    return workdir.with_name(workdir.name + ".build.json")


class StudyBuild:
    """Builds the shared study in a background thread (Snakemake as a child process).

    When the build ends, its outcome (stages or error) is written next to the study folder
    (``<workdir>.build.json``, written then renamed), where test processes other than the one
    that builds (pytest-xdist workers) read it with ``wait_for_build``."""

    def __init__(self, workdir: Path) -> None:
        self.study = BuiltStudy(workdir=workdir, config=shared_config())
        self.record = record_path(workdir)
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._stopped = False
        self._lock = threading.Lock()  # between starting a command and stop()
        self._thread = threading.Thread(target=self._build, name="shared-study", daemon=True)

    def start(self) -> StudyBuild:
        self._thread.start()
        return self

    def result(self) -> BuiltStudy:
        """Wait for the build; fail with Snakemake's output if a command failed."""
        self._thread.join()
        if self.error:
            raise AssertionError(f"building the shared study failed:\n{self.error}")
        return self.study

    def stop(self) -> None:
        """Stop a build that is still running (kills Snakemake and its jobs)."""
        with self._lock:
            self._stopped = True
            if self._proc is not None and self._proc.poll() is None:
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._thread.join(timeout=30)

    def _files(self) -> list[str]:
        root = self.study.workdir
        return sorted(
            str(p.relative_to(root))
            for top in ("results", "resources")
            for p in (root / top).rglob("*")
            if p.is_file()
        )

    def _build(self) -> None:
        try:
            self._run_stages()
        except Exception as e:  # noqa: BLE001 - reported to every test that reads the study
            self.error = f"building the shared study raised {e!r}"
        if self._stopped:
            return
        outcome = {
            "workdir": str(self.study.workdir),
            "config": self.study.config,
            "stages": [asdict(stage) for stage in self.study.stages],
            "error": self.error,
        }
        partial = self.record.with_name(self.record.name + ".partial")
        partial.write_text(json.dumps(outcome))
        partial.rename(self.record)

    def _run_stages(self) -> None:
        for args in (("--cores", "all", README_TARGET), ("--cores", "all")):
            t0 = time.monotonic()
            with self._lock:
                if self._stopped:
                    return
                self._proc = subprocess.Popen(
                    snakemake_cmd(self.study.workdir, self.study.config, *args),
                    cwd=self.study.workdir,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,  # stop() kills Snakemake and the jobs it started
                )
            stdout, stderr = self._proc.communicate()
            stage = Stage(
                args, self._proc.returncode, stdout, stderr, time.monotonic() - t0, self._files()
            )
            self.study.stages.append(stage)
            if stage.returncode != 0:
                self.error = f"snakemake {' '.join(args)} (exit {stage.returncode}):\n"
                self.error += f"{stdout[-5000:]}\n{stderr[-20000:]}"
                return


def wait_for_build(workdir: Path, timeout: float = 3600) -> BuiltStudy:
    """The shared study as another process built it: wait for its record, fail on its error."""
    record = record_path(workdir)
    deadline = time.monotonic() + timeout
    while not record.exists():
        assert time.monotonic() < deadline, f"the shared study was not built within {timeout} s"
        time.sleep(1.0)
    outcome = json.loads(record.read_text())
    if outcome["error"]:
        raise AssertionError(f"building the shared study failed:\n{outcome['error']}")
    stages = [Stage(**{**stage, "args": tuple(stage["args"])}) for stage in outcome["stages"]]
    return BuiltStudy(workdir=Path(outcome["workdir"]), config=outcome["config"], stages=stages)
