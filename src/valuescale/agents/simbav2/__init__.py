"""SimbaV2 (Lee et al. 2025, "Hyperspherical Normalization for Scalable Deep RL"), the paper's
second agent: ``valuescale.agents.base.Agent`` with the engine's optional host hooks.

Importing this package does not import JAX: :class:`SimbaV2Config` and the host hooks (numpy)
are loaded at once, the JAX parts on first use (as ``valuescale.agents.bro``).

Modules: :mod:`.config` (:class:`SimbaV2Config`, the one home of every hyperparameter),
:mod:`.networks` (hyperspherical layers, LERP blocks, critic, actor), :mod:`.loss` (categorical
projection and cross-entropy), :mod:`.agent` (state, init, act, update, update_n, td_losses,
parameter counts), :mod:`.host` (float64 running statistics, action repeat).

Device functions, same names, arguments and conventions as BRO's (one seed's state; seeds as a
leading axis through ``init_seeds`` and ``jax.vmap``; the UTD loop inside ``update_n``)::

    init(key, obs_dim, act_dim, cfg) -> SimbaV2State
    init_seeds(keys, obs_dim, act_dim, cfg) -> SimbaV2State          # [S, ...]
    act(state, obs, key, deterministic=False) -> action
    update(state, batch, cfg) -> (state, info)
    update_n(state, replay, cfg, n) -> (state, info)
    td_losses(state, batch, cfg) -> info
    critic_param_count(state) -> int ; passive_critic_param_count(state) -> int

Info keys are BRO's (``critic_loss``, ``actor_loss``, ``temperature``, ``q_mean``, ``entropy``,
``passive_critic_loss``); ``critic_loss`` is a cross-entropy (summed over heads) and ``q_mean`` is
in scaled-reward units. The replay buffer holds raw observations and rewards, as for BRO.

How the engine runs it (``python -m valuescale.train --agent simbav2``)
----------------------------------------------------------------------
Through the protocol's optional hooks and config fields (docs/engine-api.md), nothing by name:

1. ``bind(cfg, run)`` (:mod:`.host`): critic heads for the env (``cfg.for_env``: 1 on DMC, 2 on
   HumanoidBench) and ``lr_decay_updates`` = the run's planned updates when null; the schedule's
   position lives in the optimiser states, so nothing else is needed on resume.
2. ``action_repeat`` (a config field the engine reads, as BRO's ``reset_interval``): every env
   (training, evaluation, validation) is wrapped in ``valuescale.envs.ActionRepeat``; ``utd``
   counts updates per *agent* step (the published ``utd_<sigma>``); the loop's step settings and
   the logged steps are simulator steps (``valuescale.config``'s docstring).
3. Statistics (float64, host): ``host_init``/``host_observe``/``host_reward``/``host_device``
   (:mod:`.host`, a :class:`RunningStatistics` as its ``state_dict``, checkpointed) and
   ``with_stats`` (:mod:`.agent`). Per training agent step: the reward of the transition just
   taken, then the observation about to be acted on (warm-up included; the reset observations
   first), then the float32 statistics into the states before ``update_n`` and ``act``.
   Evaluation and validation never update them (they use the last training step's).
   With the engine's fused insert -> update -> act step, the updates of a step already see the
   observation acted on afterwards (the authors' loop normalises it just after the updates): one
   observation of difference in the running mean, nothing else.

Published loop: 5,000 random-action agent steps before updates start, replay 1M, B 256, 10
deterministic evaluation episodes every 50k agent steps; no resets.
"""

from __future__ import annotations

from valuescale.agents.base import lazy_attributes
from valuescale.agents.simbav2.config import SimbaV2Config, critic_heads_for_env, horizon_discount
from valuescale.agents.simbav2.host import (
    ActionRepeat,
    RunningStatistics,
    bind,
    host_device,
    host_init,
    host_observe,
    host_reward,
)

NAME = "simbav2"
Config = SimbaV2Config
"""The agent's config class (the engine protocol's ``config class``)."""

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "SimbaV2State",
            "Statistics",
            "TRAIN_METRICS",
            "act",
            "critic_param_count",
            "identity_statistics",
            "init",
            "init_seeds",
            "kernel_norms",
            "learning_rate",
            "normalize_obs",
            "passive_critic_param_count",
            "set_statistics",
            "td_losses",
            "train_metrics",
            "update",
            "update_n",
            "with_stats",
        ),
        "agent",
    ),
    "simbav2_critic_param_formula": "networks",
}


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


__all__ = [
    "NAME",
    "ActionRepeat",
    "Config",
    "RunningStatistics",
    "SimbaV2Config",
    "bind",
    "critic_heads_for_env",
    "horizon_discount",
    "host_device",
    "host_init",
    "host_observe",
    "host_reward",
    *_LAZY,
]
