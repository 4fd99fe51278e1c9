"""BroNet (Nauman et al. 2024) and the double distributional critic built from it.

BroNet::

    x = ReLU(LN(Dense(W)(x)))
    repeat depth times:  x = x + LN(Dense(W)(ReLU(LN(Dense(W)(x)))))
    out = Dense(n_out)(x)                      (omitted when n_out is None)

Every Dense layer, the output layer included, gets an orthogonal kernel initialiser with scale
sqrt(2) and a zero bias. That is BRO's choice (its ``default_init`` is used for the quantile head
too); a smaller output scale would change the initial spread of the quantiles, so we keep BRO's.

The double critic stores the parameters of its two heads stacked along a leading axis of size 2
(``critic_params[...][kernel].shape == (2, fan_in, fan_out)``) and evaluates both heads in one
``jax.vmap`` over that axis: the heads share no parameters (each is initialised from its own key)
but their matmuls run as one batched matmul, and the first layer -- whose input is shared -- as a
single matmul with the two kernels side by side.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from valuescale.agents.bro.config import CRITIC_HEADS as N_HEADS

Params = Any


def default_kernel_init(scale: float = math.sqrt(2.0)) -> nn.initializers.Initializer:
    """Orthogonal kernel initialiser with the given scale (BRO uses sqrt(2) everywhere)."""
    return nn.initializers.orthogonal(scale)


class BroNet(nn.Module):
    """BroNet trunk (and optional linear output layer).

    Attributes:
        width: hidden width W of every Dense layer of the trunk.
        depth: number of residual blocks (BRO: 2 for the critic, 1 for the actor).
        n_out: size of the final linear layer; ``None`` returns the trunk features [.., W].
    """

    width: int
    depth: int
    n_out: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the network to inputs ``x`` of shape [..., d_in]."""
        x = nn.Dense(self.width, kernel_init=default_kernel_init())(x)
        x = nn.relu(nn.LayerNorm()(x))
        for _ in range(self.depth):
            res = nn.Dense(self.width, kernel_init=default_kernel_init())(x)
            res = nn.relu(nn.LayerNorm()(res))
            res = nn.Dense(self.width, kernel_init=default_kernel_init())(res)
            x = x + nn.LayerNorm()(res)
        if self.n_out is not None:
            x = nn.Dense(self.n_out, kernel_init=default_kernel_init())(x)
        return x


class QuantileCritic(nn.Module):
    """One critic head: BroNet on concat(obs, action) -> ``n_quantiles`` return quantiles."""

    width: int
    depth: int
    n_quantiles: int

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        """Quantiles [..., n_quantiles] of the return of ``action`` in ``obs``."""
        x = jnp.concatenate([obs, action], axis=-1)
        return BroNet(self.width, self.depth, self.n_quantiles)(x)


def init_double_critic(
    module: QuantileCritic, key: jax.Array, obs_dim: int, act_dim: int
) -> Params:
    """Initialise the two heads from independent keys and stack them along a leading axis.

    Each head is initialised separately (no ``vmap`` over the initialiser: orthogonal init under
    ``jit(vmap(...))`` hangs on jax 0.10.2 CPU).
    """
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    action = jnp.zeros((1, act_dim), jnp.float32)
    heads = [module.init(k, obs, action)["params"] for k in jax.random.split(key, N_HEADS)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *heads)


def apply_double_critic(
    module: QuantileCritic, params: Params, obs: jax.Array, action: jax.Array
) -> jax.Array:
    """Evaluate both heads: returns quantiles of shape [2, batch, n_quantiles]."""
    return jax.vmap(lambda p: module.apply({"params": p}, obs, action))(params)


def param_count(params: Params) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def bro_critic_param_formula(d_in: int, width: int, depth: int = 2, n_quantiles: int = 100) -> int:
    """Closed-form parameter count of the double BroNet critic (both heads).

    Per head: first Dense ``d_in*W + W`` and LayerNorm ``2W``; each residual block two Dense
    ``W*W + W`` and two LayerNorms ``2W``; output Dense ``W*n_q + n_q``. For depth 2 and 100
    quantiles this is the paper's ``N = 2*(4W^2 + (d_in + 115)*W + 100)``.
    """
    per_head = (
        d_in * width
        + 3 * width
        + depth * (2 * width * width + 6 * width)
        + width * n_quantiles
        + n_quantiles
    )
    return N_HEADS * per_head
