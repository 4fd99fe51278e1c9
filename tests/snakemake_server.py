"""Snakemake's command line, with its imports paid once per test process.

``python snakemake_server.py`` imports Snakemake (and what the Snakefile imports) once, then serves
requests, one JSON line each on stdin: ``{"argv", "cwd", "env", "stdout", "stderr", "timeout"}``.
Each request forks a child that runs ``snakemake.cli.main`` on ``argv``, in ``cwd`` with exactly
``env`` as its environment and its stdout and stderr written to the named files: the command line
a user runs, in a process of its own (so nothing of one run's global state reaches the next), only
without the ~3 s of imports (Snakemake and its plugins, pandas, dm_control) that every
``python -m snakemake`` repeats. The answer is one JSON line: ``{"returncode", "cpu_s",
"timed_out"}``, where ``cpu_s`` is the child's CPU time and that of the processes it waited for
(its jobs). A child past its timeout is killed with its process group. ``studies.snakemake``
starts one server per test process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

# everything a workflow run imports before it reads the config (importing dm_control adds a root
# logging handler, which the Snakefile keeps out of Snakemake's log: do the same here)
_root_handlers = list(logging.getLogger().handlers)
import snakemake.api  # noqa: E402,F401
import snakemake.cli  # noqa: E402
import snakemake.dag  # noqa: E402,F401
import snakemake.scheduling.job_scheduler  # noqa: E402,F401
import yaml  # noqa: E402,F401

from valuescale.config import AGENTS  # noqa: E402,F401
from valuescale.envs import list_envs  # noqa: E402
from valuescale.tasks import TASKS  # noqa: E402,F401

list_envs()
logging.getLogger().handlers[:] = _root_handlers


def _child(request: dict) -> None:
    """In the forked child: become ``snakemake ARGV`` and exit with its status."""
    code = 1
    try:
        # a process group of its own, so that a timeout kills the run and the jobs it started
        # (not a session: that would also take it out of the tests' CPU priority group)
        os.setpgid(0, 0)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = ["snakemake", *request["argv"]]
        try:
            snakemake.cli.main(request["argv"])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported on the run's stderr, as Python would
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve(request: dict) -> dict:
    pid = os.fork()
    if pid == 0:
        _child(request)
    deadline = None if request.get("timeout") is None else time.monotonic() + request["timeout"]
    timed_out = False
    while True:
        waited, status, usage = os.wait4(pid, os.WNOHANG if deadline else 0)
        if waited:
            break
        if time.monotonic() > deadline:
            timed_out = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = None
            continue
        time.sleep(0.02)
    return {
        "returncode": os.waitstatus_to_exitcode(status),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "timed_out": timed_out,
    }


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_serve(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
