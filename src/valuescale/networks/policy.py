"""Tanh-squashed Gaussian policy on a BroNet trunk (BRO's actor).

The trunk is ``BroNet(width, depth)`` without output layer; two linear heads give the mean ``mu``
and a raw log-std. The log-std is kept inside ``[log_std_min, log_std_max] = [-10, 2]`` the way BRO
does it, by a smooth rescaled tanh: ``log_std = min + (max - min) * (1 + tanh(raw)) / 2`` (a hard
clip would have zero gradient outside the interval). Actions are ``a = tanh(u)``, ``u ~ N(mu,
std)``; ``log pi(a|s) = sum_i [log N(u_i; mu_i, std_i) - log(1 - tanh(u_i)^2)]`` with the
numerically stable ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``. The deterministic
(evaluation) action is ``tanh(mu)``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from valuescale.networks.bronet import BroNet, default_kernel_init

LOG_STD_MIN = -10.0
LOG_STD_MAX = 2.0


class TanhGaussianPolicy(nn.Module):
    """BRO actor: returns ``(mu, log_std)`` of the pre-tanh Gaussian, each [..., act_dim]."""

    act_dim: int
    width: int = 256
    depth: int = 1
    log_std_min: float = LOG_STD_MIN
    log_std_max: float = LOG_STD_MAX

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and bounded log-std of the pre-squash Gaussian for observations [..., obs_dim]."""
        h = BroNet(self.width, self.depth)(obs)
        mu = nn.Dense(self.act_dim, kernel_init=default_kernel_init())(h)
        raw = nn.Dense(self.act_dim, kernel_init=default_kernel_init(1.0))(h)
        log_std = self.log_std_min + (self.log_std_max - self.log_std_min) * 0.5 * (
            1.0 + jnp.tanh(raw)
        )
        return mu, log_std


def sample_tanh_gaussian(
    key: jax.Array, mu: jax.Array, log_std: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample ``a = tanh(mu + std * eps)`` and its log-density [...]."""
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    u = mu + jnp.exp(log_std) * eps
    gauss = -0.5 * jnp.square(eps) - log_std - 0.5 * math.log(2.0 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(gauss - log_det, axis=-1)


def tanh_gaussian_log_prob(
    action: jax.Array, mu: jax.Array, log_std: jax.Array, eps: float = 1e-6
) -> jax.Array:
    """Log-density of a given squashed ``action`` in (-1, 1) (clipped by ``eps`` at the edges)."""
    a = jnp.clip(action, -1.0 + eps, 1.0 - eps)
    u = jnp.arctanh(a)
    z = (u - mu) * jnp.exp(-log_std)
    gauss = -0.5 * jnp.square(z) - log_std - 0.5 * math.log(2.0 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.sum(gauss - log_det, axis=-1)
