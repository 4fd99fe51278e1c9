"""``python -m valuescale.status`` / ``valuescale status`` (issue #15): the state, steps and
returns of every cell of a real study, after it ran (the shared default study) and while one of
its cells trains, is stopped and fails (the real engine on a forgotten cell of a copy)."""

from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from studies import RETRAINED, copy_study, wait_for

from valuescale.config import setting_fields
from valuescale.status import DONE_LINE, last_evaluations, study_status
from valuescale.study import load_config, run_name, train_jobs, train_settings, validate

VALUESCALE = Path(sys.executable).with_name("valuescale")  # the console script


def test_last_evaluations_skip_rows_from_a_seeds_divergence_on() -> None:
    rows = {
        "seed": [0, 1, 0, 1, 0, 1],
        "step": [100, 100, 200, 200, 200, 200],
        "metric": ["return", "return", "critic_loss", "return", "return", "critic_loss"],
        "value": [1.0, 2.0, 9.0, 3.0, 4.0, 9.0],
    }
    assert last_evaluations(rows, {}) == {
        "0": {"step": 200, "return": 4.0},
        "1": {"step": 200, "return": 3.0},
    }
    # seed 1 diverged at step 200: its return there is not counted; seed 0 unchanged
    assert last_evaluations(rows, {1: 200}) == {
        "0": {"step": 200, "return": 4.0},
        "1": {"step": 100, "return": 2.0},
    }


def _engine(cfg: dict, run: str, results: Path, *extra: str, discard: bool = True):
    """The engine on the study's cell ``run`` as the train rule starts it (its flags from the
    study's settings, stderr into the job's log), in the background."""
    job = next(j for j in train_jobs(cfg) if f"results/runs/{run_name(j)}" == run)
    argv = ["--env", job.env, "--agent", job.agent, "--utd", job.utd, "--width", str(job.width),
            "--batch-size", str(job.batch_size), "--lr", job.lr,
            "--seeds", ",".join(str(s) for s in range(job.first, job.last + 1))]  # fmt: skip
    own = {f.name for f in setting_fields(job.agent)}  # the job's agent's settings, as the rule
    for key, value in sorted(train_settings(cfg, job.env).items()):
        if key not in own or value is None:  # another agent's, or null: the agent's own default
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            argv += [flag, str(value)]
    argv += ["--out", str(results / "runs" / run_name(job)), "--threads", "1", "--no-progress"]
    argv += ["--discard-stale"] if discard else []
    log = results / "logs" / "train" / f"{run_name(job)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        cmd = [sys.executable, "-m", "valuescale.train", *argv, *extra]
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), log


def _cells(status: dict) -> dict[str, dict]:
    return {f"results/runs/{c['run']}": c for c in status["cells"]}


@pytest.mark.slow
def test_status_of_the_default_study_after_and_while_a_cell_trains(
    default_study, tmp_path, monkeypatch
) -> None:
    """After the study: every cell done at its planned steps, with the last evaluation return of
    each seed that its curves hold; a config asking for more steps reads every cell as stale.
    Then, on a copy with one cell forgotten: pending; the real engine on it: running (its pid,
    steps and returns of its last checkpoint, an ETA); SIGTERM: stopped at the step it had
    reached; an engine that exits with an error: failed, with the error line; the others done."""
    workdir = default_study.workdir
    monkeypatch.chdir(workdir)  # as a user runs it: from the study's working directory
    cfg = load_config([workdir / "study.yaml"])
    planned = cfg["train"]["steps"]
    status = study_status(cfg, workdir / "results")
    assert status["counts"]["done"] == len(status["cells"]) == 9, status["counts"]
    assert status["env_steps"] == status["planned_steps"] == 9 * planned
    assert status["not_in_study"] == []
    for run, cell in _cells(status).items():
        assert cell["env_steps"] == planned and cell["planned_steps"] == planned
        assert cell["diverged"] == {} and cell["env_steps_per_s"] > 0
        curves = pd.read_parquet(workdir / run / "curves.parquet")
        returns = curves[curves["metric"] == "return"].sort_values("step")
        last = returns.groupby("seed").tail(1).set_index("seed")["value"]
        assert cell["last_return"] == {str(s): float(v) for s, v in last.items()}, run
        assert cell["last_eval_step"] == planned

    # the console script, as a script would call it, and its table
    cmd = [str(VALUESCALE), "status", "--configfile", "study.yaml"]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["counts"] == status["counts"]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-1].startswith("9 cells: 9 done, 0 pending; env steps 100.0 %")

    longer = copy.deepcopy(cfg)
    longer["train"]["steps"] = planned + 1000
    validate(longer)
    stale = study_status(longer, workdir / "results")
    assert stale["counts"]["stale"] == 9
    assert all(c["reason"] == "trained with other steps" for c in stale["cells"])

    # mid-run, on a copy: the cheapest cell forgotten, then trained again by the real engine
    work = copy_study(workdir, tmp_path / "study")
    results = work / "results"
    monkeypatch.chdir(work)
    cfg = load_config([work / "study.yaml"])
    shutil.rmtree(work / RETRAINED)  # its outputs and the copy a rerun would put back
    status = study_status(cfg, results)
    assert status["counts"] == {**status["counts"], "done": 8, "pending": 1}
    assert _cells(status)[RETRAINED]["state"] == "pending"  # its old log says it completed

    # checkpoints every 500 steps (an operational setting); the first evaluation is at 1,000
    proc, log = _engine(cfg, RETRAINED, results, "--checkpoint-every", "500")
    progress = work / RETRAINED / "progress.json"

    def evaluated() -> bool:
        try:
            return json.loads(progress.read_text())["env_steps"] >= 1000
        except (OSError, ValueError):
            return False

    try:
        wait_for(evaluated, proc, 600, "a checkpoint after the first evaluation")
        running = _cells(study_status(cfg, results))[RETRAINED]
        assert proc.poll() is None, "the engine ended before the status was read"
        assert running["state"] == "running" and running["pid"] == str(proc.pid)
        assert running["env_steps"] >= 1000 and running["env_steps"] % 500 == 0
        assert running["planned_steps"] == planned
        assert all(math.isfinite(r) for r in running["last_return"].values())
        assert running["eta_s"] is not None and running["eta_s"] >= 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = study_status(cfg, results)
    stopped = _cells(status)[RETRAINED]
    assert stopped["state"] == "stopped", stopped
    assert running["env_steps"] <= stopped["env_steps"] < planned
    assert stopped["last_return"] == running["last_return"] or stopped["env_steps"] > 1000
    assert status["counts"] == {**status["counts"], "done": 8, "stopped": 1}

    # an engine that stops with an error (here: other settings than the folder's checkpoint,
    # without --discard-stale) leaves its error in the log: failed
    proc, log = _engine(cfg, RETRAINED, results, "--lr", "1e-3", discard=False)
    assert proc.wait(timeout=300) == 2, log.read_text()[-3000:]
    failed = _cells(study_status(cfg, results))[RETRAINED]
    assert failed["state"] == "failed", failed
    assert failed["reason"].startswith("error: ") and "lr" in failed["reason"]
    assert failed["env_steps"] == stopped["env_steps"]  # its checkpoint is kept
    assert DONE_LINE not in log.read_text()

    # the learning curves so far, done and stopped cells alike
    plot = subprocess.run(
        [sys.executable, "-m", "valuescale.status", "--configfile", "study.yaml", "--plot",
         str(tmp_path / "curves.png"), "--state", "failed"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "failed: " + RETRAINED.removeprefix("results/runs/") in plot.stdout


def test_watch_refreshes_until_interrupted_and_a_bad_config_is_named(tmp_path) -> None:
    """A study with no run folder yet: every cell pending, refreshed by --watch until Ctrl-C
    (exit 0); a bad config key stops the command with exit 2 naming the key."""
    study_file = tmp_path / "study.yaml"
    grid = [{"envs": ["cartpole-balance"], "agents": ["bro"], "utd": [1, 2], "widths": [32],
             "batch_sizes": [64], "lrs": [3.0e-4]}]  # fmt: skip
    study_file.write_text(json.dumps({"results_dir": "out", "seeds": 2, "grid": grid}))
    cmd = [str(VALUESCALE), "status", "--configfile", str(study_file), "--json"]
    # Ctrl-C reaches it as in a terminal: a process started in the background by a shell without
    # job control (a CI runner's `cmd &`) has SIGINT ignored, its children too, and a Python
    # started with SIGINT ignored installs no KeyboardInterrupt handler
    proc = subprocess.Popen([*cmd, "--watch", "0.2"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)  # fmt: skip
    try:
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        # read what it printed meanwhile: on a slow box the pipe fills, and a child blocked on a
        # full pipe (or flushing into it at exit) never ends
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first["counts"]["pending"] == second["counts"]["pending"] == 2
    assert second["time"] > first["time"] and first["results_dir"] == "out"
    assert [c["run"] for c in first["cells"]] == [
        "cartpole-balance/bro/utd1_w32_b64_lr3e-4/seeds0-1",
        "cartpole-balance/bro/utd2_w32_b64_lr3e-4/seeds0-1",
    ]
    study_file.write_text(json.dumps({"grid": grid, "train": {"stepz": 10}}))
    bad = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "invalid config key 'train'" in bad.stderr and "stepz" in bad.stderr


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
