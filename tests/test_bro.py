"""BRO agent: loss numerics, updates, multi-seed vmapped training, divergence signal."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from valuescale.agents import bro
from valuescale.networks import QuantileCritic, apply_double_critic, bro_critic_param_formula
from valuescale.replay import Replay, replay_init, replay_sample, stack_seeds

OBS_DIM, ACT_DIM = 5, 2
TINY = bro.BROConfig(critic_width=32, actor_width=16, batch_size=16, n_quantiles=11)


def _numpy_quantile_huber(pred, target, kappa):
    """Loop reference: sum over heads of mean_b mean_j sum_i |tau_i - 1{u<0}| huber(u) / kappa,
    with its gradient with respect to pred."""
    n_heads, batch, n_q = pred.shape
    n_target = target.shape[1]
    loss = 0.0
    grad = np.zeros_like(pred)
    for h in range(n_heads):
        for b in range(batch):
            for i in range(n_q):
                tau = (i + 0.5) / n_q
                for j in range(n_target):
                    u = target[b, j] - pred[h, b, i]
                    w = abs(tau - (1.0 if u < 0 else 0.0))
                    if abs(u) <= kappa:
                        huber, slope = 0.5 * u * u, u
                    else:
                        huber, slope = kappa * (abs(u) - 0.5 * kappa), kappa * np.sign(u)
                    loss += w * huber / kappa / (batch * n_target)
                    grad[h, b, i] -= w * slope / kappa / (batch * n_target)
    return loss, grad


@pytest.mark.parametrize("kappa", [1.0, 0.5])
def test_quantile_huber_loss_matches_numpy_loop(kappa):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(2, 4, 7)) * 1.5
    target = rng.normal(size=(4, 9)) * 1.5
    ref_loss, ref_grad = _numpy_quantile_huber(pred, target, kappa)
    pred_j, target_j = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    loss, grad = jax.value_and_grad(bro.quantile_huber_loss)(pred_j, target_j, kappa)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-6)
    # the plain autodiff definition agrees too (value and gradients for pred and target)
    loss_r = bro.quantile_huber_loss_reference(pred_j, target_j, kappa)
    np.testing.assert_allclose(float(loss_r), ref_loss, rtol=1e-5)
    g_fast = jax.grad(bro.quantile_huber_loss, argnums=(0, 1))(pred_j, target_j, kappa)
    g_ref = jax.grad(bro.quantile_huber_loss_reference, argnums=(0, 1))(pred_j, target_j, kappa)
    for fast, ref in zip(g_fast, g_ref, strict=True):
        np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-4, atol=1e-7)


def test_quantile_huber_loss_under_jit_and_vmap():
    pred = jax.random.normal(jax.random.key(0), (3, 2, 8, 5))
    target = jax.random.normal(jax.random.key(1), (3, 8, 5))
    fast = jax.jit(jax.vmap(jax.grad(bro.quantile_huber_loss)))(pred, target)
    ref = jax.vmap(jax.grad(bro.quantile_huber_loss_reference))(pred, target)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-4, atol=1e-7)


def test_polyak_update_numerics():
    online = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(10.0)}}
    target = {"a": jnp.array([3.0, -2.0]), "b": {"c": jnp.array(0.0)}}
    new = bro.polyak_update(online, target, 0.005)
    np.testing.assert_allclose(np.asarray(new["a"]), [0.995 * 3 + 0.005, -0.995 * 2 + 0.01])
    np.testing.assert_allclose(float(new["b"]["c"]), 0.05)
    # repeated application converges geometrically: (1 - tau)^k of the gap remains
    t = target
    for _ in range(100):
        t = bro.polyak_update(online, t, 0.005)
    gap = np.asarray(t["a"]) - np.asarray(online["a"])
    np.testing.assert_allclose(gap, (0.995**100) * np.array([2.0, -4.0]), rtol=1e-4)


@pytest.mark.slow
def test_update_moves_target_by_polyak_and_increases_temperature_at_low_entropy():
    state = bro.init(jax.random.key(0), OBS_DIM, ACT_DIM, TINY)
    batch = _random_batch(jax.random.key(1), TINY.batch_size)
    new, info = jax.jit(bro.update, static_argnums=2)(state, batch, TINY)
    expected_target = bro.polyak_update(new.critic_params, state.target_critic_params, TINY.tau)
    for got, want in zip(
        jax.tree.leaves(new.target_critic_params), jax.tree.leaves(expected_target), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    # BRO's initial policy is narrow (entropy far below -|A|/2): alpha must grow
    assert float(info["entropy"]) < -TINY.target_entropy_scale * ACT_DIM
    assert float(jnp.exp(new.temperature_params["log_temperature"])) > 1.0
    assert float(info["temperature"]) == pytest.approx(1.0)
    assert int(new.step) == 1
    for name in ("critic_loss", "actor_loss", "q_mean", "entropy"):
        assert np.isfinite(float(info[name])), name


def _random_batch(key, batch_size, reward=None):
    ko, ka, kr, kn = jax.random.split(key, 4)
    rewards = jax.random.normal(kr, (batch_size,)) if reward is None else reward
    return {
        "obs": jax.random.normal(ko, (batch_size, OBS_DIM)),
        "actions": jax.random.uniform(ka, (batch_size, ACT_DIM), minval=-1, maxval=1),
        "rewards": jnp.broadcast_to(jnp.asarray(rewards, jnp.float32), (batch_size,)),
        "masks": jnp.ones((batch_size,)),
        "next_obs": jax.random.normal(kn, (batch_size, OBS_DIM)),
    }


def _bandit_replay(capacity=512, seed=0) -> Replay:
    """A full buffer of terminal transitions (mask 0) with reward 0 or 1 at random."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(capacity, OBS_DIM)).astype(np.float32)
    return Replay(
        obs=jnp.asarray(obs),
        actions=jnp.asarray(rng.uniform(-1, 1, size=(capacity, ACT_DIM)), jnp.float32),
        rewards=jnp.asarray(rng.integers(0, 2, size=capacity), jnp.float32),
        masks=jnp.zeros((capacity,), jnp.float32),
        next_obs=jnp.asarray(obs),
        pos=jnp.zeros((), jnp.int32),
        size=jnp.asarray(capacity, jnp.int32),
    )


@pytest.mark.slow
def test_critic_learns_the_return_distribution_in_tau_order():
    """One state, terminal returns 0 and 1 half and half (a fixed full batch, no sampling noise).

    All TD errors lie within kappa = 1, where the quantile Huber loss is the asymmetric squared
    loss, so output k converges to the tau_k-expectile of Bernoulli(1/2), which is tau_k itself.
    A swapped tau index (tau on the target side) would give a flat profile.
    """
    cfg = bro.BROConfig(
        critic_width=32, actor_width=16, batch_size=64, n_quantiles=10, critic_lr=3e-3
    )
    state = bro.init(jax.random.key(0), OBS_DIM, ACT_DIM, cfg)
    batch = {
        "obs": jnp.tile(jnp.linspace(-1.0, 1.0, OBS_DIM), (64, 1)),
        "actions": jnp.zeros((64, ACT_DIM)),
        "rewards": jnp.tile(jnp.array([0.0, 1.0]), 32),
        "masks": jnp.zeros((64,)),  # terminal: the target is the reward
        "next_obs": jnp.zeros((64, OBS_DIM)),
    }
    before = bro.td_losses(state, batch, cfg)["critic_loss"]

    @jax.jit
    def train(state):
        return jax.lax.scan(lambda s, _: bro.update(s, batch, cfg), state, None, length=500)

    state, infos = train(state)
    after = bro.td_losses(state, batch, cfg)["critic_loss"]
    assert float(after) < 0.5 * float(before)
    q = apply_double_critic(
        QuantileCritic(32, 2, 10), state.critic_params, batch["obs"][:1], batch["actions"][:1]
    )
    np.testing.assert_allclose(np.asarray(q[:, 0]), np.tile(cfg.taus, (2, 1)), atol=0.03)
    assert abs(float(infos["q_mean"][-1]) - 0.5) < 0.03


@pytest.mark.slow
def test_passive_critic_fits_main_targets_and_td_losses_does_not_update():
    cfg = bro.BROConfig(
        critic_width=32,
        actor_width=16,
        batch_size=64,
        n_quantiles=10,
        critic_lr=3e-3,
        passive_critic=True,
        passive_critic_width=8,
    )
    state = bro.init(jax.random.key(1), OBS_DIM, ACT_DIM, cfg)
    assert bro.passive_critic_param_count(state) == bro_critic_param_formula(
        OBS_DIM + ACT_DIM, 8, n_quantiles=10
    )
    replay = _bandit_replay(seed=1)
    batch = replay_sample(replay, jax.random.key(2), 256)
    before = bro.td_losses(state, batch, cfg)
    again = bro.td_losses(state, batch, cfg)  # pure: same state, same numbers
    assert float(before["passive_critic_loss"]) == float(again["passive_critic_loss"])
    state, info = jax.jit(bro.update_n, static_argnums=(2, 3))(state, replay, cfg, 300)
    after = bro.td_losses(state, batch, cfg)
    assert np.isfinite(float(info["passive_critic_loss"]))
    assert float(after["passive_critic_loss"]) < 0.5 * float(before["passive_critic_loss"])


def test_nan_rewards_make_the_critic_loss_non_finite():
    state = bro.init(jax.random.key(0), OBS_DIM, ACT_DIM, TINY)
    batch = _random_batch(jax.random.key(1), TINY.batch_size)
    batch["rewards"] = batch["rewards"].at[3].set(jnp.nan)
    new, info = jax.jit(bro.update, static_argnums=2)(state, batch, TINY)
    assert not np.isfinite(float(info["critic_loss"]))
    assert not np.isfinite(float(bro.td_losses(state, batch, TINY)["critic_loss"]))
    # and the NaN reaches the parameters (so every later loss of that seed is NaN too)
    assert not np.all(np.isfinite(np.asarray(new.critic_params["BroNet_0"]["Dense_0"]["kernel"])))


@pytest.mark.slow
def test_vmapped_multi_seed_update_n_under_jit():
    keys = jax.random.split(jax.random.key(42), 2)
    states = bro.init_seeds(keys, OBS_DIM, ACT_DIM, TINY)
    # per-seed init equals separate init with the same key; seeds differ
    single = bro.init(keys[1], OBS_DIM, ACT_DIM, TINY)
    np.testing.assert_array_equal(
        np.asarray(states.critic_params["BroNet_0"]["Dense_0"]["kernel"][1]),
        np.asarray(single.critic_params["BroNet_0"]["Dense_0"]["kernel"]),
    )
    k0 = np.asarray(states.critic_params["BroNet_0"]["Dense_0"]["kernel"])
    assert not np.allclose(k0[0], k0[1])
    # one replay content for both seeds: differences come from the seeds' own keys
    replays = stack_seeds([_bandit_replay(256, seed=3)] * 2)
    step = jax.jit(jax.vmap(bro.update_n, in_axes=(0, 0, None, None)), static_argnums=(2, 3))
    new, info = step(states, replays, TINY, 3)
    assert info["critic_loss"].shape == (2,)
    assert np.all(np.isfinite(np.asarray(info["critic_loss"])))
    np.testing.assert_array_equal(np.asarray(new.step), [3, 3])
    leaf = np.asarray(new.actor_params["Dense_0"]["kernel"])
    assert not np.allclose(leaf[0], leaf[1])
    # seed 0 of the vmapped call equals a one-seed call with seed 0's state
    one, one_info = jax.jit(bro.update_n, static_argnums=(2, 3))(
        jax.tree.map(lambda x: x[0], states), jax.tree.map(lambda x: x[0], replays), TINY, 3
    )
    np.testing.assert_allclose(
        float(one_info["critic_loss"]), float(info["critic_loss"][0]), rtol=1e-4
    )
    # act works vmapped over seeds with per-seed keys
    actions = jax.vmap(bro.act, in_axes=(0, 0, 0, None))(
        new, jnp.zeros((2, OBS_DIM)), jax.random.split(jax.random.key(0), 2), False
    )
    assert actions.shape == (2, ACT_DIM) and float(jnp.abs(actions).max()) <= 1.0


def test_act_deterministic_is_tanh_of_mean():
    state = bro.init(jax.random.key(5), OBS_DIM, ACT_DIM, TINY)
    obs = jax.random.normal(jax.random.key(6), (4, OBS_DIM))
    a1 = bro.act(state, obs, jax.random.key(0), deterministic=True)
    a2 = bro.act(state, obs, jax.random.key(1), deterministic=True)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))
    s1 = bro.act(state, obs, jax.random.key(0))
    s2 = bro.act(state, obs, jax.random.key(1))
    assert not np.allclose(np.asarray(s1), np.asarray(s2))


def test_head_mean_pessimism():
    q = jnp.array([[1.0, 4.0], [3.0, 0.0]])
    np.testing.assert_allclose(np.asarray(bro.head_mean(q, 0.0)), [2.0, 2.0])
    np.testing.assert_allclose(np.asarray(bro.head_mean(q, 1.0)), [1.0, 0.0])  # = min


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("critic_width", 0),
        ("batch_size", 2.5),
        ("discount", 1.5),
        ("critic_lr", -1.0),
        ("tau", -0.1),
        ("n_quantiles", 0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        bro.BROConfig(**{field: value})


def test_update_n_rejects_zero_updates():
    state = bro.init(jax.random.key(0), OBS_DIM, ACT_DIM, TINY)
    with pytest.raises(ValueError, match="n"):
        bro.update_n(state, replay_init(8, OBS_DIM, ACT_DIM), TINY, 0)


@pytest.mark.slow
def test_analytic_update_flops_agree_with_xla_cost_analysis():
    from valuescale.flops import update_flops

    cfg = bro.BROConfig(critic_width=128, actor_width=64, batch_size=32)
    state = bro.init(jax.random.key(0), OBS_DIM, ACT_DIM, cfg)
    batch = _random_batch(jax.random.key(1), cfg.batch_size)
    compiled = jax.jit(bro.update, static_argnums=2).lower(state, batch, cfg).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    analytic = update_flops(OBS_DIM, ACT_DIM, cfg)
    # XLA also counts elementwise work (LayerNorm, Adam, the pairwise quantile loss)
    assert analytic <= cost["flops"] <= 1.6 * analytic, (analytic, cost["flops"])
