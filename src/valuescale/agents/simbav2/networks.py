"""SimbaV2's hyperspherical networks (method.md section 1 "SimbaV2", part 2-4).

``l2(x) = x / max(||x||_2, 1e-8)`` over the feature axis.

* :class:`HyperDense`: a linear map without bias whose kernel [fan_in, fan_out] has unit-norm
  columns (one per output unit). Orthogonal init (gain 1), then each column is normalised; the
  training step re-projects after every optimiser step (:func:`project_kernels`). Its parameter is
  named ``hyper_kernel`` so the projection finds every such kernel (heads included) and nothing
  else (scalers, biases and alpha are never projected).
* :class:`Scaler`: a learned ``theta`` in R^n initialised to ``scale`` and applied as
  ``theta * (init_value / scale) * x``: it starts at ``init_value`` and Adam's steps on it are
  effectively scaled by ``init_value / scale``.
* :class:`Embedder`: ``h = l2(s0 * W0 l2([x; c_shift]))``, ``W0: d+1 -> W``, ``s0`` init = scale
  = sqrt(2/W).
* :class:`LerpBlock`: ``h~ = l2(W2(ReLU(s * W1 h) + 1e-8))`` (``W1: W -> 4W``, ``s`` init =
  scale = sqrt(2/W)/2, ``W2: 4W -> W``), then ``h <- l2(h + alpha * (h~ - h))`` with ``alpha`` a
  Scaler(W) of init ``1/(L+1)`` and scale ``1/sqrt(W)``.
* :class:`LinearHead`: ``W_b(s_h * W_a z) + b`` (``W_a: W -> W``, ``s_h`` init = scale = 1,
  ``W_b: W -> n_out``, bias init 0).
* :class:`CategoricalCritic` (one head): concat(obs, action) -> embedder -> L blocks -> logits
  over K atoms. The double critic stacks H independently initialised heads on a leading axis
  (:func:`init_critic`, :func:`apply_critic`), as BRO's critic does.
* :class:`HyperTanhPolicy`: embedder -> blocks -> two heads, ``mu`` and ``u`` with
  ``log_std = -10 + 6 (1 + tanh u)``; actions ``tanh(N(mu, std))``.

Critic size (H heads, L blocks, K atoms, input d = obs + act): per head ``(d+1)W + W`` (embedder),
``8W^2 + 5W`` per block, ``W^2 + W + KW + K`` (head):
``N = H [(8L+1) W^2 + (d + 5L + 3 + K) W + K]`` (:func:`simbav2_critic_param_formula`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any

L2_EPS = 1e-8
"""Floor of the norm in ``l2``."""
HIDDEN_EPS = 1e-8
"""Added after the ReLU inside a block (keeps the block output off the origin)."""
KERNEL_NAME = "hyper_kernel"
"""Parameter name of every kernel kept on the unit sphere."""


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x / max(||x||_2, 1e-8)`` along ``axis``."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, L2_EPS)


def _unit_column_orthogonal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32):
    kernel = nn.initializers.orthogonal(1.0)(key, shape, dtype)
    return l2_normalize(kernel, axis=-2)


class HyperDense(nn.Module):
    """Bias-free linear layer with unit-norm kernel columns (see the module docstring)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(KERNEL_NAME, _unit_column_orthogonal, (x.shape[-1], self.features))
        return x @ kernel


class Scaler(nn.Module):
    """``theta * (init_value / scale) * x`` with ``theta`` initialised to ``scale``."""

    features: int
    init_value: float
    scale: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        theta = self.param("scaler", nn.initializers.constant(self.scale), (self.features,))
        return theta * (self.init_value / self.scale) * x


class Embedder(nn.Module):
    """``l2(s0 * W0 l2([x; c_shift]))``: input onto the unit sphere of width ``width``."""

    width: int
    c_shift: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shift = jnp.full(x.shape[:-1] + (1,), self.c_shift, x.dtype)
        x = l2_normalize(jnp.concatenate([x, shift], axis=-1))
        s0 = math.sqrt(2.0 / self.width)
        return l2_normalize(Scaler(self.width, s0, s0)(HyperDense(self.width)(x)))


class LerpBlock(nn.Module):
    """One hyperspherical residual block with a learned LERP towards its MLP's output."""

    width: int
    n_blocks: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        s = math.sqrt(2.0 / self.width) / 2.0
        inner = nn.relu(Scaler(4 * self.width, s, s)(HyperDense(4 * self.width)(h))) + HIDDEN_EPS
        h_tilde = l2_normalize(HyperDense(self.width)(inner))
        alpha = Scaler(self.width, 1.0 / (self.n_blocks + 1), 1.0 / math.sqrt(self.width))
        return lerp(h, h_tilde, alpha)


def lerp(h: jax.Array, h_tilde: jax.Array, alpha: nn.Module | jax.Array) -> jax.Array:
    """``l2(h + alpha * (h_tilde - h))`` (``alpha`` a Scaler module or an array)."""
    diff = h_tilde - h
    step = alpha(diff) if isinstance(alpha, nn.Module) else alpha * diff
    return l2_normalize(h + step)


class Encoder(nn.Module):
    """Embedder then ``depth`` LERP blocks: features on the unit sphere [..., width]."""

    width: int
    depth: int
    c_shift: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Embedder(self.width, self.c_shift)(x)
        for _ in range(self.depth):
            h = LerpBlock(self.width, self.depth)(h)
        return h


class LinearHead(nn.Module):
    """``W_b(s_h * W_a z) + b`` with ``W_a: W -> W``, ``W_b: W -> n_out``, ``b`` init 0."""

    n_out: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        width = z.shape[-1]
        y = Scaler(width, 1.0, 1.0)(HyperDense(width)(z))
        bias = self.param("bias", nn.initializers.zeros, (self.n_out,))
        return HyperDense(self.n_out)(y) + bias


class CategoricalCritic(nn.Module):
    """One critic head: logits [..., n_atoms] of the return distribution of ``action`` in ``obs``
    (``obs`` already normalised, ``action`` raw in [-1, 1])."""

    width: int
    depth: int
    n_atoms: int
    c_shift: float = 3.0

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        z = Encoder(self.width, self.depth, self.c_shift)(x)
        return LinearHead(self.n_atoms)(z)


class HyperTanhPolicy(nn.Module):
    """SimbaV2's actor: ``(mu, log_std)`` of the pre-tanh Gaussian, each [..., act_dim]."""

    act_dim: int
    width: int = 128
    depth: int = 1
    c_shift: float = 3.0
    log_std_min: float = -10.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = Encoder(self.width, self.depth, self.c_shift)(obs)
        mu = LinearHead(self.act_dim, name="mean")(z)
        raw = LinearHead(self.act_dim, name="log_std")(z)
        span = self.log_std_max - self.log_std_min
        return mu, self.log_std_min + 0.5 * span * (1.0 + jnp.tanh(raw))


def init_critic(
    module: CategoricalCritic, key: jax.Array, obs_dim: int, act_dim: int, n_heads: int
) -> Params:
    """``n_heads`` heads from independent keys, stacked along a leading axis [H, ...]."""
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    action = jnp.zeros((1, act_dim), jnp.float32)
    heads = [module.init(k, obs, action)["params"] for k in jax.random.split(key, n_heads)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *heads)


def apply_critic(
    module: CategoricalCritic, params: Params, obs: jax.Array, action: jax.Array
) -> jax.Array:
    """Logits of every head, shape [H, batch, n_atoms]."""
    return jax.vmap(lambda p: module.apply({"params": p}, obs, action))(params)


def project_kernels(params: Params) -> Params:
    """Every ``hyper_kernel`` leaf with its columns (fan-in axis, second to last; leading head
    or seed axes allowed) projected back onto the unit sphere; other leaves unchanged."""

    def one(path, leaf):
        name = getattr(path[-1], "key", None)
        return l2_normalize(leaf, axis=-2) if name == KERNEL_NAME else leaf

    return jax.tree_util.tree_map_with_path(one, params)


def simbav2_critic_param_formula(
    d_in: int, width: int, depth: int = 2, n_atoms: int = 101, n_heads: int = 2
) -> int:
    """Closed-form critic size ``H [(8L+1) W^2 + (d + 5L + 3 + K) W + K]`` (method.md 1, part 7;
    for L = 2, K = 101: ``H (17 W^2 + (d + 114) W + 101)``)."""
    per_head = (8 * depth + 1) * width**2 + (d_in + 5 * depth + 3 + n_atoms) * width + n_atoms
    return n_heads * per_head
