"""The training loop on real dm_control physics and the real BRO agent (tiny sizes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from valuescale.config import TrainConfig
from valuescale.envs import make_env
from valuescale.train import CURVE_COLUMNS, OutDirConflict, _Run, run_training

TINY = dict(
    env="pendulum-swingup",
    critic_width=16,
    actor_width=16,
    batch_size=16,
    n_quantiles=5,
    replay_size=1_000,
    warmup_steps=200,
    eval_interval=300,
    eval_episodes=1,
    max_episode_steps=100,
    checkpoint_every=0,
    log_interval=100,
)


def tiny(**overrides) -> TrainConfig:
    """A config that trains in seconds."""
    return TrainConfig(**{**TINY, **overrides})


def _run(cfg: TrainConfig, out: Path) -> _Run:
    """Run through the loop object so that tests can look at the final device state."""
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, out, progress=False)
    run.run(None)
    return run


def test_outputs_fractional_utd_and_critic_size(tmp_path: Path) -> None:
    # utd 0.25: one update every 4 env steps after the warm-up; 100 quantiles for the N formula.
    cfg = tiny(seeds=(0, 1), utd=0.25, steps=600, n_quantiles=100)
    summary = run_training(cfg, tmp_path, progress=False)
    assert summary["gradient_steps"] == (600 - 200) // 4
    assert summary["env_steps"] == 600 and summary["complete"] is True

    run_json = json.loads((tmp_path / "run.json").read_text())
    assert run_json == json.loads(json.dumps(summary))
    assert run_json["config"]["utd"] == 0.25 and run_json["config"]["seeds"] == [0, 1]
    for package in ("jax", "flax", "optax", "dm_control", "mujoco", "numpy", "valuescale"):
        assert run_json["versions"][package], package
    assert run_json["seeds"] == {"0": {"status": "ok"}, "1": {"status": "ok"}}
    assert run_json["reset_steps"] == []
    # N = 2 (4 W^2 + (d_in + 115) W + 100) for depth 2 and 100 quantiles; pendulum: d_in = 3 + 1.
    width, d_in = 16, 3 + 1
    assert run_json["critic_params"] == 2 * (4 * width**2 + (d_in + 115) * width + 100)

    df = pd.read_parquet(tmp_path / "curves.parquet")
    assert tuple(df.columns) == CURVE_COLUMNS
    assert df["value"].notna().all() and np.isfinite(df["value"]).all()
    assert set(df["seed"]) == {0, 1}
    assert (df["critic_params"] == run_json["critic_params"]).all()
    assert (df["env"] == "pendulum-swingup").all() and (df["width"] == 16).all()
    returns = df[df.metric == "return"]
    assert sorted(returns["step"].unique()) == [300, 600]
    # Training metrics: per log interval once updates have started (first update after t = 204).
    for metric in ("critic_loss", "actor_loss", "temperature", "q_mean"):
        steps = sorted(df[(df.metric == metric) & (df.seed == 0)]["step"])
        assert steps == [300, 400, 500, 600], metric
    assert not (df.metric == "validation_critic_loss").any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.parquet", "run.json"]

    # A complete run of the same config is returned as is; another config is refused.
    mtime = (tmp_path / "curves.parquet").stat().st_mtime_ns
    assert run_training(cfg, tmp_path, progress=False) == run_json
    assert (tmp_path / "curves.parquet").stat().st_mtime_ns == mtime
    with pytest.raises(OutDirConflict, match="lr"):
        run_training(tiny(seeds=(0, 1), utd=0.25, steps=600, n_quantiles=100, lr=1e-3), tmp_path)


def test_reset_schedule_and_non_integer_utd(tmp_path: Path) -> None:
    # utd 1.5 alternates 1 and 2 updates; reset_interval 150 gradient steps = every 100 env steps.
    cfg = tiny(seeds=(0,), utd=1.5, steps=350, warmup_steps=50, reset_interval=150)
    assert cfg.reset_steps() == [100, 200, 300]
    run = _run(cfg, tmp_path)
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["reset_steps"] == [100, 200, 300]
    assert summary["gradient_steps"] == math.floor((350 - 50) * 1.5) == 450
    # The agent restarted at env step 300: its own update counter holds the updates since then,
    # floor(300 * 1.5) - floor(250 * 1.5) = 75 (post-warm-up env steps 250..299).
    assert int(run.carry["agent"].step[0]) == 75


def test_divergence_marks_only_that_seed(tmp_path: Path) -> None:
    cfg = tiny(seeds=(0, 1), steps=700, eval_interval=200, _debug_nan_reward=(1, 300))
    summary = run_training(cfg, tmp_path, progress=False)
    status = summary["seeds"]
    assert status["0"] == {"status": "ok"}
    assert status["1"]["status"] == "diverged"
    at = status["1"]["diverged_at_step"]
    assert 300 <= at <= 700
    df = pd.read_parquet(tmp_path / "curves.parquet")
    assert np.isfinite(df["value"]).all()
    seed1 = df[df.seed == 1]
    assert len(seed1) > 0 and seed1["step"].max() < at  # rows before, none from there on
    assert 200 in set(seed1[seed1.metric == "return"]["step"])
    seed0 = df[df.seed == 0]
    assert sorted(seed0[seed0.metric == "return"]["step"]) == [200, 400, 600, 700]
    assert seed0[seed0.metric == "critic_loss"]["step"].max() == 700


def test_seed_streams_do_not_depend_on_the_other_seeds(tmp_path: Path) -> None:
    """Seed 3 alone and next to seed 0: same env seeds and keys, so the same run up to float
    rounding differences of the batched computation (exactly equal before training)."""
    frames = {}
    for seeds in [(3,), (0, 3)]:
        out = tmp_path / "-".join(map(str, seeds))
        run_training(tiny(seeds=seeds, steps=400, eval_interval=200), out, progress=False)
        df = pd.read_parquet(out / "curves.parquet")
        frames[seeds] = df[df.seed == 3].reset_index(drop=True)
    alone, together = frames[(3,)], frames[(0, 3)]
    assert len(alone) == len(together) > 0
    pd.testing.assert_frame_equal(
        alone.drop(columns="value"), together.drop(columns="value"), check_exact=True
    )
    # The first evaluation (step 200) comes before any update: exactly equal.
    first = alone.step == 200
    np.testing.assert_array_equal(alone[first]["value"], together[first]["value"])
    np.testing.assert_allclose(alone["value"], together["value"], rtol=1e-3, atol=1e-4)


def test_validation_and_passive_critic_metrics(tmp_path: Path) -> None:
    cfg = tiny(
        seeds=(0,),
        steps=400,
        validation=True,
        validation_every=5,
        passive_critic=True,
        passive_critic_width=8,
    )
    run = _run(cfg, tmp_path)
    df = pd.read_parquet(tmp_path / "curves.parquet")
    for metric in (
        "validation_critic_loss",
        "passive_critic_loss",
        "passive_validation_critic_loss",
    ):
        rows = df[df.metric == metric]
        assert sorted(rows["step"]) == [300, 400], metric
        assert (rows["value"] > 0).all() and np.isfinite(rows["value"]).all()
    # The held-out buffer got one transition every 5 env steps (none from the training env).
    assert int(run.val["replay"].size[0]) == 400 // 5


def _random_return(env_name: str, seeds: list[int], steps: int) -> float:
    returns = []
    for seed in seeds:
        env = make_env(env_name, 10_000 + seed, max_episode_steps=steps)
        rng = np.random.default_rng(seed)
        env.reset()
        total, truncated = 0.0, False
        while not truncated:
            _, reward, _, truncated = env.step(rng.uniform(-1, 1, env.act_dim))
            total += reward
        returns.append(total)
    return float(np.mean(returns))


@pytest.mark.slow
def test_short_run_learns(tmp_path: Path) -> None:
    """cartpole-balance, 25k env steps (about 1-2 min on 2 cores): the final deterministic
    evaluation is far above what uniform random actions get on the same task."""
    cfg = TrainConfig(
        "cartpole-balance",
        seeds=(0, 1),
        utd=1,
        steps=25_000,
        critic_width=32,
        actor_width=32,
        batch_size=64,
        n_quantiles=10,
        lr=1e-3,
        init_temperature=0.1,
        replay_size=25_000,
        warmup_steps=1_000,
        eval_interval=25_000,
        eval_episodes=3,
        log_interval=1_000,
        checkpoint_every=0,
    )
    summary = run_training(cfg, tmp_path, progress=False)
    assert summary["seeds"] == {"0": {"status": "ok"}, "1": {"status": "ok"}}
    df = pd.read_parquet(tmp_path / "curves.parquet")
    final = df[(df.metric == "return") & (df.step == 25_000)].set_index("seed")["value"]
    random_return = _random_return("cartpole-balance", [0, 1, 2, 3], 1_000)
    assert 250 < random_return < 600  # the random baseline of this task (~400)
    assert final.mean() > random_return + 300, (final.to_dict(), random_return)
    assert (final > random_return + 150).all(), (final.to_dict(), random_return)
