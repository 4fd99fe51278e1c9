"""BRO agent (Nauman et al. 2024) as pure functions over an explicit state pytree.

SAC-style actor-critic with a double distributional BroNet critic (method.md section 1):

* critic: two independent BroNet heads (width ``critic_width``, depth 2) on concat(obs, action),
  each giving ``n_quantiles`` return quantiles at ``tau_k = (k + 0.5) / n_quantiles``; trained with
  the quantile Huber loss (``kappa = 1``), summed over predicted quantiles, averaged over target
  quantiles and batch, summed over the two heads;
* TD target per target quantile ``j``::

      T_j = r + discount * mask * (qbar'_j - alpha * log pi(a'|s')),   a' ~ pi(.|s')
      qbar'_j = (q1'_j + q2'_j) / 2 - pessimism * |q1'_j - q2'_j| / 2

  where ``q1', q2'`` are the target network's heads. ``|q1 - q2| / 2`` is the standard deviation
  of the two heads, so ``pessimism = 0`` (the paper's setting) is the plain mean and
  ``pessimism = 1`` is the clipped double-Q minimum;
* actor: tanh-Gaussian on a BroNet (width 256, depth 1), loss ``mean(alpha * log pi(a|s) -
  Qbar(s, a))`` with ``Qbar`` the (pessimism-adjusted) head mean averaged over quantiles, using the
  freshly updated critic;
* temperature: learned ``log alpha`` (``alpha`` starts at 1), loss ``alpha * (entropy -
  target_entropy)``, ``target_entropy = -target_entropy_scale * |A|``, Adam with ``b1 = 0.5``;
* AdamW (lr 3e-4, weight decay 1e-4) for actor and critic; Polyak ``tau = 0.005`` after every critic
  step; ``discount = 0.99``;
* passive critic (optional, paper Sec. 5.3): a second double critic of its own width trained on the
  same batches to regress the *main* critic's TD targets with the same loss; never used for acting
  or bootstrapping.

Order inside one update: critic step, Polyak target, actor step (on the new critic), temperature
step (with the actor step's entropy), passive critic step.

The building blocks of the loss live in :mod:`valuescale.agents.bro.loss`; the hyperparameters in
:class:`valuescale.agents.bro.config.BROConfig`. This module is the agent's side of the engine's
protocol (``valuescale.agents.base.Agent``).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from valuescale.agents.bro.config import BROConfig
from valuescale.agents.bro.loss import head_mean, polyak_update, quantile_huber_loss
from valuescale.networks.bronet import (
    QuantileCritic,
    apply_double_critic,
    init_double_critic,
    param_count,
)
from valuescale.networks.policy import TanhGaussianPolicy, sample_tanh_gaussian
from valuescale.replay import Batch, Replay, replay_sample

Params = Any
Info = dict[str, jax.Array]

NAME = "bro"
Config = BROConfig

TRAIN_METRICS: tuple[str, ...] = ("critic_loss", "actor_loss", "temperature", "q_mean", "entropy")
"""The info scalars of every update (``passive_critic_loss`` is added when the passive critic is
on)."""


def train_metrics(cfg: BROConfig) -> tuple[str, ...]:
    """The keys of :func:`update_n`'s info, in the order the engine logs them."""
    return TRAIN_METRICS + (("passive_critic_loss",) if cfg.passive_critic else ())


@flax.struct.dataclass
class BROState:
    """Everything one seed's agent needs to continue training (a pytree).

    ``obs_dim`` / ``act_dim`` are static metadata (not leaves). The temperature parameters are
    ``{"log_temperature": scalar}``. ``passive_params`` / ``passive_opt_state`` are ``None`` when
    the passive critic is off. ``step`` counts gradient updates since the last (re-)init.
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
    rng: jax.Array
    step: jax.Array
    obs_dim: int = flax.struct.field(pytree_node=False, default=0)
    act_dim: int = flax.struct.field(pytree_node=False, default=0)


def _modules(cfg: BROConfig, act_dim: int):
    actor = TanhGaussianPolicy(act_dim=act_dim, width=cfg.actor_width, depth=cfg.actor_depth)
    critic = QuantileCritic(cfg.critic_width, cfg.critic_depth, cfg.n_quantiles)
    passive = QuantileCritic(cfg.passive_critic_width, cfg.critic_depth, cfg.n_quantiles)
    return actor, critic, passive


def _critic_tx(cfg: BROConfig) -> optax.GradientTransformation:
    return optax.adamw(cfg.critic_learning_rate, weight_decay=cfg.weight_decay)


def _actor_tx(cfg: BROConfig) -> optax.GradientTransformation:
    return optax.adamw(cfg.actor_learning_rate, weight_decay=cfg.weight_decay)


def _temperature_tx(cfg: BROConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.temperature_lr, b1=cfg.temperature_b1)


# --------------------------------------------------------------------------- init


#: XLA options of the init function: it runs once per (re)start, so its compile time, not its run
#: time, is what counts. Without LLVM's optimisation passes it compiles in about a third of the
#: time (2.5 s instead of 7.9 s for a width-32 agent on one CPU core); threefry and the LAPACK QR
#: of the orthogonal initialiser are the same code either way.
INIT_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def _init_state(key: jax.Array, obs_dim: int, act_dim: int, cfg: BROConfig) -> BROState:
    actor_m, critic_m, passive_m = _modules(cfg, act_dim)
    key, k_actor, k_critic, k_passive = jax.random.split(key, 4)
    actor_params = actor_m.init(k_actor, jnp.zeros((1, obs_dim), jnp.float32))["params"]
    critic_params = init_double_critic(critic_m, k_critic, obs_dim, act_dim)
    temperature_params = {
        "log_temperature": jnp.asarray(math.log(cfg.init_temperature), jnp.float32)
    }
    passive_params = passive_opt_state = None
    if cfg.passive_critic:
        passive_params = init_double_critic(passive_m, k_passive, obs_dim, act_dim)
        passive_opt_state = _critic_tx(cfg).init(passive_params)
    return BROState(
        actor_params=actor_params,
        actor_opt_state=_actor_tx(cfg).init(actor_params),
        critic_params=critic_params,
        critic_opt_state=_critic_tx(cfg).init(critic_params),
        target_critic_params=jax.tree.map(jnp.copy, critic_params),
        temperature_params=temperature_params,
        temperature_opt_state=_temperature_tx(cfg).init(temperature_params),
        passive_params=passive_params,
        passive_opt_state=passive_opt_state,
        rng=key,
        step=jnp.zeros((), jnp.int32),
        obs_dim=obs_dim,
        act_dim=act_dim,
    )


_init_jit = jax.jit(_init_state, static_argnums=(1, 2, 3), compiler_options=INIT_COMPILER_OPTIONS)


def init(key: jax.Array, obs_dim: int, act_dim: int, cfg: BROConfig) -> BROState:
    """A freshly initialised state for one seed (all networks and optimiser states).

    Calling it again with a new key is a full reset. The target critic starts as a copy of the
    critic. Jitted per seed (never vmapped: see :func:`init_seeds`).
    """
    obs_dim, act_dim = _positive_int(obs_dim, "obs_dim"), _positive_int(act_dim, "act_dim")
    if not isinstance(cfg, BROConfig):
        raise TypeError(f"bro.init: cfg must be a BROConfig, got {type(cfg).__name__}")
    if isinstance(key, jax.core.Tracer):  # inside a trace (eval_shape, jit): no options there
        return _init_state(key, obs_dim, act_dim, cfg)
    return _init_jit(key, obs_dim, act_dim, cfg)


def _positive_int(value: Any, name: str) -> int:
    try:
        as_int = operator.index(value)
    except TypeError:
        as_int = None
    if as_int is None or isinstance(value, bool) or as_int < 1:
        raise ValueError(f"bro.init: {name} must be a positive int, got {value!r}")
    return as_int


def init_seeds(keys: jax.Array, obs_dim: int, act_dim: int, cfg: BROConfig) -> BROState:
    """Per-seed :func:`init` stacked along a leading seed axis.

    ``keys`` holds one PRNG key per seed (shape [S, 2] raw keys or [S] typed keys). Seeds are
    initialised one by one and stacked: ``jit(vmap(init))`` hangs on jax 0.10.2 CPU because of the
    orthogonal initialiser's QR decomposition under vmap.
    """
    n_seeds = keys.shape[0]
    if n_seeds < 1:
        raise ValueError("bro.init_seeds: need at least one key")
    states = [init(keys[i], obs_dim, act_dim, cfg) for i in range(n_seeds)]
    return _stack_states(states)


@jax.jit
def _stack_states(states: list[BROState]) -> BROState:
    """Leaf-wise stack of per-seed states, as one compiled function (stacking leaf by leaf
    outside jit dispatches and compiles one small program per leaf: ~20 s per run on a CPU)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


# --------------------------------------------------------------------------- acting


def act(state: BROState, obs: jax.Array, key: jax.Array, deterministic: bool = False) -> jax.Array:
    """Action(s) in [-1, 1] for ``obs`` [obs_dim] or [N, obs_dim] (one seed's state).

    ``deterministic=True`` gives ``tanh(mu)`` (evaluation); otherwise a sample. Not jitted here:
    jit (with ``deterministic`` static) and vmap over seeds at the call site.
    """
    actor_m = TanhGaussianPolicy(
        act_dim=state.act_dim,
        width=_actor_width(state),
        depth=_actor_depth(state),
    )
    mu, log_std = actor_m.apply({"params": state.actor_params}, obs)
    if deterministic:
        return jnp.tanh(mu)
    action, _ = sample_tanh_gaussian(key, mu, log_std)
    return action


def _actor_width(state: BROState) -> int:
    return int(state.actor_params["BroNet_0"]["Dense_0"]["kernel"].shape[-1])


def _actor_depth(state: BROState) -> int:
    n_dense = len([k for k in state.actor_params["BroNet_0"] if k.startswith("Dense_")])
    return (n_dense - 1) // 2


# --------------------------------------------------------------------------- update


def _td_target(
    state: BROState, batch: Batch, key: jax.Array, alpha: jax.Array, cfg: BROConfig
) -> jax.Array:
    """Target quantiles [B, Q] of the main critic (no gradient flows through them)."""
    actor_m, critic_m, _ = _modules(cfg, state.act_dim)
    mu, log_std = actor_m.apply({"params": state.actor_params}, batch["next_obs"])
    next_action, next_log_prob = sample_tanh_gaussian(key, mu, log_std)
    next_q = apply_double_critic(
        critic_m, state.target_critic_params, batch["next_obs"], next_action
    )
    next_v = head_mean(next_q, cfg.pessimism) - alpha * next_log_prob[:, None]
    target = batch["rewards"][:, None] + cfg.discount * batch["masks"][:, None] * next_v
    return jax.lax.stop_gradient(target)


def update(state: BROState, batch: Batch, cfg: BROConfig) -> tuple[BROState, Info]:
    """One gradient step of critic (+ Polyak target), actor, temperature (and passive critic).

    Returns the new state and info scalars: ``critic_loss`` (both heads summed), ``actor_loss``,
    ``temperature`` (alpha used in this step), ``q_mean`` (mean predicted quantile of the batch's
    actions), ``entropy`` (``-mean log pi``) and, when on, ``passive_critic_loss``.
    """
    actor_m, critic_m, passive_m = _modules(cfg, state.act_dim)
    rng, k_target, k_actor = jax.random.split(state.rng, 3)
    alpha = jnp.exp(state.temperature_params["log_temperature"])
    target = _td_target(state, batch, k_target, alpha, cfg)

    # critic
    def critic_loss_fn(params):
        q = apply_double_critic(critic_m, params, batch["obs"], batch["actions"])
        return quantile_huber_loss(q, target, cfg.kappa), q

    (critic_loss, q), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(state.critic_params)
    updates, critic_opt_state = _critic_tx(cfg).update(
        grads, state.critic_opt_state, state.critic_params
    )
    critic_params = optax.apply_updates(state.critic_params, updates)
    target_critic_params = polyak_update(critic_params, state.target_critic_params, cfg.tau)

    # actor (on the updated critic)
    def actor_loss_fn(params):
        mu, log_std = actor_m.apply({"params": params}, batch["obs"])
        action, log_prob = sample_tanh_gaussian(k_actor, mu, log_std)
        q_pi = apply_double_critic(critic_m, critic_params, batch["obs"], action)
        value = jnp.mean(head_mean(q_pi, cfg.pessimism), axis=-1)
        return jnp.mean(alpha * log_prob - value), log_prob

    (actor_loss, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
        state.actor_params
    )
    updates, actor_opt_state = _actor_tx(cfg).update(
        grads, state.actor_opt_state, state.actor_params
    )
    actor_params = optax.apply_updates(state.actor_params, updates)

    # temperature
    entropy = -jnp.mean(log_prob)
    target_entropy = -cfg.target_entropy_scale * state.act_dim

    def temperature_loss_fn(params):
        return jnp.exp(params["log_temperature"]) * jax.lax.stop_gradient(entropy - target_entropy)

    grads = jax.grad(temperature_loss_fn)(state.temperature_params)
    updates, temperature_opt_state = _temperature_tx(cfg).update(
        grads, state.temperature_opt_state, state.temperature_params
    )
    temperature_params = optax.apply_updates(state.temperature_params, updates)

    info = {
        "critic_loss": critic_loss,
        "actor_loss": actor_loss,
        "temperature": alpha,
        "q_mean": jnp.mean(q),
        "entropy": entropy,
    }

    # passive critic (same batch, main critic's targets)
    passive_params, passive_opt_state = state.passive_params, state.passive_opt_state
    if cfg.passive_critic:

        def passive_loss_fn(params):
            q_passive = apply_double_critic(passive_m, params, batch["obs"], batch["actions"])
            return quantile_huber_loss(q_passive, target, cfg.kappa)

        passive_loss, grads = jax.value_and_grad(passive_loss_fn)(passive_params)
        updates, passive_opt_state = _critic_tx(cfg).update(
            grads, passive_opt_state, passive_params
        )
        passive_params = optax.apply_updates(passive_params, updates)
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
    state: BROState, replay: Replay, cfg: BROConfig, n: int | jax.Array
) -> tuple[BROState, Info]:
    """``n`` updates in one loop, each on its own batch sampled from ``replay``.

    ``n`` is a Python int >= 1 (a static trip count) or an int32 scalar array (traced: one
    compiled function then serves every ``n``, and ``n = 0`` returns the state unchanged with
    zero info). Batch keys are split from ``state.rng``. Info scalars are averaged over the ``n``
    updates (a NaN in any of them makes the average NaN, which the training loop treats as
    divergence).
    """
    if not isinstance(n, jax.Array) and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"bro.update_n: n (updates per call) must be a positive int, got {n!r}")

    def one(st: BROState) -> tuple[BROState, Info]:
        rng, k_batch = jax.random.split(st.rng)
        batch = replay_sample(replay, k_batch, cfg.batch_size)
        return update(st.replace(rng=rng), batch, cfg)

    def body(_, carry: tuple[BROState, Info]) -> tuple[BROState, Info]:
        st, sums = carry
        st, info = one(st)
        return st, jax.tree.map(jnp.add, sums, info)

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(one, state)[1])
    state, sums = jax.lax.fori_loop(0, n, body, (state, zeros))
    count = jnp.maximum(jnp.asarray(n, jnp.float32), 1.0)
    return state, jax.tree.map(lambda x: x / count, sums)


def td_losses(state: BROState, batch: Batch, cfg: BROConfig) -> Info:
    """TD losses on ``batch`` without updating anything (validation batches).

    ``critic_loss``: the critic's quantile Huber loss against targets from the target network (as
    in :func:`update`); ``passive_critic_loss`` (when on): the passive critic's loss against the
    same targets. The next-action sample uses a key derived from ``state.rng`` (which is not
    advanced).
    """
    _, critic_m, passive_m = _modules(cfg, state.act_dim)
    key = jax.random.fold_in(state.rng, 0x7A1D)
    alpha = jnp.exp(state.temperature_params["log_temperature"])
    target = _td_target(state, batch, key, alpha, cfg)
    q = apply_double_critic(critic_m, state.critic_params, batch["obs"], batch["actions"])
    info = {"critic_loss": quantile_huber_loss(q, target, cfg.kappa)}
    if cfg.passive_critic:
        q_passive = apply_double_critic(
            passive_m, state.passive_params, batch["obs"], batch["actions"]
        )
        info["passive_critic_loss"] = quantile_huber_loss(q_passive, target, cfg.kappa)
    return info


# --------------------------------------------------------------------------- sizes


def _check_one_seed(params: Params, what: str) -> None:
    first_kernel = params["BroNet_0"]["Dense_0"]["kernel"]
    if first_kernel.ndim != 3:
        raise ValueError(
            f"{what}: expected one seed's state (critic kernels [2, fan_in, fan_out]) but got a "
            f"kernel of shape {tuple(first_kernel.shape)}; pass one seed, e.g. "
            "valuescale.replay.unstack_seed(state, 0)"
        )


def critic_param_count(state: BROState) -> int:
    """Parameters of the critic (both heads), counted from one seed's parameter tree (N)."""
    _check_one_seed(state.critic_params, "critic_param_count")
    return param_count(state.critic_params)


def passive_critic_param_count(state: BROState) -> int:
    """Parameters of the passive critic (both heads); 0 when it is off."""
    if state.passive_params is None:
        return 0
    _check_one_seed(state.passive_params, "passive_critic_param_count")
    return param_count(state.passive_params)
