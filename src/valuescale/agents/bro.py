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

The quantile Huber loss has a custom VJP: its forward pass returns the analytic gradient with
respect to the predicted quantiles as the only residual of shape [heads, B, Q], so the backward
pass neither stores nor recomputes the [heads, B, Q, Q] pairwise tensor. The mathematics is that of
:func:`quantile_huber_loss_reference` (tested against it and against a numpy loop).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

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


@dataclasses.dataclass(frozen=True)
class BROConfig:
    """Hyperparameters of BRO (hashable: passed as a static argument under ``jit``)."""

    critic_width: int = 512
    """Hidden width W of each critic head (the paper's critic-size knob)."""
    critic_depth: int = 2
    """Number of BroNet residual blocks of the critic."""
    actor_width: int = 256
    """Hidden width of the actor's BroNet."""
    actor_depth: int = 1
    """Number of residual blocks of the actor's BroNet."""
    n_quantiles: int = 100
    """Quantiles per critic head (midpoints ``tau_k = (k + 0.5) / n_quantiles``)."""
    kappa: float = 1.0
    """Huber threshold of the quantile Huber loss."""
    batch_size: int = 128
    """Transitions per gradient step (B)."""
    critic_lr: float = 3e-4
    """AdamW learning rate of the critic (and of the passive critic)."""
    actor_lr: float = 3e-4
    """AdamW learning rate of the actor."""
    temperature_lr: float = 3e-4
    """Adam learning rate of log alpha."""
    temperature_b1: float = 0.5
    """Adam beta1 of the temperature optimiser."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay of actor and critics."""
    discount: float = 0.99
    """Discount gamma."""
    tau: float = 0.005
    """Polyak rate of the target critic, applied after every critic step."""
    init_temperature: float = 1.0
    """Initial alpha."""
    target_entropy_scale: float = 0.5
    """Target entropy is ``-target_entropy_scale * act_dim``."""
    pessimism: float = 0.0
    """Weight of the head disagreement ``|q1 - q2| / 2`` subtracted from the head mean."""
    passive_critic: bool = False
    """Also train a passive critic on the main critic's TD targets (instrumentation only)."""
    passive_critic_width: int = 512
    """Hidden width of the passive critic's heads (same depth and quantiles as the critic)."""

    def __post_init__(self) -> None:
        positive_ints = (
            "critic_width",
            "actor_width",
            "n_quantiles",
            "batch_size",
            "passive_critic_width",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BROConfig.{name} must be a positive int, got {value!r}")
        for name in ("critic_depth", "actor_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"BROConfig.{name} must be a non-negative int, got {value!r}")
        for name in ("kappa", "critic_lr", "actor_lr", "temperature_lr", "init_temperature"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"BROConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("weight_decay", "pessimism", "target_entropy_scale"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"BROConfig.{name} must be a finite number, got {value!r}")
        if self.weight_decay < 0:
            raise ValueError(f"BROConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("discount", "tau", "temperature_b1"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"BROConfig.{name} must be in [0, 1], got {value!r}")

    @property
    def taus(self) -> jax.Array:
        """Quantile midpoints ``(k + 0.5) / n_quantiles``, shape [n_quantiles]."""
        return quantile_taus(self.n_quantiles)


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


# --------------------------------------------------------------------------- building blocks


def quantile_taus(n_quantiles: int) -> jax.Array:
    """Quantile midpoints ``tau_k = (k + 0.5) / n_quantiles``."""
    return (jnp.arange(n_quantiles, dtype=jnp.float32) + 0.5) / n_quantiles


def quantile_huber_loss_reference(pred: jax.Array, target: jax.Array, kappa: float = 1.0):
    """Plain (autodiff) quantile Huber loss; the definition :func:`quantile_huber_loss` follows.

    ``pred`` [..., B, Q] are predicted quantiles (leading axes: critic heads), ``target`` [B, Q']
    the target quantiles. With ``u_ij = target_j - pred_i`` and ``tau_i`` the midpoints::

        rho_ij = |tau_i - 1{u_ij < 0}| * huber_kappa(u_ij) / kappa
        loss   = sum over leading axes of  mean_b  mean_j  sum_i  rho_ij
    """
    n_q = pred.shape[-1]
    taus = quantile_taus(n_q)[:, None]
    u = target[..., None, :] - pred[..., :, None]
    abs_u = jnp.abs(u)
    huber = jnp.where(abs_u <= kappa, 0.5 * u * u, kappa * (abs_u - 0.5 * kappa))
    weight = jnp.abs(taus - jax.lax.stop_gradient((u < 0).astype(u.dtype)))
    per_head = jnp.mean(jnp.sum(weight * huber / kappa, axis=-2), axis=(-2, -1))
    return jnp.sum(per_head)


def quantile_huber_loss(pred: jax.Array, target: jax.Array, kappa: float = 1.0) -> jax.Array:
    """Quantile Huber loss (same value and gradients as :func:`quantile_huber_loss_reference`).

    ``pred`` [..., B, Q] (e.g. [heads, B, Q]); ``target`` [B, Q'] shared by all heads. The
    backward pass uses the analytic gradient saved by the forward pass (custom VJP).
    """
    if pred.shape[-2] != target.shape[-2]:
        raise ValueError(
            f"quantile_huber_loss: batch sizes differ: pred {pred.shape}, target {target.shape}"
        )
    return _quantile_huber_loss(pred, target, float(kappa))


def _pairwise_terms(u: jax.Array, taus: jax.Array, kappa: float):
    """Elementwise ``rho(u)`` and ``w(u) * clip(u, -kappa, kappa) / kappa`` for TD errors ``u``.

    ``taus`` broadcasts against the predicted-quantile axis of ``u``.
    """
    weight = jnp.where(u < 0, 1.0 - taus, taus)
    clipped = jnp.clip(u, -kappa, kappa)
    # huber(u) = clip(u) * (u - clip(u) / 2): 0.5 u^2 inside [-kappa, kappa], kappa(|u| - kappa/2)
    # outside; one expression without a select.
    slope = weight * clipped * (1.0 / kappa)
    return slope * (u - 0.5 * clipped), slope


def _target_chunk(n_target: int) -> int:
    """Targets handled per scan step: the largest divisor of ``n_target`` up to 10."""
    return max(d for d in range(1, 11) if n_target % d == 0)


def _sum_over_targets(pred: jax.Array, target: jax.Array, kappa: float):
    """``(sum_j rho_ij, sum_j w_ij clip(u_ij) / kappa)``, each shaped like ``pred`` [..., B, Q].

    The sum over target quantiles ``j`` runs as a ``lax.scan`` over chunks of targets, each step
    adding the terms of a few targets to two [..., B, Q] accumulators in one elementwise fusion.
    The [..., B, Q, Q'] pairwise tensor never exists, and the work vectorises over the predicted
    quantiles ``i`` (independent accumulators, so no reassociation is needed). On the 2-core CPU
    this is about 5x faster than a (variadic) ``reduce`` over ``j``, which XLA emits as a scalar
    loop, and far faster than two separate sums, which make XLA materialise the pairwise tensors.
    Targets are summed in order ``j = 0, 1, ...``.
    """
    taus = quantile_taus(pred.shape[-1])
    n_target = target.shape[-1]
    chunk = _target_chunk(n_target)
    # [n_chunks, B, chunk]: scan over the leading axis
    chunks = jnp.moveaxis(target.reshape(*target.shape[:-1], n_target // chunk, chunk), -2, 0)
    zeros = jnp.zeros(jnp.broadcast_shapes(pred.shape, target.shape[:-1] + (1,)), pred.dtype)

    def body(carry, target_chunk):
        rho_sum, slope_sum = carry
        for k in range(chunk):
            rho, slope = _pairwise_terms(target_chunk[..., k : k + 1] - pred, taus, kappa)
            rho_sum, slope_sum = rho_sum + rho, slope_sum + slope
        return (rho_sum, slope_sum), None

    (rho_sum, slope_sum), _ = jax.lax.scan(body, (zeros, zeros), chunks)
    return rho_sum, slope_sum


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _quantile_huber_loss(pred: jax.Array, target: jax.Array, kappa: float) -> jax.Array:
    return _qh_fwd(pred, target, kappa)[0]


def _qh_fwd(pred, target, kappa):
    loss_rows, slope_rows = _sum_over_targets(pred, target, kappa)
    batch, n_target = target.shape[-2], target.shape[-1]
    scale = 1.0 / (batch * n_target)
    loss = jnp.sum(loss_rows) * scale
    # d loss / d pred_i = -scale * sum_j w_ij clip(u_ij) / kappa
    grad_pred = -slope_rows * scale
    return loss, (grad_pred, pred, target)


def _qh_bwd(kappa, residuals, g):
    grad_pred, pred, target = residuals
    # d loss / d target_j = +scale * sum over heads and i of w_ij clip(u_ij) / kappa. Recomputed
    # here from the [..., B, j, i] pairwise tensor; XLA drops it when the target is not
    # differentiated (the usual stop-gradient target).
    u = target[..., :, None] - pred[..., None, :]
    _, slope = _pairwise_terms(u, quantile_taus(pred.shape[-1]), kappa)
    batch, n_target = target.shape[-2], target.shape[-1]
    lead = tuple(range(slope.ndim - 3))
    grad_target = jnp.sum(slope, axis=(*lead, slope.ndim - 1)) / (batch * n_target)
    return g * grad_pred, g * grad_target


_quantile_huber_loss.defvjp(_qh_fwd, _qh_bwd)


def polyak_update(online: Params, target: Params, tau: float) -> Params:
    """``target <- tau * online + (1 - tau) * target`` leaf by leaf."""
    return jax.tree.map(lambda p, t: tau * p + (1.0 - tau) * t, online, target)


def head_mean(q: jax.Array, pessimism: float) -> jax.Array:
    """Combine the two heads [2, ...]: mean minus ``pessimism`` times their std ``|q1-q2|/2``."""
    mean = 0.5 * (q[0] + q[1])
    if pessimism == 0.0:
        return mean
    return mean - pessimism * 0.5 * jnp.abs(q[0] - q[1])


def _modules(cfg: BROConfig, act_dim: int):
    actor = TanhGaussianPolicy(act_dim=act_dim, width=cfg.actor_width, depth=cfg.actor_depth)
    critic = QuantileCritic(cfg.critic_width, cfg.critic_depth, cfg.n_quantiles)
    passive = QuantileCritic(cfg.passive_critic_width, cfg.critic_depth, cfg.n_quantiles)
    return actor, critic, passive


def _critic_tx(cfg: BROConfig) -> optax.GradientTransformation:
    return optax.adamw(cfg.critic_lr, weight_decay=cfg.weight_decay)


def _actor_tx(cfg: BROConfig) -> optax.GradientTransformation:
    return optax.adamw(cfg.actor_lr, weight_decay=cfg.weight_decay)


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
