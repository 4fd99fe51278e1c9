"""SimbaV2 agent: critic size against method.md's closed form, hyperspherical layers and LERP,
categorical projection and reward/observation statistics against numpy references, and a few
vmapped updates (weights stay on the unit sphere, losses finite, parameters move)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from valuescale.agents import simbav2 as sv
from valuescale.agents.simbav2.loss import (
    atoms,
    categorical_loss,
    categorical_projection,
    expected_value,
    td_target_distribution,
)
from valuescale.agents.simbav2.networks import (
    CategoricalCritic,
    Embedder,
    HyperTanhPolicy,
    LerpBlock,
    apply_critic,
    init_critic,
    l2_normalize,
    lerp,
    project_kernels,
)
from valuescale.networks import param_count
from valuescale.replay import replay_init, replay_insert, stack_seeds, unstack_seed

# ----------------------------------------------------------------------------- critic size

#: method.md section 1 "SimbaV2", part 7: the published h1 ladder (d = 70, two heads).
PUBLISHED_H1 = {
    128: 604_362,
    256: 2_322_634,
    512: 9_101_514,
    1024: 36_028_618,
    2048: 143_360_202,
}


def _critic_shapes(d_in: int, width: int, depth: int, heads: int, n_atoms: int = 101):
    """The real critic parameter tree's shapes (no allocation)."""
    module = CategoricalCritic(width, depth, n_atoms)
    obs_dim = d_in - 1  # any split of d_in into obs + act gives the same count
    return jax.eval_shape(
        lambda k: init_critic(module, k, obs_dim, 1, heads), jax.random.PRNGKey(0)
    )


def _critic_size(d_in: int, width: int, depth: int, heads: int, n_atoms: int = 101) -> int:
    """Critic parameters counted from the real parameter tree."""
    return param_count(_critic_shapes(d_in, width, depth, heads, n_atoms))


def _kernel_weights(shapes) -> int:
    """Weights of the ``hyper_kernel`` leaves of a parameter tree (of shapes)."""
    return sum(
        math.prod(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
        if path[-1].key == "hyper_kernel"
    )


@pytest.mark.parametrize("width", sorted(PUBLISHED_H1))
def test_critic_param_count_is_the_published_h1_ladder(width):
    counted = _critic_size(70, width, 2, 2)
    assert counted == PUBLISHED_H1[width]
    assert sv.simbav2_critic_param_formula(70, width, 2, 101, 2) == counted


@pytest.mark.parametrize(
    ("d_in", "width", "depth", "heads", "n_atoms"),
    [(88, 512, 2, 1, 101), (7, 32, 2, 2, 101), (12, 48, 1, 1, 51), (70, 96, 3, 2, 21)],
)
def test_critic_param_count_matches_the_closed_form(d_in, width, depth, heads, n_atoms):
    counted = _critic_size(d_in, width, depth, heads, n_atoms)
    assert counted == sv.simbav2_critic_param_formula(d_in, width, depth, n_atoms, heads)
    # the closed form as method.md writes it: H [(8L+1) W^2 + (d + 5L + 3 + K) W + K]
    expected = heads * (
        (8 * depth + 1) * width**2 + (d_in + 5 * depth + 3 + n_atoms) * width + n_atoms
    )
    assert counted == expected
    if (d_in, width, heads) == (88, 512, 1):
        assert counted == 4_559_973  # DMC humanoid, one head (method.md)


@pytest.mark.parametrize(
    ("d_in", "width", "depth", "heads", "n_atoms"), [(70, 128, 2, 2, 101), (12, 48, 1, 1, 51)]
)
def test_update_flops_count_every_kernel_weight_once_per_pass(d_in, width, depth, heads, n_atoms):
    from valuescale.agents.simbav2.config import SimbaV2Config
    from valuescale.flops import simbav2_actor_macs, simbav2_critic_macs, update_flops

    macs = simbav2_critic_macs(d_in, width, depth, n_atoms, heads)
    assert macs == _kernel_weights(_critic_shapes(d_in, width, depth, heads, n_atoms))
    if width == 128:  # method.md: 601,290 parameters at W 128 without the scalers (biases kept)
        assert macs + heads * n_atoms == 601_290
    obs_dim, act_dim = d_in - 5, 5
    actor = HyperTanhPolicy(act_dim=act_dim, width=32, depth=1)
    shapes = jax.eval_shape(
        lambda k: actor.init(k, jnp.zeros((1, obs_dim)))["params"], jax.random.PRNGKey(0)
    )
    assert simbav2_actor_macs(obs_dim, act_dim, 32, 1) == _kernel_weights(shapes)
    cfg = SimbaV2Config(
        critic_width=width,
        critic_depth=depth,
        critic_heads=heads,
        n_atoms=n_atoms,
        actor_width=32,
        batch_size=8,
    )
    ma = simbav2_actor_macs(obs_dim, act_dim, 32, 1)
    assert update_flops(obs_dim, act_dim, cfg) == 8 * (12 * macs + 8 * ma)
    with pytest.raises(ValueError, match="critic_heads"):
        update_flops(obs_dim, act_dim, SimbaV2Config())


# ----------------------------------------------------------------------------- layers


def test_lerp_matches_numpy_and_stays_on_the_sphere():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(5, 8))
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    h_tilde = rng.normal(size=(5, 8))
    h_tilde /= np.linalg.norm(h_tilde, axis=-1, keepdims=True)
    alpha = rng.uniform(0.0, 1.0, size=8)
    ref = h + alpha * (h_tilde - h)
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    out = np.asarray(lerp(jnp.asarray(h), jnp.asarray(h_tilde), jnp.asarray(alpha)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)
    # alpha = 0 keeps h, alpha = 1 moves all the way to h_tilde
    np.testing.assert_allclose(np.asarray(lerp(h, h_tilde, jnp.zeros(8))), h, atol=1e-6)
    np.testing.assert_allclose(np.asarray(lerp(h, h_tilde, jnp.ones(8))), h_tilde, atol=1e-6)


def test_lerp_block_starts_at_its_published_interpolation_and_outputs_unit_vectors():
    width, n_blocks = 16, 2
    block = LerpBlock(width, n_blocks)
    h = l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (4, width)))
    params = block.init(jax.random.PRNGKey(2), h)["params"]
    # kernels [W, 4W] and [4W, W] with unit columns
    for name, shape in (("HyperDense_0", (width, 4 * width)), ("HyperDense_1", (4 * width, width))):
        kernel = np.asarray(params[name]["hyper_kernel"])
        assert kernel.shape == shape
        np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
    # inner scaler: init = scale = sqrt(2/W)/2; LERP alpha: stored 1/sqrt(W), acts as 1/(L+1)
    np.testing.assert_allclose(params["Scaler_0"]["scaler"], math.sqrt(2 / width) / 2, rtol=1e-6)
    np.testing.assert_allclose(params["Scaler_1"]["scaler"], 1 / math.sqrt(width), rtol=1e-6)
    out = np.asarray(block.apply({"params": params}, h))
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
    # numpy reference of the block with alpha = 1/(L+1)
    w1 = np.asarray(params["HyperDense_0"]["hyper_kernel"], np.float64)
    w2 = np.asarray(params["HyperDense_1"]["hyper_kernel"], np.float64)
    hn = np.asarray(h, np.float64)
    inner = np.maximum(math.sqrt(2 / width) / 2 * (hn @ w1), 0.0) + 1e-8
    h_tilde = inner @ w2
    h_tilde /= np.linalg.norm(h_tilde, axis=-1, keepdims=True)
    ref = hn + (h_tilde - hn) / (n_blocks + 1)
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_embedder_appends_the_shift_and_projects():
    width, c_shift = 8, 3.0
    x = jnp.asarray([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    emb = Embedder(width, c_shift)
    params = emb.init(jax.random.PRNGKey(0), x)["params"]
    kernel = np.asarray(params["HyperDense_0"]["hyper_kernel"], np.float64)
    assert kernel.shape == (4, width)  # d + 1 inputs
    out = np.asarray(emb.apply({"params": params}, x))
    xs = np.concatenate([np.asarray(x, np.float64), np.full((2, 1), c_shift)], axis=1)
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    ref = math.sqrt(2 / width) * (xs @ kernel)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_project_kernels_touches_kernels_only():
    params = {
        "a": {"hyper_kernel": jnp.full((2, 3, 4), 2.0), "scaler": jnp.full((4,), 2.0)},
        "bias": jnp.full((4,), 2.0),
    }
    out = project_kernels(params)
    np.testing.assert_allclose(np.linalg.norm(out["a"]["hyper_kernel"], axis=-2), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(out["a"]["scaler"], params["a"]["scaler"])
    np.testing.assert_array_equal(out["bias"], params["bias"])


# ----------------------------------------------------------------------------- categorical loss


def _numpy_projection(target_atoms, probs, v_min, v_max, n_atoms):
    """Loop reference (method.md): b = (Tz - v_min)/delta; p(ceil b - b) to floor b,
    p(b - floor b) to ceil b; all of p to floor b when b is an integer."""
    delta = (v_max - v_min) / (n_atoms - 1)
    out = np.zeros(target_atoms.shape[:-1] + (n_atoms,))
    for idx in np.ndindex(target_atoms.shape[:-1]):
        for k in range(target_atoms.shape[-1]):
            tz = min(max(target_atoms[idx + (k,)], v_min), v_max)
            b = (tz - v_min) / delta
            lo, hi = math.floor(b), math.ceil(b)
            p = probs[idx + (k,)]
            if lo == hi:
                out[idx + (lo,)] += p
            else:
                out[idx + (lo,)] += p * (hi - b)
                out[idx + (hi,)] += p * (b - lo)
    return out


def test_categorical_projection_matches_numpy_loop():
    rng = np.random.default_rng(3)
    v_min, v_max, n_atoms = -5.0, 5.0, 101
    support = np.linspace(v_min, v_max, n_atoms)
    probs = rng.dirichlet(np.ones(n_atoms), size=6)
    # shifted/scaled atoms, some outside the support (clipped), one row exactly on the grid
    target = 0.3 * rng.normal(size=(6, 1)) + 0.97 * support[None, :]
    target[0] = support + 0.2  # integer b after the shift (0.2 = 2 delta), top clipped
    target[1] = 2.0 * support  # half outside
    ref = _numpy_projection(target, probs, v_min, v_max, n_atoms)
    out = np.asarray(
        categorical_projection(
            jnp.asarray(target, jnp.float32), jnp.asarray(probs, jnp.float32), v_min, v_max, 101
        )
    )
    np.testing.assert_allclose(out, ref, atol=2e-6)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


def test_td_target_uses_the_lower_head_and_the_soft_bellman_shift():
    rng = np.random.default_rng(4)
    n_atoms, batch = 11, 5
    support = np.linspace(-5.0, 5.0, n_atoms)
    logits = rng.normal(size=(2, batch, n_atoms))
    rewards = rng.normal(size=batch)
    masks = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    log_prob = rng.normal(size=batch)
    alpha, discount = 0.3, 0.9
    out = np.asarray(
        td_target_distribution(
            jnp.asarray(logits, jnp.float32),
            jnp.asarray(rewards, jnp.float32),
            jnp.asarray(masks, jnp.float32),
            jnp.asarray(log_prob, jnp.float32),
            jnp.float32(alpha),
            discount,
            -5.0,
            5.0,
        )
    )
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q = (probs * support).sum(-1)
    chosen = probs[np.argmin(q, axis=0), np.arange(batch)]
    tz = rewards[:, None] + discount * masks[:, None] * (support[None] - alpha * log_prob[:, None])
    ref = _numpy_projection(tz, chosen, -5.0, 5.0, n_atoms)
    np.testing.assert_allclose(out, ref, atol=2e-6)
    # cross-entropy: sum over heads of the batch mean
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = sum(np.mean(-(ref * log_p[h]).sum(-1)) for h in range(2))
    loss = categorical_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(ref, jnp.float32))
    np.testing.assert_allclose(float(loss), ce, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(atoms(-5.0, 5.0, 101))[[0, 50, 100]], [-5, 0, 5], atol=1e-6
    )


# ----------------------------------------------------------------------------- host statistics


def _prior_moments(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the samples pooled with the prior pseudo-sample (mean 0, variance 1,
    weight 1e-4), as the running statistics define them (closed form, not sequential)."""
    c0 = 1e-4
    n = samples.shape[0]
    mean = samples.sum(axis=0) / (c0 + n)
    m2 = c0 * (1.0 + mean**2) + ((samples - mean) ** 2).sum(axis=0)
    return mean, m2 / (c0 + n)


def test_reward_scaling_matches_numpy_reference():
    rng = np.random.default_rng(5)
    n_seeds, steps, discount, g_max = 2, 300, 0.99, 5.0
    rewards = rng.uniform(0.0, 3.0, size=(steps, n_seeds))
    dones = np.zeros((steps, n_seeds))
    dones[99, 0] = dones[199, :] = dones[150, 1] = 1.0
    stats = sv.RunningStatistics(n_seeds, 3, discount, g_max)
    for t in range(steps):
        stats.observe_reward(rewards[t], dones[t])
    for s in range(n_seeds):
        g, returns = 0.0, []
        for t in range(steps):
            g = discount * (1.0 - dones[t, s]) * g + rewards[t, s]
            returns.append(g)
        returns = np.asarray(returns)
        _, var = _prior_moments(returns)
        scale = max(math.sqrt(var + 1e-8), np.abs(returns).max() / g_max)
        np.testing.assert_allclose(stats.reward_scale()[s], scale, rtol=1e-12)
        assert scale > 1.0  # returns reach ~100: the G_max / g_max branch is the larger one
    arrays = stats.device_arrays()
    assert arrays["reward_scale"].dtype == np.float32 and arrays["reward_scale"].shape == (2,)
    # a checkpoint round trip continues identically
    again = sv.RunningStatistics.from_state_dict(stats.state_dict())
    stats.observe_reward(np.ones(2), np.zeros(2))
    again.observe_reward(np.ones(2), np.zeros(2))
    np.testing.assert_array_equal(again.reward_scale(), stats.reward_scale())


def test_observation_statistics_are_float64_and_match_numpy_reference():
    rng = np.random.default_rng(6)
    # a large offset with a small spread: float32 accumulation would lose the variance
    obs = 1e4 + 1e-2 * rng.normal(size=(2000, 2, 3))
    stats = sv.RunningStatistics(2, 3, 0.99, 5.0)
    for row in obs:
        stats.observe_obs(row)
    assert stats.obs_mean.dtype == np.float64
    for s in range(2):
        mean, var = _prior_moments(obs[:, s])
        np.testing.assert_allclose(stats.obs_mean[s], mean, rtol=1e-12)
        np.testing.assert_allclose(stats.obs_var[s], var, rtol=1e-6)
        np.testing.assert_allclose(stats.obs_std()[s], np.sqrt(var + 1e-8), rtol=1e-6)
    with pytest.raises(ValueError, match="observe_obs: expected shape"):
        stats.observe_obs(np.zeros(3))


# ----------------------------------------------------------------------------- config, env


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="critic_width"):
        sv.SimbaV2Config(critic_width=0)
    with pytest.raises(ValueError, match="critic_heads"):
        sv.SimbaV2Config(critic_heads=3)
    with pytest.raises(ValueError, match="v_min"):
        sv.SimbaV2Config(v_min=5.0, v_max=-5.0)
    with pytest.raises(ValueError, match=r"critic_heads is None.*for_env"):
        sv.init(jax.random.PRNGKey(0), 3, 1, sv.SimbaV2Config())
    assert sv.SimbaV2Config().for_env("cartpole-balance").critic_heads == 1
    assert sv.SimbaV2Config().for_env("h1-stand-v0").critic_heads == 2
    assert sv.SimbaV2Config(critic_heads=2).for_env("cartpole-balance").critic_heads == 2
    assert sv.horizon_discount(500) == pytest.approx(0.99)
    cfg = sv.SimbaV2Config(lr_decay_updates=100)
    schedule = sv.learning_rate(cfg, cfg.critic_learning_rate)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(50)) == pytest.approx(7.5e-5)
    assert float(schedule(100)) == float(schedule(10_000)) == pytest.approx(5e-5)


def test_action_repeat_sums_rewards_over_simulator_steps():
    from valuescale.envs import make_env

    inner = make_env("cartpole-balance", 7, max_episode_steps=10)
    plain = make_env("cartpole-balance", 7, max_episode_steps=10)
    env = sv.ActionRepeat(inner, 2)
    assert env.max_episode_steps == 5
    np.testing.assert_array_equal(env.reset(), plain.reset())
    action = np.array([0.5], np.float32)
    for step in range(5):
        obs, reward, terminated, truncated = env.step(action)
        o1, r1, *_ = plain.step(action)
        o2, r2, _, trunc2 = plain.step(action)
        np.testing.assert_array_equal(obs, o2)
        assert reward == pytest.approx(r1 + r2)
        assert truncated == trunc2 == (step == 4)


# ----------------------------------------------------------------------------- updates

OBS_DIM, ACT_DIM = 5, 2
TINY = sv.SimbaV2Config(
    critic_width=16,
    actor_width=8,
    batch_size=8,
    n_atoms=21,
    critic_heads=2,
    passive_critic=True,
    passive_critic_width=8,
    critic_lr=3e-3,
    actor_lr=3e-3,
    temperature_lr=3e-3,
    lr_decay_updates=10_000,
)


def _tiny_replay(seed: int, bandit: bool = False):
    """24 random transitions; ``bandit``: one-step episodes (mask 0) with reward ``2 a_0``."""
    rng = np.random.default_rng(seed)
    replay = replay_init(32, OBS_DIM, ACT_DIM)
    for _ in range(24):
        action = rng.uniform(-1, 1, ACT_DIM)
        replay = replay_insert(
            replay,
            10.0 + rng.normal(size=OBS_DIM),
            action,
            2.0 * action[0] if bandit else rng.uniform(0, 20),
            0.0 if bandit else float(rng.uniform() > 0.1),
            10.0 + rng.normal(size=OBS_DIM),
        )
    return replay


@pytest.mark.slow
def test_vmapped_updates_keep_kernels_on_the_sphere_and_learn():
    n_seeds = 2
    keys = jax.random.split(jax.random.PRNGKey(0), n_seeds)
    state = sv.init_seeds(keys, OBS_DIM, ACT_DIM, TINY)
    for params in (state.critic_params, state.actor_params, state.passive_params):
        np.testing.assert_allclose(sv.kernel_norms(params), 1.0, atol=1e-5)
    one = unstack_seed(state, 0)
    assert sv.critic_param_count(one) == sv.simbav2_critic_param_formula(
        OBS_DIM + ACT_DIM, 16, 2, 21, 2
    )
    assert sv.passive_critic_param_count(one) == sv.simbav2_critic_param_formula(7, 8, 2, 21, 2)
    with pytest.raises(ValueError, match="one seed"):
        sv.critic_param_count(state)

    # host statistics of the raw data (obs around 10, rewards up to 20) into the stacked state
    host = sv.RunningStatistics(n_seeds, OBS_DIM, TINY.discount, TINY.g_max)
    rng = np.random.default_rng(1)
    for _ in range(50):
        host.observe_obs(10.0 + rng.normal(size=(n_seeds, OBS_DIM)))
        host.observe_reward(rng.uniform(0, 20, n_seeds), np.zeros(n_seeds))
    state = sv.set_statistics(state, host.device_arrays())
    assert state.statistics.obs_mean.shape == (n_seeds, OBS_DIM)
    replays = stack_seeds([_tiny_replay(0), _tiny_replay(1)])

    @jax.jit
    def run(state, replays):
        new, info = jax.vmap(lambda s, r: sv.update_n(s, r, TINY, 3))(state, replays)
        batch = {k: getattr(replays, k)[:, :8] for k in ("obs", "actions", "rewards", "masks")}
        batch["next_obs"] = replays.next_obs[:, :8]
        val = jax.vmap(lambda s, b: sv.td_losses(s, b, TINY))(new, batch)
        return new, info, val

    new, info, val = run(state, replays)
    for name in ("critic_loss", "actor_loss", "temperature", "q_mean", "entropy"):
        assert info[name].shape == (n_seeds,)
        assert np.all(np.isfinite(np.asarray(info[name]))), name
    assert np.all(np.isfinite(np.asarray(info["passive_critic_loss"])))
    assert np.all(np.isfinite(np.asarray(val["critic_loss"])))
    assert np.all(np.isfinite(np.asarray(val["passive_critic_loss"])))
    # categorical losses: a cross-entropy over 21 atoms summed over 2 heads is near 2 log 21
    assert np.all(np.asarray(info["critic_loss"]) > 0.5 * 2 * math.log(21))
    np.testing.assert_array_equal(np.asarray(new.step), [3, 3])
    np.testing.assert_allclose(np.asarray(info["temperature"]), TINY.init_temperature, rtol=1e-2)
    # after the updates every kernel is back on the unit sphere (the target is not re-projected)
    for params in (new.critic_params, new.actor_params, new.passive_params):
        np.testing.assert_allclose(sv.kernel_norms(params), 1.0, atol=1e-5)
    # every network, the scalers and alpha moved; seeds moved differently
    for before, after in (
        (state.critic_params, new.critic_params),
        (state.actor_params, new.actor_params),
        (state.target_critic_params, new.target_critic_params),
        (state.passive_params, new.passive_params),
        (state.temperature_params, new.temperature_params),
    ):
        leaves = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        assert all(not np.array_equal(np.asarray(b), np.asarray(a)) for b, a in leaves)
    kernel = new.critic_params["Encoder_0"]["Embedder_0"]["HyperDense_0"]["hyper_kernel"]
    assert not np.allclose(np.asarray(kernel[0]), np.asarray(kernel[1]))
    # the statistics are used: acting on raw obs = acting on normalised obs with identity stats
    obs = jnp.full((n_seeds, 3, OBS_DIM), 11.0)
    evaluate = jax.jit(jax.vmap(lambda s, o: sv.act(s, o, None, True)))
    acted = evaluate(new, obs)
    plain = new.replace(statistics=jax.vmap(lambda _: sv.identity_statistics(OBS_DIM))(obs))
    normed = (obs - new.statistics.obs_mean[:, None]) / new.statistics.obs_std[:, None]
    expected = evaluate(plain, normed)
    np.testing.assert_allclose(np.asarray(acted), np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(np.asarray(acted)) <= 1.0)

    # a bandit (reward 2 a_0, every episode one step long): the same compiled updates learn that
    # a_0 = +1 is better, in the critic's expected values and in the actor's actions
    replays = stack_seeds([_tiny_replay(2, bandit=True), _tiny_replay(3, bandit=True)])
    identity = jax.vmap(lambda _: sv.identity_statistics(OBS_DIM))(jnp.arange(n_seeds))
    learner = state.replace(statistics=identity)
    for _ in range(70):
        learner, info, _ = run(learner, replays)
    assert np.all(np.isfinite(np.asarray(info["critic_loss"])))
    module = CategoricalCritic(TINY.critic_width, TINY.critic_depth, TINY.n_atoms)
    support = atoms(TINY.v_min, TINY.v_max, TINY.n_atoms)

    @jax.jit
    def q_of(params, obs, a0):
        action = jnp.zeros(obs.shape[:-1] + (ACT_DIM,)).at[..., 0].set(a0)
        return expected_value(apply_critic(module, params, obs, action), support)  # [H, B]

    obs = replays.obs[:, :24]
    q_plus = np.asarray(jax.vmap(q_of, (0, 0, None))(learner.critic_params, obs, 1.0))
    q_minus = np.asarray(jax.vmap(q_of, (0, 0, None))(learner.critic_params, obs, -1.0))
    assert (q_plus - q_minus).mean() > 1.0, (q_plus.mean(), q_minus.mean())
    assert (q_plus > q_minus).mean() > 0.9
    greedy = np.asarray(evaluate(learner, obs))[..., 0]
    assert greedy.mean() > 0.5 and (greedy > 0).mean() > 0.9, greedy
