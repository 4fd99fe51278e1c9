"""The engine's device side: the typed carries and the jitted, seed-vmapped step functions.

Everything here runs under ``jax.jit`` over pytrees with a leading seed axis of size S; the agent
is reached through its protocol (``valuescale.agents.base.Agent``), never by name. One env step of
training is ONE call (:meth:`Device.fused`, carry donated)::

    insert the transition -> agent.update_n (n = updates due now) -> next actions

and only the next actions go back to the host. ``n`` and the policy-or-random choice are traced
arguments, so a run compiles the step once whatever its UTD ratio.

Imports JAX: the engine (``valuescale.engine``) imports this module only once the CLI has pinned
the process to its cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from valuescale.agents import get_agent
from valuescale.agents.base import VALIDATION_METRICS
from valuescale.config import TrainConfig
from valuescale.replay import Replay, replay_init, replay_insert, replay_sample, stack_seeds

# Random streams per seed (see valuescale.engine's docstring).
KEY_INIT, KEY_ACT, KEY_VAL = 1, 2, 3


@flax.struct.dataclass
class Carry:
    """The training state on the device (every leaf has the seed axis S first, but the counters).

    Fields are in alphabetical order, so that the leaves flatten in the order of the dict this
    replaced (checkpoints of format 2 stay readable).
    """

    action: jax.Array
    """[S, act_dim] the pending actions (for ``obs``)."""
    agent: Any
    """The agent states (the agent's pytree, seed axis first)."""
    bad: jax.Array
    """[S] int32: the env step at which a seed's update first gave a non-finite loss (-1: never)."""
    count: jax.Array
    """int32: updates summed in ``sums`` since the last flush."""
    key: jax.Array
    """[S, 2] action keys (``fold_in(PRNGKey(seed), KEY_ACT)``, split at every action)."""
    obs: jax.Array
    """[S, obs_dim] the observations the pending actions are for."""
    replay: Replay
    """The per-seed training replays (``None`` in a checkpoint: stored as chunks)."""
    sums: dict[str, jax.Array]
    """Per-seed sums of the training metrics (``update_n``'s info times ``n``) since the flush."""
    t: jax.Array
    """int32: env (simulator) steps taken."""


@flax.struct.dataclass
class ValCarry:
    """The validation state on the device: a held-out replay filled from the validation envs
    (alphabetical fields, as ``Carry``)."""

    action: jax.Array
    """[S, act_dim] the validation envs' pending actions."""
    count: jax.Array
    """int32: validation losses summed in ``sums`` since the last flush."""
    key: jax.Array
    """[S, 2] validation keys (``fold_in(PRNGKey(seed), KEY_VAL)``)."""
    obs: jax.Array
    """[S, obs_dim] the validation envs' observations."""
    replay: Replay
    """The per-seed held-out replays."""
    sums: dict[str, jax.Array]
    """Per-seed sums of the validation metrics since the last flush."""


def metric_names(cfg: TrainConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training metrics, validation metrics) logged for ``cfg``: the agent's ``train_metrics``,
    and the validation names of ``critic_loss`` (and ``passive_critic_loss`` when trained)."""
    train = tuple(get_agent(cfg.agent).train_metrics(cfg.agent_config))
    val: tuple[str, ...] = ()
    if cfg.validation:
        val = tuple(VALIDATION_METRICS[k] for k in VALIDATION_METRICS if k in train)
    return train, val


class Device:
    """The jitted, vmapped device functions of one run (built once per run)."""

    def __init__(self, cfg: TrainConfig, obs_dim: int, act_dim: int) -> None:
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.agent = agent = get_agent(cfg.agent)
        bind = getattr(agent, "bind", None)  # optional: run facts into the agent's config
        self.acfg = acfg = cfg.agent_config if bind is None else bind(cfg.agent_config, cfg)
        with_stats = getattr(agent, "with_stats", None)  # optional: host statistics -> state
        self.n_seeds = len(cfg.seeds)
        self.train_metrics, self.val_metrics = metric_names(cfg)
        d = obs_dim
        vinsert = jax.vmap(replay_insert)
        val_names = {k: v for k, v in VALIDATION_METRICS.items() if v in self.val_metrics}

        def staged(state, stats):
            """The agent states with the host's statistics (``stats``: per-seed arrays) in them;
            unchanged for an agent without host statistics (``stats`` then ``{}``)."""
            return state if with_stats is None else jax.vmap(with_stats)(state, stats)

        def next_action(state, key, obs, policy):
            """The policy's sample where ``policy`` (a traced bool), else uniform in [-1, 1]."""
            keys = jax.vmap(jax.random.split)(key)
            key, k_act = keys[:, 0], keys[:, 1]
            sampled = jax.vmap(lambda s, o, k: agent.act(s, o, k, False))(state, obs, k_act)
            uniform = jax.vmap(lambda k: jax.random.uniform(k, (act_dim,), jnp.float32, -1.0, 1.0))(
                k_act
            )
            return key, jnp.where(policy, sampled, uniform)

        def fused(carry: Carry, packed, n, policy, stats) -> Carry:
            reward, mask = packed[:, 0], packed[:, 1]
            next_obs, policy_obs = packed[:, 2 : 2 + d], packed[:, 2 + d :]
            replay = vinsert(carry.replay, carry.obs, carry.action, reward, mask, next_obs)
            t = carry.t + cfg.action_repeat  # simulator steps (valuescale.config)
            state = staged(carry.agent, stats)
            # n = 0 (warm-up, or a step without update at sigma < 1): zero info, nothing changes
            state, info = jax.vmap(lambda s, r: agent.update_n(s, r, acfg, n))(state, replay)
            finite = jnp.isfinite(info["critic_loss"]) & jnp.isfinite(info["actor_loss"])
            bad = jnp.where((carry.bad < 0) & ~finite, t, carry.bad)
            sums = {k: carry.sums[k] + info[k] * n for k in carry.sums}
            key, action = next_action(state, carry.key, policy_obs, policy)
            return carry.replace(
                agent=state,
                replay=replay,
                obs=policy_obs,
                action=action,
                key=key,
                t=t,
                sums=sums,
                count=carry.count + n,
                bad=bad,
            )

        def refresh_action(carry: Carry, policy, stats) -> Carry:
            state = staged(carry.agent, stats)
            key, action = next_action(state, carry.key, carry.obs, policy)
            return carry.replace(agent=state, key=key, action=action)

        def val_act(val: ValCarry, state, policy) -> ValCarry:
            key, action = next_action(state, val.key, val.obs, policy)
            return val.replace(key=key, action=action)

        def val_insert(val: ValCarry, state, packed, compute_loss) -> ValCarry:
            """Insert; where ``compute_loss`` (a traced bool), also accumulate TD losses."""
            reward, mask = packed[:, 0], packed[:, 1]
            next_obs, new_obs = packed[:, 2 : 2 + d], packed[:, 2 + d :]
            replay = vinsert(val.replay, val.obs, val.action, reward, mask, next_obs)
            keys = jax.vmap(jax.random.split)(val.key)
            batch = jax.vmap(lambda r, k: replay_sample(r, k, acfg.batch_size))(replay, keys[:, 1])
            info = jax.vmap(lambda s, b: agent.td_losses(s, b, acfg))(state, batch)
            named = {v: info[k] for k, v in val_names.items()}
            return val.replace(
                replay=replay,
                obs=new_obs,
                key=jnp.where(compute_loss, keys[:, 0], val.key),
                sums={
                    k: jnp.where(compute_loss, val.sums[k] + named[k], val.sums[k])
                    for k in val.sums
                },
                count=val.count + compute_loss.astype(jnp.int32),
            )

        dummy = jax.random.PRNGKey(0)

        def eval_act(state, obs):
            return jax.vmap(lambda s, o: agent.act(s, o, dummy, True))(state, obs)

        self._fused = jax.jit(fused, donate_argnums=0)
        self._refresh = jax.jit(refresh_action, donate_argnums=0)
        self._val_act = jax.jit(val_act, donate_argnums=0)
        self._val_insert = jax.jit(val_insert, donate_argnums=0)
        self.eval_act = jax.jit(eval_act)

    # ----------------------------------------------------------------- builders

    def seed_keys(self, stream: int, index: int | None = None) -> jax.Array:
        """[S, 2] raw keys ``fold_in(PRNGKey(seed), stream)`` (then ``index`` if given)."""
        keys = []
        for seed in self.cfg.seeds:
            k = jax.random.fold_in(jax.random.PRNGKey(seed), stream)
            if index is not None:
                k = jax.random.fold_in(k, index)
            keys.append(k)
        return jnp.stack(keys)

    def init_agent(self, reset_index: int) -> Any:
        """Freshly initialised agent states (seed axis) for the ``reset_index``-th (re)start."""
        keys = self.seed_keys(KEY_INIT, reset_index)
        return self.agent.init_seeds(keys, self.obs_dim, self.act_dim, self.acfg)

    def zero_sums(self, names: Sequence[str]) -> dict[str, jax.Array]:
        """Per-seed zero accumulators for ``names``."""
        return {k: jnp.zeros((self.n_seeds,), jnp.float32) for k in names}

    def zero(self) -> jax.Array:
        """An int32 zero scalar on the device (counters)."""
        return jnp.zeros((), jnp.int32)

    def init_carry(self, obs: np.ndarray) -> Carry:
        """The training carry at env step 0 (no pending action yet)."""
        replay = replay_init(self.cfg.replay_size, self.obs_dim, self.act_dim)
        return Carry(
            action=jnp.zeros((self.n_seeds, self.act_dim), jnp.float32),
            agent=self.init_agent(0),
            bad=jnp.full((self.n_seeds,), -1, jnp.int32),
            count=jnp.zeros((), jnp.int32),
            key=self.seed_keys(KEY_ACT),
            obs=jnp.asarray(obs, jnp.float32),
            replay=stack_seeds([replay] * self.n_seeds),
            sums=self.zero_sums(self.train_metrics),
            t=jnp.zeros((), jnp.int32),
        )

    def init_val(self, obs: np.ndarray) -> ValCarry:
        """The validation carry (held-out replay of the validation envs)."""
        capacity = max(
            self.acfg.batch_size, math.ceil(self.cfg.replay_size / self.cfg.validation_every)
        )
        replay = replay_init(capacity, self.obs_dim, self.act_dim)
        return ValCarry(
            action=jnp.zeros((self.n_seeds, self.act_dim), jnp.float32),
            count=jnp.zeros((), jnp.int32),
            key=self.seed_keys(KEY_VAL),
            obs=jnp.asarray(obs, jnp.float32),
            replay=stack_seeds([replay] * self.n_seeds),
            sums=self.zero_sums(self.val_metrics),
        )

    # ----------------------------------------------------------------- calls

    def fused(
        self, carry: Carry, packed: np.ndarray, n: int, policy: bool, stats: Any = None
    ) -> Carry:
        """Insert the transition, run ``n`` updates, compute the next actions (donates carry).
        ``stats``: the host's statistics (``HostStats.device``), None without."""
        return self._fused(carry, packed, np.int32(n), np.bool_(policy), stats or {})

    def refresh(self, carry: Carry, policy: bool, stats: Any = None) -> Carry:
        """Recompute the pending actions with the current agent (after a reset)."""
        return self._refresh(carry, np.bool_(policy), stats or {})

    def val_act(self, val: ValCarry, agent: Any, policy: bool) -> ValCarry:
        """Compute the validation envs' next actions."""
        return self._val_act(val, agent, np.bool_(policy))

    def val_insert(
        self, val: ValCarry, agent: Any, packed: np.ndarray, compute_loss: bool
    ) -> ValCarry:
        """Insert validation transitions (and accumulate validation TD losses)."""
        return self._val_insert(val, agent, packed, np.bool_(compute_loss))

    def critic_params(self, agent: Any) -> tuple[int, int]:
        """(critic, passive critic) parameter counts from seed 0's parameter tree."""
        one = jax.tree.map(lambda x: x[0], agent)
        return self.agent.critic_param_count(one), self.agent.passive_critic_param_count(one)

    def shapes_of(self, builder: Callable[..., Any], *args: Any) -> Any:
        """``jax.eval_shape`` of ``builder(*args)``: its structure, shapes and dtypes."""
        return jax.eval_shape(builder, *args)

    @staticmethod
    def to_device(array: np.ndarray) -> jax.Array:
        """``jnp.asarray``: a host array on the device."""
        return jnp.asarray(array)

    def fetch(self, tree: Any) -> Any:
        """``jax.device_get`` (host numpy)."""
        return jax.device_get(tree)

    @staticmethod
    def backend() -> str:
        """JAX's default backend (cpu, gpu, tpu)."""
        return jax.default_backend()


class HostStats:
    """The host side of an agent with running statistics (a SimbaV2-like agent: observation
    normalisation and reward scaling kept in float64 on the host), through its optional hooks:

    - ``host_init(cfg, n_seeds, obs_dim) -> H``: the statistics of every seed, a dict of numpy
      arrays (float64, seed axis first), checkpointed as they are;
    - ``host_observe(cfg, H, obs) -> H``: every observation the policy acts on in training
      (``obs`` [S, obs_dim] float64: the reset observations, then each step's next observation,
      or the new episode's first), before the action for it is computed; never in evaluation
      or validation;
    - ``host_reward(cfg, H, reward, terminated, truncated) -> H``: every training env step
      (arrays [S]; float64 rewards, bool flags), before ``host_observe`` of its next observation;
    - ``host_device(cfg, H) -> stats``: what the device functions get (float32 arrays, seed axis
      first), put into the agent states by ``with_stats(state, stats) -> state`` (one seed, traced)
      before every update and every refresh of the pending actions.

    An agent without ``host_init`` has no statistics: every call here is a no-op.
    """

    def __init__(self, agent: Any, acfg: Any, n_seeds: int, obs_dim: int) -> None:
        self._agent, self._cfg = agent, acfg
        self.active = hasattr(agent, "host_init")
        self.state: Any = agent.host_init(acfg, n_seeds, obs_dim) if self.active else None

    def observe(self, obs: np.ndarray) -> None:
        if self.active:
            self.state = self._agent.host_observe(self._cfg, self.state, obs.astype(np.float64))

    def reward(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> None:
        if self.active:
            self.state = self._agent.host_reward(
                self._cfg, self.state, reward.astype(np.float64), terminated, truncated
            )

    def device(self) -> Any:
        """The statistics for the device functions (None for an agent without them)."""
        return self._agent.host_device(self._cfg, self.state) if self.active else None
