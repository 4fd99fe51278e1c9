"""The agent protocol: every registered agent follows it, its config is JAX-free and documented,
and the engine's optional host hooks (statistics in float64 on the host, bind) work end to end
through a real tiny run and a resume (``hooked_agent.py``: BRO on normalised observations)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import valuescale.agents as agents
from valuescale.agents.base import GRID_FIELDS, VALIDATION_METRICS
from valuescale.config import TrainConfig
from valuescale.settings import field_docs, public_fields

FUNCTIONS = (
    "init",
    "init_seeds",
    "act",
    "update_n",
    "td_losses",
    "train_metrics",
    "critic_param_count",
    "passive_critic_param_count",
)


def test_agent_configs_load_without_jax_and_reserved_names_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, valuescale.agents as a\n"
            "[a.config_class(n) for n in a.AGENTS]\n"
            "import valuescale.config, valuescale.train\n"
            "print('jax' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.strip() == "False", probe.stderr[-2000:]
    monkeypatch.setattr(agents, "RESERVED_AGENTS", ("future",))  # none is reserved today
    with pytest.raises(KeyError, match="reserved"):
        agents.config_class("future")
    with pytest.raises(KeyError, match="unknown agent"):
        agents.get_agent("dqn")


@pytest.mark.parametrize("name", list(agents.AGENTS))
def test_registered_agent_follows_the_protocol(name: str) -> None:
    import jax

    from valuescale.replay import replay_init, replay_sample

    agent, cls = agents.get_agent(name), agents.config_class(name)
    assert agent.NAME == name and agent.Config is cls
    for function in FUNCTIONS:
        assert callable(getattr(agent, function)), function
    docs = field_docs(cls)
    names = [f.name for f in public_fields(cls)]
    assert set(GRID_FIELDS) <= set(names)
    assert all(docs.get(n) for n in names), [n for n in names if not docs.get(n)]
    assert not {f.name for f in public_fields(TrainConfig)} & set(names)
    obs_dim, act_dim = 3, 2
    replay = replay_init(16, obs_dim, act_dim)
    batch = replay_sample(replay, jax.random.key(1), 4)
    for flags in ({}, {"passive_critic": True} if "passive_critic" in names else {}):
        cfg = cls(critic_width=8, batch_size=4, **flags)
        bind = getattr(agent, "bind", None)  # optional: the run's facts into the config
        if bind is not None:
            cfg = bind(cfg, TrainConfig("cartpole-balance", agent=name, agent_config=cfg))

        def init(key, cfg=cfg):
            return agent.init(key, obs_dim, act_dim, cfg)

        def update(state, replay, n, cfg=cfg):
            return agent.update_n(state, replay, cfg, n)

        def td_losses(state, batch, cfg=cfg):
            return agent.td_losses(state, batch, cfg)

        state = jax.eval_shape(init, jax.random.key(0))
        _, info = jax.eval_shape(update, state, replay, jax.numpy.int32(2))
        assert set(info) == set(agent.train_metrics(cfg))
        assert {"critic_loss", "actor_loss"} <= set(info)
        losses = jax.eval_shape(td_losses, state, batch)
        assert "critic_loss" in losses and set(losses) <= set(VALIDATION_METRICS)
        assert ("passive_critic_loss" in losses) == ("passive_critic_loss" in info)


TINY = dict(
    env="cartpole-balance",  # rewards > 0 from the start
    seeds=(0, 1),
    critic_width=16,
    actor_width=16,
    batch_size=16,
    n_quantiles=5,
    replay_size=1_000,
    warmup_steps=100,
    eval_interval=250,
    eval_episodes=1,
    max_episode_steps=100,
    log_interval=100,
    steps=500,
    checkpoint_every=300,
)


@pytest.mark.slow
def test_host_statistics_hooks_float64_per_step_checkpointed_and_resumed_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valuescale.engine as engine
    from valuescale.checkpoint import CHECKPOINT_NAME, load_checkpoint

    monkeypatch.setitem(agents.AGENTS, "hooked", "hooked_agent")
    cfg = TrainConfig(agent="hooked", **TINY)
    kept = tmp_path / "kept"  # the run folder as its first checkpoint (step 300) left it
    save = engine.save_checkpoint

    def save_and_keep(path, payload):
        save(path, payload)
        if not kept.exists():
            shutil.copytree(path.parent, kept)

    with monkeypatch.context() as m:
        m.setattr(engine, "save_checkpoint", save_and_keep)
        out = tmp_path / "run"
        out.mkdir()
        run = engine._Run(cfg, out, progress=False)
        run.run(resumed=False)

    assert run.dev.acfg.planned_updates == cfg.total_updates == 400  # bind
    h = run.host.state
    assert h["mean"].dtype == np.float64 and h["var"].dtype == np.float64
    # every observation acted on in training: the reset one, then one per env step
    np.testing.assert_allclose(h["count"], 1e-4 + 1 + 500)
    np.testing.assert_array_equal(h["episodes"], [5, 5])  # 100-step episodes, truncated
    assert np.all(h["rewards"] > 0)
    # the device got them as float32, through with_stats, at the last step
    np.testing.assert_array_equal(
        np.asarray(run.carry.agent.obs_mean), h["mean"].astype(np.float32)
    )
    assert not np.allclose(h["mean"], 0.0)

    resumed = engine._Run(cfg, kept, progress=False)
    resumed.restore(load_checkpoint(kept / CHECKPOINT_NAME))
    assert resumed.t == 300 and resumed.host.state["count"][0] == pytest.approx(1e-4 + 301)
    resumed.run(resumed=True)
    for key, value in h.items():
        np.testing.assert_array_equal(resumed.host.state[key], value, err_msg=key)
    before = pd.read_parquet(out / "curves.parquet")
    after = pd.read_parquet(kept / "curves.parquet")
    assert set(before.metric) >= {"critic_loss", "return"}
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    assert (before["agent"] == "hooked").all()
    assert dataclasses.asdict(cfg.agent_config)["planned_updates"] == 0  # the user's setting
