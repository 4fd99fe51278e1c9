"""The agent protocol: every registered agent follows it, its config is JAX-free and documented.
The engine's optional host hooks (statistics in float64 on the host, bind) are held to account
end to end by SimbaV2's real run and resume (``test_simbav2_engine.py``)."""

from __future__ import annotations

import subprocess
import sys

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
