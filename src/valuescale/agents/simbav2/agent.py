"""SimbaV2 as pure functions over an explicit state pytree (BRO's interface, see ``bro.py``).

One update on one batch (method.md section 1 "SimbaV2", parts 3-5):

1. actor: loss ``mean(alpha log pi(a~|s) - min_h Q_h(s, a~))`` with ``a~`` reparameterised and the
   critic as it is (not updated by this loss); Adam step, kernels re-projected onto the sphere;
2. temperature: loss ``alpha (H - H_target)``, ``H = -mean log pi`` from the actor step,
   ``H_target = -target_entropy_scale |A|``; Adam step on ``log alpha``;
3. critic: categorical cross-entropy against the projected target distribution built with the
   *updated* actor and alpha and the target critic (:mod:`.loss`); Adam step, kernels
   re-projected;
4. target: Polyak ``tau`` on every critic parameter (never re-projected);
5. passive critic (optional): the same loss against the main critic's target distribution.

All three optimisers are Adam (optax defaults) without weight decay or clipping, each learning
rate decaying linearly to ``lr_end_ratio`` times its initial value over ``lr_decay_updates``
optimiser steps (the schedule's step count lives in the optimiser states, so it resumes with them).

Inputs are raw: ``obs``/``next_obs`` are normalised and rewards scaled inside with the float32
:class:`Statistics` held in the state, which the engine refreshes from the host's float64
:class:`~valuescale.agents.simbav2.host.RunningStatistics` (:func:`set_statistics`).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from valuescale.agents.bro import INIT_COMPILER_OPTIONS, polyak_update
from valuescale.agents.simbav2.config import SimbaV2Config
from valuescale.agents.simbav2.loss import (
    atoms,
    categorical_loss,
    expected_value,
    td_target_distribution,
)
from valuescale.agents.simbav2.networks import (
    KERNEL_NAME,
    CategoricalCritic,
    HyperTanhPolicy,
    apply_critic,
    init_critic,
    project_kernels,
)
from valuescale.networks.bronet import param_count
from valuescale.networks.policy import sample_tanh_gaussian
from valuescale.replay import Batch, Replay, replay_sample

Params = Any
Info = dict[str, jax.Array]


@flax.struct.dataclass
class Statistics:
    """float32 normalisation constants of one seed (leaves; a leading seed axis when stacked).

    ``obs_mean``/``obs_std`` [obs_dim]: ``o_bar = (o - obs_mean) / obs_std``; ``reward_scale`` []:
    ``r~ = r / reward_scale``. Fresh states hold the identity (0, 1, 1), which is what the host's
    statistics give before any observation.
    """

    obs_mean: jax.Array
    obs_std: jax.Array
    reward_scale: jax.Array


@flax.struct.dataclass
class SimbaV2State:
    """Everything one seed's agent needs to continue training (a pytree; cf. ``BROState``).

    ``obs_dim`` / ``act_dim`` / ``c_shift`` are static metadata (what :func:`act` needs besides
    the parameters). The temperature parameters are
    ``{"log_temperature": scalar}``. ``passive_params`` / ``passive_opt_state`` are ``None`` when
    the passive critic is off. ``step`` counts gradient updates. ``statistics`` is overwritten by
    the engine (:func:`set_statistics`); it is part of the state so that a checkpoint of the state
    acts exactly as the live agent did.
    """

    actor_params: Params
    actor_opt_state: Any
    critic_params: Params
    critic_opt_state: Any
    target_critic_params: Params
    temperature_params: Params
    temperature_opt_state: Any
    passive_params: Params
    passive_opt_state: Any
    statistics: Statistics
    rng: jax.Array
    step: jax.Array
    obs_dim: int = flax.struct.field(pytree_node=False, default=0)
    act_dim: int = flax.struct.field(pytree_node=False, default=0)
    c_shift: float = flax.struct.field(pytree_node=False, default=3.0)


# --------------------------------------------------------------------------- modules, optimisers


def _modules(cfg: SimbaV2Config, act_dim: int):
    actor = HyperTanhPolicy(
        act_dim=act_dim, width=cfg.actor_width, depth=cfg.actor_depth, c_shift=cfg.c_shift
    )
    critic = CategoricalCritic(cfg.critic_width, cfg.critic_depth, cfg.n_atoms, cfg.c_shift)
    passive = CategoricalCritic(
        cfg.passive_critic_width, cfg.critic_depth, cfg.n_atoms, cfg.c_shift
    )
    return actor, critic, passive


def learning_rate(cfg: SimbaV2Config, initial: float) -> optax.Schedule:
    """Linear decay from ``initial`` to ``lr_end_ratio * initial`` over ``lr_decay_updates``."""
    if cfg.lr_decay_updates is None:
        raise ValueError(
            "simbav2: SimbaV2Config.lr_decay_updates is None (the run's planned updates); set it, "
            "or resolve the config for a run with bind(cfg, run)"
        )
    return optax.linear_schedule(initial, initial * cfg.lr_end_ratio, cfg.lr_decay_updates)


def _critic_tx(cfg: SimbaV2Config) -> optax.GradientTransformation:
    return optax.adam(learning_rate(cfg, cfg.critic_learning_rate))


def _actor_tx(cfg: SimbaV2Config) -> optax.GradientTransformation:
    return optax.adam(learning_rate(cfg, cfg.actor_learning_rate))


def _temperature_tx(cfg: SimbaV2Config) -> optax.GradientTransformation:
    return optax.adam(learning_rate(cfg, cfg.temperature_lr))


def _heads(cfg: SimbaV2Config, what: str) -> int:
    if cfg.critic_heads is None:
        raise ValueError(
            f"simbav2.{what}: SimbaV2Config.critic_heads is None; resolve it for the environment "
            "first with cfg.for_env(env_name) (1 head on DMC, 2 on HumanoidBench)"
        )
    return cfg.critic_heads


def identity_statistics(obs_dim: int) -> Statistics:
    """Statistics that change nothing (mean 0, std 1, reward scale 1)."""
    return Statistics(
        obs_mean=jnp.zeros((obs_dim,), jnp.float32),
        obs_std=jnp.ones((obs_dim,), jnp.float32),
        reward_scale=jnp.ones((), jnp.float32),
    )


def set_statistics(state: SimbaV2State, statistics: Statistics | dict[str, Any]) -> SimbaV2State:
    """``state`` with its normalisation constants replaced (float32; shapes must match, so a
    stacked state takes stacked statistics, e.g. ``RunningStatistics.device_arrays()``)."""
    if isinstance(statistics, dict):
        statistics = Statistics(**statistics)
    new = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), statistics)
    for name in ("obs_mean", "obs_std", "reward_scale"):
        have, want = getattr(new, name).shape, getattr(state.statistics, name).shape
        if have != want:
            raise ValueError(f"simbav2.set_statistics: {name} has shape {have}, expected {want}")
    return state.replace(statistics=new)


def with_stats(state: SimbaV2State, stats: dict[str, Any]) -> SimbaV2State:
    """The engine's hook (one seed, traced): ``stats`` (``host.host_device``'s per-seed float32
    arrays) into the state's :class:`Statistics`."""
    return state.replace(
        statistics=Statistics(
            obs_mean=stats["obs_mean"], obs_std=stats["obs_std"], reward_scale=stats["reward_scale"]
        )
    )


def normalize_obs(statistics: Statistics, obs: jax.Array) -> jax.Array:
    """``(obs - mean) / std`` with the state's constants."""
    return (obs - statistics.obs_mean) / statistics.obs_std


# --------------------------------------------------------------------------- init


def _init_state(key: jax.Array, obs_dim: int, act_dim: int, cfg: SimbaV2Config) -> SimbaV2State:
    heads = _heads(cfg, "init")
    actor_m, critic_m, passive_m = _modules(cfg, act_dim)
    key, k_actor, k_critic, k_passive = jax.random.split(key, 4)
    actor_params = actor_m.init(k_actor, jnp.zeros((1, obs_dim), jnp.float32))["params"]
    critic_params = init_critic(critic_m, k_critic, obs_dim, act_dim, heads)
    temperature_params = {
        "log_temperature": jnp.asarray(math.log(cfg.init_temperature), jnp.float32)
    }
    passive_params = passive_opt_state = None
    if cfg.passive_critic:
        passive_params = init_critic(passive_m, k_passive, obs_dim, act_dim, heads)
        passive_opt_state = _critic_tx(cfg).init(passive_params)
    return SimbaV2State(
        actor_params=actor_params,
        actor_opt_state=_actor_tx(cfg).init(actor_params),
        critic_params=critic_params,
        critic_opt_state=_critic_tx(cfg).init(critic_params),
        target_critic_params=jax.tree.map(jnp.copy, critic_params),
        temperature_params=temperature_params,
        temperature_opt_state=_temperature_tx(cfg).init(temperature_params),
        passive_params=passive_params,
        passive_opt_state=passive_opt_state,
        statistics=identity_statistics(obs_dim),
        rng=key,
        step=jnp.zeros((), jnp.int32),
        obs_dim=obs_dim,
        act_dim=act_dim,
        c_shift=float(cfg.c_shift),
    )


_init_jit = jax.jit(_init_state, static_argnums=(1, 2, 3), compiler_options=INIT_COMPILER_OPTIONS)


def _positive_int(value: Any, name: str) -> int:
    try:
        as_int = operator.index(value)
    except TypeError:
        as_int = None
    if as_int is None or isinstance(value, bool) or as_int < 1:
        raise ValueError(f"simbav2.init: {name} must be a positive int, got {value!r}")
    return as_int


def init(key: jax.Array, obs_dim: int, act_dim: int, cfg: SimbaV2Config) -> SimbaV2State:
    """A freshly initialised state for one seed (networks, optimiser states, identity
    statistics). The target critic starts as a copy of the critic. ``cfg.critic_heads`` must be
    resolved (:meth:`SimbaV2Config.for_env`)."""
    obs_dim, act_dim = _positive_int(obs_dim, "obs_dim"), _positive_int(act_dim, "act_dim")
    if not isinstance(cfg, SimbaV2Config):
        raise TypeError(f"simbav2.init: cfg must be a SimbaV2Config, got {type(cfg).__name__}")
    _heads(cfg, "init")
    if isinstance(key, jax.core.Tracer):
        return _init_state(key, obs_dim, act_dim, cfg)
    return _init_jit(key, obs_dim, act_dim, cfg)


def init_seeds(keys: jax.Array, obs_dim: int, act_dim: int, cfg: SimbaV2Config) -> SimbaV2State:
    """Per-seed :func:`init` stacked along a leading seed axis (one key per seed; seeds are
    initialised one by one, as in ``bro.init_seeds``: orthogonal init under ``vmap`` hangs on
    jax 0.10.2 CPU)."""
    n_seeds = keys.shape[0]
    if n_seeds < 1:
        raise ValueError("simbav2.init_seeds: need at least one key")
    states = [init(keys[i], obs_dim, act_dim, cfg) for i in range(n_seeds)]
    return _stack_states(states)


@jax.jit
def _stack_states(states: list[SimbaV2State]) -> SimbaV2State:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


# --------------------------------------------------------------------------- acting


def _actor_module(state: SimbaV2State) -> HyperTanhPolicy:
    encoder = state.actor_params["Encoder_0"]
    width = int(encoder["Embedder_0"]["HyperDense_0"][KERNEL_NAME].shape[-1])
    depth = len([k for k in encoder if k.startswith("LerpBlock_")])
    return HyperTanhPolicy(act_dim=state.act_dim, width=width, depth=depth, c_shift=state.c_shift)


def act(
    state: SimbaV2State, obs: jax.Array, key: jax.Array, deterministic: bool = False
) -> jax.Array:
    """Action(s) in [-1, 1] for raw ``obs`` [obs_dim] or [N, obs_dim] (one seed's state).

    Observations are normalised with the state's statistics. ``deterministic=True`` gives
    ``tanh(mu)`` (evaluation). Not jitted here: jit and vmap over seeds at the call site.
    """
    mu, log_std = _actor_module(state).apply(
        {"params": state.actor_params}, normalize_obs(state.statistics, obs)
    )
    if deterministic:
        return jnp.tanh(mu)
    action, _ = sample_tanh_gaussian(key, mu, log_std)
    return action


# --------------------------------------------------------------------------- update


def _prepare(state: SimbaV2State, batch: Batch):
    stats = state.statistics
    return (
        normalize_obs(stats, batch["obs"]),
        normalize_obs(stats, batch["next_obs"]),
        batch["rewards"] / stats.reward_scale,
    )


def _target(
    state: SimbaV2State,
    actor_params: Params,
    alpha: jax.Array,
    next_obs: jax.Array,
    rewards: jax.Array,
    masks: jax.Array,
    key: jax.Array,
    cfg: SimbaV2Config,
) -> jax.Array:
    """Projected target distribution [B, K] (no gradient)."""
    actor_m, critic_m, _ = _modules(cfg, state.act_dim)
    mu, log_std = actor_m.apply({"params": actor_params}, next_obs)
    next_action, next_log_prob = sample_tanh_gaussian(key, mu, log_std)
    target_logits = apply_critic(critic_m, state.target_critic_params, next_obs, next_action)
    return td_target_distribution(
        target_logits, rewards, masks, next_log_prob, alpha, cfg.discount, cfg.v_min, cfg.v_max
    )


def _adam_step(tx, grads, opt_state, params, project: bool):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (project_kernels(params) if project else params), opt_state


def update(state: SimbaV2State, batch: Batch, cfg: SimbaV2Config) -> tuple[SimbaV2State, Info]:
    """One gradient step of actor, temperature, critic, target (and passive critic).

    ``batch`` holds raw transitions (``valuescale.replay.Batch``). Returns the new state and info
    scalars: ``critic_loss`` (cross-entropy summed over heads), ``actor_loss``, ``temperature``
    (alpha of the actor step), ``q_mean`` (mean expected Q of the batch's actions over heads, in
    scaled-reward units), ``entropy`` (``-mean log pi``) and, when on, ``passive_critic_loss``.
    """
    actor_m, critic_m, passive_m = _modules(cfg, state.act_dim)
    support = atoms(cfg.v_min, cfg.v_max, cfg.n_atoms)
    rng, k_actor, k_target = jax.random.split(state.rng, 3)
    obs, next_obs, rewards = _prepare(state, batch)
    alpha = jnp.exp(state.temperature_params["log_temperature"])

    # 1. actor, on the critic as it is
    def actor_loss_fn(params):
        mu, log_std = actor_m.apply({"params": params}, obs)
        action, log_prob = sample_tanh_gaussian(k_actor, mu, log_std)
        logits = apply_critic(critic_m, state.critic_params, obs, action)
        q = jnp.min(expected_value(logits, support), axis=0)
        return jnp.mean(alpha * log_prob - q), log_prob

    (actor_loss, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
        state.actor_params
    )
    actor_params, actor_opt_state = _adam_step(
        _actor_tx(cfg), grads, state.actor_opt_state, state.actor_params, project=True
    )

    # 2. temperature, with the actor step's entropy
    entropy = -jnp.mean(log_prob)
    target_entropy = -cfg.target_entropy_scale * state.act_dim

    def temperature_loss_fn(params):
        return jnp.exp(params["log_temperature"]) * jax.lax.stop_gradient(entropy - target_entropy)

    grads = jax.grad(temperature_loss_fn)(state.temperature_params)
    temperature_params, temperature_opt_state = _adam_step(
        _temperature_tx(cfg),
        grads,
        state.temperature_opt_state,
        state.temperature_params,
        project=False,
    )
    new_alpha = jnp.exp(temperature_params["log_temperature"])

    # 3. critic, against targets from the updated actor and alpha
    target = _target(
        state, actor_params, new_alpha, next_obs, rewards, batch["masks"], k_target, cfg
    )

    def critic_loss_fn(params):
        logits = apply_critic(critic_m, params, obs, batch["actions"])
        return categorical_loss(logits, target), logits

    (critic_loss, logits), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
        state.critic_params
    )
    critic_params, critic_opt_state = _adam_step(
        _critic_tx(cfg), grads, state.critic_opt_state, state.critic_params, project=True
    )

    # 4. target network
    target_critic_params = polyak_update(critic_params, state.target_critic_params, cfg.tau)

    info = {
        "critic_loss": critic_loss,
        "actor_loss": actor_loss,
        "temperature": alpha,
        "q_mean": jnp.mean(expected_value(logits, support)),
        "entropy": entropy,
    }

    # 5. passive critic (same batch, the main critic's target distribution)
    passive_params, passive_opt_state = state.passive_params, state.passive_opt_state
    if cfg.passive_critic:

        def passive_loss_fn(params):
            return categorical_loss(apply_critic(passive_m, params, obs, batch["actions"]), target)

        passive_loss, grads = jax.value_and_grad(passive_loss_fn)(passive_params)
        passive_params, passive_opt_state = _adam_step(
            _critic_tx(cfg), grads, passive_opt_state, passive_params, project=True
        )
        info["passive_critic_loss"] = passive_loss

    new_state = state.replace(
        actor_params=actor_params,
        actor_opt_state=actor_opt_state,
        critic_params=critic_params,
        critic_opt_state=critic_opt_state,
        target_critic_params=target_critic_params,
        temperature_params=temperature_params,
        temperature_opt_state=temperature_opt_state,
        passive_params=passive_params,
        passive_opt_state=passive_opt_state,
        rng=rng,
        step=state.step + 1,
    )
    return new_state, info


def update_n(
    state: SimbaV2State, replay: Replay, cfg: SimbaV2Config, n: int | jax.Array
) -> tuple[SimbaV2State, Info]:
    """``n`` updates in one loop, each on its own batch sampled from ``replay`` (as
    ``bro.update_n``: ``n`` a Python int >= 1 or a traced int32, ``n = 0`` leaves the state
    unchanged with zero info; info averaged over the ``n`` updates). The statistics stay fixed
    during the loop."""
    if not isinstance(n, jax.Array) and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(
            f"simbav2.update_n: n (updates per call) must be a positive int, got {n!r}"
        )

    def one(st: SimbaV2State) -> tuple[SimbaV2State, Info]:
        rng, k_batch = jax.random.split(st.rng)
        batch = replay_sample(replay, k_batch, cfg.batch_size)
        return update(st.replace(rng=rng), batch, cfg)

    def body(_, carry: tuple[SimbaV2State, Info]) -> tuple[SimbaV2State, Info]:
        st, sums = carry
        st, info = one(st)
        return st, jax.tree.map(jnp.add, sums, info)

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(one, state)[1])
    state, sums = jax.lax.fori_loop(0, n, body, (state, zeros))
    count = jnp.maximum(jnp.asarray(n, jnp.float32), 1.0)
    return state, jax.tree.map(lambda x: x / count, sums)


def td_losses(state: SimbaV2State, batch: Batch, cfg: SimbaV2Config) -> Info:
    """TD losses on a raw ``batch`` without updating anything (validation batches).

    ``critic_loss``: the critic's categorical loss against the target distribution from the
    target critic, the current actor and alpha (as in :func:`update`); ``passive_critic_loss``
    (when on): the passive critic's loss against the same targets. The next-action key derives
    from ``state.rng`` (not advanced).
    """
    _, critic_m, passive_m = _modules(cfg, state.act_dim)
    key = jax.random.fold_in(state.rng, 0x7A1D)
    obs, next_obs, rewards = _prepare(state, batch)
    alpha = jnp.exp(state.temperature_params["log_temperature"])
    target = _target(state, state.actor_params, alpha, next_obs, rewards, batch["masks"], key, cfg)
    logits = apply_critic(critic_m, state.critic_params, obs, batch["actions"])
    info = {"critic_loss": categorical_loss(logits, target)}
    if cfg.passive_critic:
        passive_logits = apply_critic(passive_m, state.passive_params, obs, batch["actions"])
        info["passive_critic_loss"] = categorical_loss(passive_logits, target)
    return info


# --------------------------------------------------------------------------- sizes

TRAIN_METRICS: tuple[str, ...] = ("critic_loss", "actor_loss", "temperature", "q_mean", "entropy")
"""Keys of :func:`update_n`'s info (``passive_critic_loss`` added when the passive critic is on)."""


def train_metrics(cfg: SimbaV2Config) -> tuple[str, ...]:
    """The keys of :func:`update_n`'s info for ``cfg`` (logged every ``log_interval``)."""
    return TRAIN_METRICS + (("passive_critic_loss",) if cfg.passive_critic else ())


def _check_one_seed(params: Params, what: str) -> None:
    kernel = params["Encoder_0"]["Embedder_0"]["HyperDense_0"][KERNEL_NAME]
    if kernel.ndim != 3:
        raise ValueError(
            f"{what}: expected one seed's state (critic kernels [heads, fan_in, fan_out]) but got "
            f"a kernel of shape {tuple(kernel.shape)}; pass one seed, e.g. "
            "valuescale.replay.unstack_seed(state, 0)"
        )


def critic_param_count(state: SimbaV2State) -> int:
    """Parameters of the critic (all heads, scalers and biases included), counted from one seed's
    parameter tree (N)."""
    _check_one_seed(state.critic_params, "critic_param_count")
    return param_count(state.critic_params)


def passive_critic_param_count(state: SimbaV2State) -> int:
    """Parameters of the passive critic (all heads); 0 when it is off."""
    if state.passive_params is None:
        return 0
    _check_one_seed(state.passive_params, "passive_critic_param_count")
    return param_count(state.passive_params)


def kernel_norms(params: Params) -> np.ndarray:
    """Column norms of every ``hyper_kernel`` in ``params``, concatenated (host numpy; a test
    and debugging aid: all 1 up to rounding after init and after every update)."""
    norms = []

    def one(path, leaf):
        if getattr(path[-1], "key", None) == KERNEL_NAME:
            norms.append(np.linalg.norm(np.asarray(leaf, np.float64), axis=-2).ravel())
        return leaf

    jax.tree_util.tree_map_with_path(one, params)
    return np.concatenate(norms)
