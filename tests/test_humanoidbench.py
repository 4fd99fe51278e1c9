"""HumanoidBench against the real package: upstream commit 217b38f, the trimmed unmodified copy in
``../shared/vendor`` that the README's test command installs (editable, ``--no-deps``, no torch).

The tests that need the package skip, saying why, only when it is not installed *and* the vendored
copy is absent (a checkout without ``../shared``); with the copy present they fail until it is
installed. The missing-package tests hide the installed package (``sys.modules[name] = None``, which
makes ``import humanoid_bench`` raise ModuleNotFoundError), so they run either way.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from studies import snakemake, snakemake_without

from valuescale.analysis.allocation import params_from_width
from valuescale.envs import PAPER_HUMANOIDBENCH_ENVS, check_env_name, make_env

ROOT = Path(__file__).resolve().parents[1]
VENDORED = ROOT.parent / "shared" / "vendor" / "humanoid-bench-217b38f.tar.gz"
INSTALLED = importlib.util.find_spec("humanoid_bench") is not None

needs_package = pytest.mark.skipif(
    not INSTALLED and not VENDORED.is_file(),
    reason=f"humanoid_bench is not installed and {VENDORED} is absent (the README's test command "
    "installs HumanoidBench from there)",
)

#: The paper's h1 tasks: observation qpos(26) + qvel(25), 19 actuators, so the critic sees
#: d_in = 70 and has N = 2,286,792 parameters at W = 512 (method.md's BRO formula).
OBS, ACT, D_IN, N_AT_512 = 51, 19, 70, 2_286_792

#: A study with one HumanoidBench cell, for the workflow's dry runs.
H1_STUDY = {
    "results_dir": "results",
    "seeds": 2,
    "grid": [
        {
            "envs": ["h1-stand-v0"],
            "agents": ["bro"],
            "utd": [1],
            "widths": [32],
            "batch_sizes": [64],
            "lrs": [3.0e-4],
        }
    ],
    "train": {"steps": 2000, "warmup_steps": 500, "eval_interval": 500, "replay_size": 2000},
}


def _random_episode(env, rng: np.random.Generator) -> list[tuple[bool, bool]]:
    """(terminated, truncated) of every step of one episode under uniform random actions."""
    env.reset()
    flags = []
    while not flags or not any(flags[-1]):
        flags.append(env.step(rng.uniform(-1, 1, env.act_dim))[2:])
    return flags


@needs_package
def test_the_installed_package_is_the_vendored_commit() -> None:
    assert INSTALLED, (
        f"{VENDORED} is present but humanoid_bench is not installed: run the README's test command"
    )
    source = Path(importlib.util.find_spec("humanoid_bench").origin).parent
    if VENDORED.is_file():
        with tarfile.open(VENDORED) as tar:
            for member in ("env.py", "envs/basic_locomotion_envs.py", "envs/pole.py", "tasks.py"):
                vendored = tar.extractfile(f"humanoid-bench-217b38f/humanoid_bench/{member}")
                assert (source / member).read_bytes() == vendored.read(), member
    assert metadata.version("humanoid_bench") == "0.2"


@needs_package
@pytest.mark.parametrize("name", PAPER_HUMANOIDBENCH_ENVS)
def test_paper_tasks_through_the_adapter(name: str) -> None:
    env = make_env(name, seed=0)
    assert (env.obs_dim, env.act_dim, env.obs_dim + env.act_dim) == (OBS, ACT, D_IN)
    assert params_from_width(512, env.obs_dim + env.act_dim) == N_AT_512
    obs = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (OBS,)
    # Upstream's own action space is [-1, 1]; the adapter clips to it.
    np.testing.assert_array_equal(env._low, -1.0)
    np.testing.assert_array_equal(env._high, 1.0)
    obs, reward, terminated, truncated = env.step(np.full(ACT, 3.0))
    assert obs.shape == (OBS,) and np.isfinite(obs).all() and 0.0 <= reward <= 1.0
    assert (type(terminated), type(truncated)) == (bool, bool)
    # torch-free: the adapter's stand-in replaced the one module that imports torch (and jax)
    assert sys.modules["humanoid_bench.mjx.flax_to_torch"].VALUESCALE_STAND_IN
    assert "torch" not in sys.modules
    with pytest.raises(ImportError, match="hierarchical"):
        sys.modules["humanoid_bench.mjx.flax_to_torch"].TorchModel(55, 19)


@needs_package
@pytest.mark.parametrize("name", ["h1-pole-v0", "h1-stand-v0"])
def test_a_fall_terminates_pole_and_stand(name: str) -> None:
    env = make_env(name, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(2):  # two falls: the first episode and one after a reset
        flags = _random_episode(env, rng)
        assert flags[-1] == (True, False) and len(flags) < 200, len(flags)
        assert not any(t or tr for t, tr in flags[:-1])
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(ACT))


@needs_package
def test_crawl_never_terminates_and_is_truncated_at_1000_steps() -> None:
    env = make_env("h1-crawl-v0", seed=2)
    flags = _random_episode(env, np.random.default_rng(0))
    assert len(flags) == 1000 and flags[-1] == (False, True)
    assert not any(t or tr for t, tr in flags[:-1])


@needs_package
def test_snapshot_continues_bit_for_bit_across_falls() -> None:
    """Snapshot mid-episode, continue over several falls and resets in a fresh env (other seed)."""
    rng = np.random.default_rng(3)
    actions = rng.uniform(-1, 1, (240, ACT))
    env = make_env("h1-stand-v0", 4)
    env.reset()
    snapshot, reference, ends = None, [], 0
    for i, a in enumerate(actions):
        if i == 40:
            snapshot = pickle.dumps(env.get_state())
        out = env.step(a)
        if i >= 40:
            reference.append(out)
        if out[2] or out[3]:
            ends += 1 if i >= 40 else 0
            env.reset()
    assert ends >= 2  # the continuation crosses episode boundaries
    restored = make_env("h1-stand-v0", 999)
    restored.reset()
    restored.set_state(pickle.loads(snapshot))
    for a, (obs, reward, terminated, truncated) in zip(actions[40:], reference, strict=True):
        out = restored.step(a)
        np.testing.assert_array_equal(out[0], obs)
        assert (out[1], out[2], out[3]) == (reward, terminated, truncated)
        if out[2] or out[3]:
            restored.reset()


def _two_seed_run_on_h1_stand(tmp_path: Path, args: str):
    """The engine CLI on h1-stand with seeds 0 and 1 and ``args``: it exits 0 and both seeds end
    ok. Returns the process, run.json and the curves."""
    out = tmp_path / "run"
    cmd = ["--env", "h1-stand-v0", "--seeds", "0,1", *args.split(), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "valuescale.train", *cmd],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is True and run["seeds"] == {
        "0": {"status": "ok"},
        "1": {"status": "ok"},
    }
    return proc, run, pd.read_parquet(out / "curves.parquet")


@needs_package
@pytest.mark.slow
def test_two_seed_bro_run_on_h1_stand_through_the_engine_cli(tmp_path: Path) -> None:
    proc, run, curves = _two_seed_run_on_h1_stand(
        tmp_path,
        "--agent bro --steps 400 --warmup-steps 300 --width 512 --actor-width 32 --batch-size 32 "
        "--n-quantiles 100 --replay-size 1000 --utd 1 --eval-interval 400 --eval-episodes 1 "
        "--log-interval 100 --checkpoint-every 0 --threads 1",
    )
    assert (run["obs_dim"], run["act_dim"], run["critic_params"]) == (OBS, ACT, N_AT_512)
    assert run["env_steps"] == 400 and run["gradient_steps"] == 100
    assert run["versions"]["humanoid_bench"] == metadata.version("humanoid_bench")
    assert run["versions"]["gymnasium"] == metadata.version("gymnasium")
    assert set(curves["seed"]) == {0, 1} and (curves["env"] == "h1-stand-v0").all()
    assert (curves["critic_params"] == N_AT_512).all() and np.isfinite(curves["value"]).all()
    returns = curves[curves.metric == "return"]
    assert len(returns) == 2 and (returns["step"] == 400).all()
    # rewards are in [0, 1] per step; the untrained H1 fell, ending its evaluation episode early
    assert ((returns["value"] > 0) & (returns["value"] < 200)).all()
    assert "False" not in proc.stdout.splitlines()  # upstream's stray print is dropped


@needs_package
@pytest.mark.slow
def test_two_seed_simbav2_run_on_h1_stand_through_the_engine_cli(tmp_path: Path) -> None:
    """SimbaV2's counterpart of the BRO run above, as short as the engine allows: 2 seeds, 200
    simulator steps (100 agent steps at action repeat 2), 50 updates, W 16. Two critic heads on
    HumanoidBench (``bind``), so run.json's critic size is the closed form at H = 2, d = 70."""
    from valuescale.agents.simbav2 import simbav2_critic_param_formula

    _, run, curves = _two_seed_run_on_h1_stand(
        tmp_path,
        "--agent simbav2 --steps 200 --warmup-steps 100 --width 16 --actor-width 16 "
        "--batch-size 16 --replay-size 200 --utd 1 --eval-interval 200 --eval-episodes 1 "
        "--log-interval 100 --checkpoint-every 0 --threads 1",
    )
    n_critic = simbav2_critic_param_formula(D_IN, 16, depth=2, n_atoms=101, n_heads=2)
    assert n_critic == 2 * (17 * 16**2 + (D_IN + 114) * 16 + 101)  # method.md, L = 2, K = 101
    assert (run["obs_dim"], run["act_dim"], run["critic_params"]) == (OBS, ACT, n_critic)
    assert run["config"]["agent"] == "simbav2" and run["config"]["critic_heads"] is None
    assert run["env_steps"] == 200 and run["gradient_steps"] == 50
    assert run["versions"]["humanoid_bench"] == metadata.version("humanoid_bench")
    assert set(curves["seed"]) == {0, 1} and (curves["agent"] == "simbav2").all()
    assert (curves["critic_params"] == n_critic).all() and np.isfinite(curves["value"]).all()
    for seed in (0, 1):  # training metrics at 200 (100 is still warm-up) and the evaluation
        mine = curves[curves.seed == seed]
        assert {"critic_loss", "actor_loss", "return"} <= set(mine["metric"]), seed
        assert set(mine["step"]) == {200}, seed
    returns = curves[curves.metric == "return"]
    assert len(returns) == 2 and ((returns["value"] > 0) & (returns["value"] < 200)).all()


def test_missing_package_says_how_to_install_the_pinned_commit(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "humanoid_bench", None)
    for make in (lambda: make_env("h1-crawl-v0", 0), lambda: check_env_name("h1-stand-v0")):
        with pytest.raises(ValueError, match="HumanoidBench task") as info:
            make()
        message = str(info.value)
        assert "pip install --no-deps -e" in message and "carlosferrazza/humanoid-bench" in message
        assert "217b38fb55ac929d6191aa89253ed90ddc5b4f55" in message


def test_workflow_refuses_an_h1_env_at_dag_time_when_the_package_is_missing(tmp_path: Path) -> None:
    # A process of its own in which `import humanoid_bench` fails as if it were not installed.
    proc = snakemake_without(tmp_path, H1_STUDY, ["humanoid_bench"], "-n")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid config key 'grid[0].envs'" in output, output[-3000:]
    assert "env 'h1-stand-v0' is a HumanoidBench task" in output
    assert "pip install --no-deps -e" in output
    assert "Job stats" not in output  # no job planned
    assert not (tmp_path / "results").exists()


@needs_package
def test_workflow_refuses_an_unregistered_h1_env_at_dag_time(tmp_path: Path) -> None:
    # (an installed h1 env dry-runs: test_workflow_config.py::test_shipped_configs_are_valid)
    bad = json.loads(json.dumps(H1_STUDY))
    bad["grid"][0]["envs"] = ["h1-fly-v0"]
    proc = snakemake(tmp_path, bad, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid config key 'grid[0].envs'" in output, output[-3000:]
    assert "unknown HumanoidBench env 'h1-fly-v0'" in output
