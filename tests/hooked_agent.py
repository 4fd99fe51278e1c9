"""A test agent for the engine's optional hooks (docs/engine-api.md): BRO behind a running
observation normalisation whose statistics live on the host in float64, updated with every
observation the policy acts on in training, shipped to the device as float32 and put into the
state by ``with_stats``; ``bind`` records the run's planned updates in the config. It holds the
engine's plumbing of those hooks to account until a real agent (SimbaV2) uses them; the numbers
are BRO's on normalised observations."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from valuescale.agents import bro
from valuescale.agents.bro.config import BROConfig
from valuescale.settings import setting

NAME = "hooked"


@dataclasses.dataclass(frozen=True)
class HookedConfig(BROConfig):
    """BRO's settings and the run's planned updates (filled in by ``bind``)."""

    planned_updates: int = setting(0, low=0)
    """Gradient steps the run plans (set by bind; a learning-rate schedule would read it)."""


Config = HookedConfig


@flax.struct.dataclass
class HookedState:
    bro: Any
    obs_mean: jax.Array
    obs_var: jax.Array


def _norm(state: HookedState, obs: jax.Array) -> jax.Array:
    return (obs - state.obs_mean) / jnp.sqrt(state.obs_var + 1e-8)


def init(key, obs_dim, act_dim, cfg):
    inner = bro.init(key, obs_dim, act_dim, cfg)
    return HookedState(inner, jnp.zeros(obs_dim, jnp.float32), jnp.ones(obs_dim, jnp.float32))


def init_seeds(keys, obs_dim, act_dim, cfg):
    inner = bro.init_seeds(keys, obs_dim, act_dim, cfg)
    n = keys.shape[0]
    zeros, ones = jnp.zeros((n, obs_dim), jnp.float32), jnp.ones((n, obs_dim), jnp.float32)
    return HookedState(inner, zeros, ones)


def act(state, obs, key, deterministic=False):
    return bro.act(state.bro, _norm(state, obs), key, deterministic)


def update_n(state, replay, cfg, n):
    view = replay.replace(obs=_norm(state, replay.obs), next_obs=_norm(state, replay.next_obs))
    inner, info = bro.update_n(state.bro, view, cfg, n)
    return state.replace(bro=inner), info


def td_losses(state, batch, cfg):
    normed = {
        **batch,
        "obs": _norm(state, batch["obs"]),
        "next_obs": _norm(state, batch["next_obs"]),
    }
    return bro.td_losses(state.bro, normed, cfg)


def train_metrics(cfg):
    return bro.train_metrics(cfg)


def critic_param_count(state):
    return bro.critic_param_count(state.bro)


def passive_critic_param_count(state):
    return bro.passive_critic_param_count(state.bro)


def bind(cfg, run):
    return dataclasses.replace(cfg, planned_updates=run.total_updates)


def host_init(cfg, n_seeds, obs_dim):
    return {
        "count": np.full(n_seeds, 1e-4),
        "mean": np.zeros((n_seeds, obs_dim)),
        "var": np.ones((n_seeds, obs_dim)),
        "rewards": np.zeros(n_seeds),
        "episodes": np.zeros(n_seeds),
    }


def host_observe(cfg, h, obs):
    """Parallel merge of one observation per seed into the running mean and variance."""
    count = h["count"][:, None]
    delta = obs - h["mean"]
    total = count + 1.0
    mean = h["mean"] + delta / total
    var = (h["var"] * count + delta**2 * count / total) / total
    return {**h, "count": h["count"] + 1.0, "mean": mean, "var": var}


def host_reward(cfg, h, reward, terminated, truncated):
    done = (terminated | truncated).astype(np.float64)
    return {**h, "rewards": h["rewards"] + reward, "episodes": h["episodes"] + done}


def host_device(cfg, h):
    return {"obs_mean": h["mean"].astype(np.float32), "obs_var": h["var"].astype(np.float32)}


def with_stats(state, stats):
    return state.replace(obs_mean=stats["obs_mean"], obs_var=stats["obs_var"])
