"""BroNet, the double quantile critic and the tanh-Gaussian policy on real JAX/flax."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from valuescale.agents import bro
from valuescale.networks import (
    BroNet,
    QuantileCritic,
    TanhGaussianPolicy,
    apply_double_critic,
    bro_critic_param_formula,
    init_double_critic,
    param_count,
    sample_tanh_gaussian,
    tanh_gaussian_log_prob,
)


def _np_layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _np_bronet(params, x, depth):
    """Straightforward numpy BroNet forward pass from a flax parameter tree."""

    def dense(i, h):
        p = params[f"Dense_{i}"]
        return h @ np.asarray(p["kernel"]) + np.asarray(p["bias"])

    def ln(i, h):
        p = params[f"LayerNorm_{i}"]
        return _np_layer_norm(h, np.asarray(p["scale"]), np.asarray(p["bias"]))

    h = np.maximum(ln(0, dense(0, x)), 0.0)
    for b in range(depth):
        res = np.maximum(ln(1 + 2 * b, dense(1 + 2 * b, h)), 0.0)
        h = h + ln(2 + 2 * b, dense(2 + 2 * b, res))
    return dense(1 + 2 * depth, h)


@pytest.mark.parametrize("depth", [1, 2])
def test_bronet_forward_matches_numpy_reference(depth):
    net = BroNet(width=16, depth=depth, n_out=5)
    x = jax.random.normal(jax.random.key(0), (4, 7))
    params = net.init(jax.random.key(1), x)["params"]
    # perturb LayerNorm affine params so that they matter in the comparison
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape), params
    )
    out = np.asarray(net.apply({"params": params}, x))
    ref = _np_bronet(jax.tree.map(np.asarray, params), np.asarray(x, np.float64), depth)
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4)


def test_orthogonal_init_scale_sqrt2():
    net = BroNet(width=32, depth=1, n_out=8)
    params = net.init(jax.random.key(0), jnp.zeros((1, 10)))["params"]
    for name in ("Dense_0", "Dense_1", "Dense_3"):
        kernel = np.asarray(params[name]["kernel"], np.float64)
        fan_in, fan_out = kernel.shape
        gram = kernel.T @ kernel if fan_in >= fan_out else kernel @ kernel.T
        np.testing.assert_allclose(gram, 2.0 * np.eye(min(fan_in, fan_out)), atol=1e-4)
        assert not np.any(np.asarray(params[name]["bias"]))


def test_double_critic_heads_are_independent_and_both_evaluated():
    module = QuantileCritic(width=16, depth=2, n_quantiles=9)
    params = init_double_critic(module, jax.random.key(3), obs_dim=5, act_dim=2)
    kernel = params["BroNet_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (2, 7, 16)
    assert not np.allclose(kernel[0], kernel[1])
    obs = jax.random.normal(jax.random.key(4), (6, 5))
    action = jax.random.uniform(jax.random.key(5), (6, 2), minval=-1, maxval=1)
    q = apply_double_critic(module, params, obs, action)
    assert q.shape == (2, 6, 9)
    for head in range(2):
        one = jax.tree.map(lambda p, h=head: p[h], params)
        np.testing.assert_allclose(
            q[head], module.apply({"params": one}, obs, action), rtol=1e-5, atol=1e-5
        )
    # gradients of head 0's output do not touch head 1's parameters
    grads = jax.grad(lambda p: apply_double_critic(module, p, obs, action)[0].sum())(params)
    assert all(not np.any(np.asarray(g[1])) for g in jax.tree.leaves(grads))
    assert any(np.any(np.asarray(g[0])) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    ("obs_dim", "act_dim", "width"),
    [(51, 19, 512), (17, 6, 64), (17, 6, 1024), (223, 38, 256), (5, 1, 128)],
)
def test_critic_param_count_matches_paper_formula(obs_dim, act_dim, width):
    cfg = bro.BROConfig(critic_width=width)
    # the real parameter tree's shapes, without allocating or running the initialisers
    state = jax.eval_shape(lambda k: bro.init(k, obs_dim, act_dim, cfg), jax.random.key(0))
    n = bro.critic_param_count(state)
    d_in = obs_dim + act_dim
    assert n == 2 * (4 * width**2 + (d_in + 115) * width + 100)
    assert n == bro_critic_param_formula(d_in, width)
    if (d_in, width) == (70, 512):
        assert n == 2_286_792  # the paper's h1 example


def test_critic_param_count_of_a_real_state_and_stacked_state_error():
    cfg = bro.BROConfig(critic_width=32, actor_width=16)
    state = bro.init(jax.random.key(0), 4, 2, cfg)
    assert bro.critic_param_count(state) == param_count(state.critic_params)
    assert bro.critic_param_count(state) == bro_critic_param_formula(6, 32)
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    with pytest.raises(ValueError, match="one seed"):
        bro.critic_param_count(stacked)


def test_policy_log_std_bounds_and_log_prob_change_of_variables():
    policy = TanhGaussianPolicy(act_dim=3, width=16, depth=1)
    obs = 5.0 * jax.random.normal(jax.random.key(0), (64, 4))
    params = policy.init(jax.random.key(1), obs)["params"]
    mu, log_std = policy.apply({"params": params}, obs)
    assert mu.shape == log_std.shape == (64, 3)
    assert float(log_std.min()) >= -10.0 and float(log_std.max()) <= 2.0
    # a wide, centred distribution so that actions stay away from +-1 in float32
    mu = 0.3 * jnp.tanh(mu)
    log_std = jnp.full_like(mu, -0.5)
    action, log_prob = sample_tanh_gaussian(jax.random.key(2), mu, log_std)
    assert float(jnp.abs(action).max()) < 1.0
    a = np.asarray(action, np.float64)
    u = np.arctanh(a)
    m, s = np.asarray(mu, np.float64), np.exp(np.asarray(log_std, np.float64))
    gauss = -0.5 * ((u - m) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi)
    ref = np.sum(gauss - np.log(1.0 - a**2), axis=-1)
    np.testing.assert_allclose(np.asarray(log_prob), ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(tanh_gaussian_log_prob(action, mu, log_std)), ref, rtol=1e-3, atol=1e-3
    )


def test_sampled_actions_follow_the_squashed_gaussian():
    mu = jnp.full((20000, 1), 0.4)
    log_std = jnp.full((20000, 1), math.log(0.3))
    action, _ = sample_tanh_gaussian(jax.random.key(3), mu, log_std)
    u = np.arctanh(np.asarray(action[:, 0], np.float64))
    assert abs(u.mean() - 0.4) < 0.01
    assert abs(u.std() - 0.3) < 0.01
