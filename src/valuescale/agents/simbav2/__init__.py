"""SimbaV2 (Lee et al. 2025, "Hyperspherical Normalization for Scalable Deep RL"), the paper's
second agent, with BRO's interface (``valuescale.agents.bro``).

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

What the engine must do besides BRO's calls (host side)
-------------------------------------------------------
1. **Resolve the config**: ``cfg = cfg.for_env(env_name)`` (1 critic head on DMC, 2 on
   HumanoidBench) and set ``lr_decay_updates`` to the run's planned gradient updates (agent steps
   x updates per agent step) before ``init``; the schedule's position lives in the optimiser
   states, so nothing else is needed on resume.
2. **Action repeat**: wrap every env (training, evaluation, validation) in
   ``host.ActionRepeat(env, cfg.action_repeat)``. UTD ``n`` counts updates per *agent* step (the
   published ``utd_<sigma>``; with AR 2, "UTD 2" is one update per simulator step); log env steps
   as agent steps x ``action_repeat``. Published loop: 5,000 random-action agent steps before
   updates start, replay 1M, B 256, 10 deterministic evaluation episodes every 50k agent steps;
   no resets.
3. **Statistics** (float64, host): one ``host.RunningStatistics(n_seeds, obs_dim, cfg.discount,
   cfg.g_max)`` per run. For every *training* agent step, in this order:

   a. ``stats.observe_reward(reward, done)`` for the transition just taken (``done`` =
      terminated or truncated; skip on the very first step of the run);
   b. ``stats.observe_obs(obs)`` for the observations about to be acted on (warm-up included;
      the first observation after every reset too);
   c. ``agent = set_statistics(agent, stats.device_arrays())`` before the step's ``update_n``
      and ``act`` (a stacked state takes the stacked [S, ...] arrays).

   Evaluation and validation environments never update the statistics (they act and compute TD
   losses with the training statistics, which travel inside the state). Checkpoints must store
   ``stats.state_dict()`` and restore with ``RunningStatistics.from_state_dict``.
   Note: with the engine's fused insert -> update -> act step, step (b) makes the updates of that
   step already see the observation acted on afterwards (the authors' loop normalises it just
   after the updates): one observation of difference in the running mean, nothing else.
"""

from valuescale.agents.simbav2.agent import (
    SimbaV2State,
    Statistics,
    act,
    critic_param_count,
    identity_statistics,
    init,
    init_seeds,
    kernel_norms,
    learning_rate,
    normalize_obs,
    passive_critic_param_count,
    set_statistics,
    td_losses,
    update,
    update_n,
)
from valuescale.agents.simbav2.config import SimbaV2Config, critic_heads_for_env, horizon_discount
from valuescale.agents.simbav2.host import ActionRepeat, RunningStatistics
from valuescale.agents.simbav2.networks import simbav2_critic_param_formula

Config = SimbaV2Config
"""The agent's config class (the engine protocol's ``config class``)."""

__all__ = [
    "ActionRepeat",
    "Config",
    "RunningStatistics",
    "SimbaV2Config",
    "SimbaV2State",
    "Statistics",
    "act",
    "critic_heads_for_env",
    "critic_param_count",
    "horizon_discount",
    "identity_statistics",
    "init",
    "init_seeds",
    "kernel_norms",
    "learning_rate",
    "normalize_obs",
    "passive_critic_param_count",
    "set_statistics",
    "simbav2_critic_param_formula",
    "td_losses",
    "update",
    "update_n",
]
