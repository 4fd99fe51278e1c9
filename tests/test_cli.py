"""``python -m valuescale.train``: flag errors, help, lazy JAX import, SIGKILL/SIGTERM + resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from studies import wait_for

from valuescale.train import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "valuescale.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("args", "flag", "detail"),
    [
        (["--utd", "-1"], "--utd", "> 0"),
        (["--utd", "abc"], "--utd", "invalid float"),
        (["--width", "0"], "--width", ">= 1"),
        (["--env", "cheetah-fly"], "--env", "cheetah-run"),
        (["--seeds", "a,b"], "--seeds", "comma-separated"),
        (["--seeds", "1,1"], "--seeds", "distinct"),
        (["--batch-size", "512", "--replay-size", "100"], "--replay-size", "batch_size"),
        (["--agent", "simbav2", "--steps", "1001"], "--steps", "multiple of action_repeat"),
        (["--agent", "dqn"], "--agent", "unknown agent"),
        (["--lr", "0"], "--lr", "> 0"),
        (["--steps", "1.5"], "--steps", "invalid int"),
        (["--threads", "999"], "--threads", "allowed cores"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    args: list[str], flag: str, detail: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = {"--env": "cheetah-run", "--out": str(tmp_path / "out")}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    argv = [item for pair in base.items() for item in pair]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err, err
    assert detail in err, err
    assert not (tmp_path / "out").exists()  # nothing started


def test_every_config_field_has_a_documented_flag() -> None:
    from valuescale.agents import AGENTS
    from valuescale.config import setting_fields

    for agent in AGENTS:  # the loop's settings and each agent's
        actions = {a.dest: a for a in build_parser(agent)._actions}
        for f in setting_fields(agent):
            assert f.name in actions, (agent, f.name)
            assert actions[f.name].help, (agent, f.name)
            assert f.name in ("env", "agent") or actions[f.name].default == f.default
    parser = build_parser()
    args = parser.parse_args(["--env", "walker-run", "--out", "x", "--seeds", "0-2,7"])
    assert args.seeds == (0, 1, 2, 7) and args.critic_width == 512


def test_help_and_lazy_jax_import() -> None:
    result = _cli("--help", timeout=120)
    assert result.returncode == 0
    for text in ("--batch-size", "--utd", "--threads", "--validation", "(default: 128)"):
        assert text in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, valuescale.train; print('jax' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.strip() == "False", "importing the CLI must not import JAX"


RESUME_ARGS = [
    "--env", "pendulum-swingup", "--seeds", "0,1", "--steps", "2000", "--width", "16",
    "--actor-width", "16", "--batch-size", "16", "--n-quantiles", "5", "--replay-size", "1000",
    "--warmup-steps", "300", "--eval-interval", "500", "--eval-episodes", "1",
    "--max-episode-steps", "150", "--checkpoint-every", "700", "--log-interval", "100",
    "--validation", "--validation-every", "5", "--reset-interval", "900", "--threads", "1",
    "--no-progress",
]  # fmt: skip
# (the replay of 1000 slots wraps within the 2000 steps, so its chunks do too)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of RESUME_ARGS, the reference of both interrupt tests, compiled into
    a cache of its own (the interrupted runs then load every step function from it)."""
    root = tmp_path_factory.mktemp("reference")
    cache = root / "xla-cache"
    done = _cli(*RESUME_ARGS, "--compilation-cache", str(cache), "--out", str(root / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    # every step function is kept, also those that compile in under JAX's default 1 s
    assert len(list(cache.glob("*-cache"))) >= 20
    return root


def _start(out: Path, cache: Path) -> subprocess.Popen:
    """The engine on RESUME_ARGS in the background, its log lines piped."""
    cmd = [sys.executable, "-m", "valuescale.train", *RESUME_ARGS]
    return subprocess.Popen(
        [*cmd, "--compilation-cache", str(cache), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _no_outputs_yet(out: Path) -> None:
    """An unfinished run leaves no output (the train rule's) under its name, only its progress."""
    assert not (out / "run.json").exists() and not (out / "curves.parquet").exists()
    assert not json.loads((out / "progress.json").read_text())["complete"]


@pytest.mark.slow
def test_sigterm_then_sigkill_and_two_resumes_give_identical_curves(
    tmp_path: Path, reference: Path
) -> None:
    """The two ways a job dies, one after the other on one run folder:

    - SIGTERM (scancel, preemption): the engine writes a checkpoint at the step it is at (not only
      every checkpoint_every steps), exits 128 + 15; a restart continues from that step;
    - SIGKILL (OOM killer, power cut) of that restarted run after its next regular checkpoint
      (step 1400): a second restart continues from there.

    The finished curves are the uninterrupted reference's, bit for bit."""
    out = tmp_path / "run"
    cache = reference / "xla-cache"
    reference = reference / "run"
    checkpoint = out / "checkpoint.pkl"

    # 1. SIGTERM once the engine logs a step past its regular checkpoint at 700 (log lines come
    # after each evaluation, every 500 steps), however slow the machine
    proc = _start(out, cache)
    lines: list[str] = []
    past_checkpoint = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            step = re.search(r"step (\d+)/2000", line)
            if step and int(step.group(1)) > 700:
                past_checkpoint.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    wait_for(past_checkpoint.is_set, proc, 300, "passing its checkpoint at step 700")
    assert checkpoint.exists()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    stderr = "".join(lines)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM at env step" in stderr
    _no_outputs_yet(out)
    stopped_at = json.loads((out / "progress.json").read_text())["env_steps"]
    assert 700 < stopped_at < 1400, stopped_at
    assert pd.read_parquet(out / "progress.parquet")["step"].max() <= stopped_at

    # 2. restart, SIGKILL once it has replaced that checkpoint by the one of step 1400
    stopped_inode = checkpoint.stat().st_ino
    proc = _start(out, cache)
    wait_for(
        lambda: checkpoint.exists() and checkpoint.stat().st_ino != stopped_inode,
        proc,
        300,
        "writing its checkpoint at step 1400",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _no_outputs_yet(out)

    # 3. restart: it finishes
    resumed = _cli(*RESUME_ARGS, "--compilation-cache", str(cache), "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "run.json").read_text())
    assert summary["complete"] and summary["resumed_at_steps"] == [stopped_at, 1400]
    assert summary["reset_steps"] == [900, 1800]
    assert summary["cpu_cores"] == 1  # --threads 1 pinned the process
    assert not checkpoint.exists() and not (out / "replay").exists()
    assert not (out / "progress.json").exists() and not (out / "progress.parquet").exists()
    a = pd.read_parquet(reference / "curves.parquet")
    b = pd.read_parquet(out / "curves.parquet")
    assert {"return", "critic_loss", "validation_critic_loss"} <= set(a["metric"])
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    ref_summary = json.loads((reference / "run.json").read_text())
    for key in ("gradient_steps", "env_steps", "reset_steps", "critic_params", "seeds"):
        assert summary[key] == ref_summary[key], key


def test_a_folder_held_by_a_live_engine_is_left_alone(tmp_path: Path) -> None:
    """A second engine started on a folder that a live process holds (the train rule's, with
    --discard-stale, included) exits 2 naming the folder and that process, and changes nothing
    in it."""
    from valuescale.checkpoint import hold_run_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pkl").write_bytes(b"the live engine's, not to be touched")
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir() if p.name != ".engine.lock")
    with hold_run_folder(out):
        engine = _cli("--env", "cheetah-run", "--steps", "100", "--out", str(out),
                      "--discard-stale", timeout=120)  # fmt: skip
    assert engine.returncode == 2, engine.stderr[-2000:]
    assert f"run folder {out} is held by a live engine (pid {os.getpid()})" in engine.stderr
    after = sorted((p.name, p.read_bytes()) for p in out.iterdir() if p.name != ".engine.lock")
    assert after == before


def test_config_conflict_with_a_checkpoint_exits_2(tmp_path: Path) -> None:
    from valuescale.checkpoint import save_checkpoint
    from valuescale.config import TrainConfig

    saved = TrainConfig("cheetah-run", lr=1e-3).to_dict()
    save_checkpoint(tmp_path / "checkpoint.pkl", {"config": saved, "t": 10})
    result = _cli("--env", "cheetah-run", "--out", str(tmp_path), timeout=120)
    assert result.returncode == 2
    assert "written with other settings" in result.stderr and "lr: 0.001" in result.stderr


def test_threads_pins_every_thread_including_jax(tmp_path) -> None:
    code = (
        "import glob, numpy\n"
        "from valuescale.train import pin_threads\n"
        "pin_threads(1)\n"
        "import jax.numpy as jnp\n"
        "(jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()\n"
        "masks = set()\n"
        "for f in glob.glob('/proc/self/task/*/status'):\n"
        "    for line in open(f):\n"
        "        if line.startswith('Cpus_allowed_list'):\n"
        "            masks.add(line.split()[1])\n"
        "print(len(glob.glob('/proc/self/task/*')), sorted(masks))\n"
    )
    env = {**os.environ, "VALUESCALE_CORE_LOCK_DIR": str(tmp_path)}  # no other claims
    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    n_threads, masks = probe.stdout.split(" ", 1)
    assert int(n_threads) > 1
    first_core = sorted(os.sched_getaffinity(0))[0]
    assert masks.strip() == str([str(first_core)])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two allowed cores")
def test_concurrent_single_thread_jobs_pin_distinct_cores(tmp_path) -> None:
    import fcntl

    first, second = sorted(os.sched_getaffinity(0))[:2]
    code = "import os\nfrom valuescale.train import pin_threads\nprint(pin_threads(1))\n"
    env = {**os.environ, "VALUESCALE_CORE_LOCK_DIR": str(tmp_path)}
    with open(tmp_path / f"core{first}.lock", "a") as held:  # another job holds the first core
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        probe = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
        )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == str([second])
