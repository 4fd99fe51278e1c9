"""Device replay: ring-buffer semantics and independent per-seed sampling under vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from valuescale.replay import (
    replay_init,
    replay_insert,
    replay_sample,
    stack_seeds,
    unstack_seed,
)

OBS_DIM, ACT_DIM = 3, 2


def _fill(replay, start: int, count: int):
    """Insert transitions whose every field encodes their running index t."""
    insert = jax.jit(replay_insert)
    for t in range(start, start + count):
        replay = insert(
            replay,
            jnp.full((OBS_DIM,), t, jnp.float32),
            jnp.full((ACT_DIM,), -t, jnp.float32),
            float(t),
            float(t % 2),
            jnp.full((OBS_DIM,), t + 0.5, jnp.float32),
        )
    return replay


def test_insert_before_full_and_sample_only_valid_slots():
    replay = _fill(replay_init(16, OBS_DIM, ACT_DIM), 0, 5)
    assert int(replay.pos) == 5 and int(replay.size) == 5
    np.testing.assert_array_equal(np.asarray(replay.rewards[:6]), [0, 1, 2, 3, 4, 0])
    batch = replay_sample(replay, jax.random.key(0), 256)
    assert batch["obs"].shape == (256, OBS_DIM) and batch["actions"].shape == (256, ACT_DIM)
    assert batch["rewards"].shape == (256,) and batch["masks"].shape == (256,)
    rewards = np.asarray(batch["rewards"])
    assert set(rewards.tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}  # only stored slots, all of them
    # the fields of one sampled row belong to the same transition
    np.testing.assert_array_equal(np.asarray(batch["obs"][:, 0]), rewards)
    np.testing.assert_array_equal(np.asarray(batch["actions"][:, 1]), -rewards)
    np.testing.assert_array_equal(np.asarray(batch["next_obs"][:, 2]), rewards + 0.5)
    np.testing.assert_array_equal(np.asarray(batch["masks"]), rewards % 2)


def test_ring_buffer_past_capacity_keeps_latest_transitions():
    capacity = 8
    replay = _fill(replay_init(capacity, OBS_DIM, ACT_DIM), 0, 21)  # wraps twice and a bit
    assert int(replay.size) == capacity
    assert int(replay.pos) == 21 % capacity
    # slot s holds the latest t with t % capacity == s
    expected = [max(t for t in range(21) if t % capacity == s) for s in range(capacity)]
    np.testing.assert_array_equal(np.asarray(replay.rewards), expected)
    np.testing.assert_array_equal(np.asarray(replay.obs[:, 0]), expected)
    drawn = set(np.asarray(replay_sample(replay, jax.random.key(1), 512)["rewards"]).tolist())
    assert drawn == set(range(13, 21))  # never an overwritten transition


def test_vmapped_sampling_draws_independent_indices_per_seed():
    # identical buffers for 3 seeds; rewards encode the slot index
    one = _fill(replay_init(1000, OBS_DIM, ACT_DIM), 0, 1000)
    replays = stack_seeds([one, one, one])
    keys = jax.random.split(jax.random.key(7), 3)
    sample = jax.jit(jax.vmap(replay_sample, in_axes=(0, 0, None)), static_argnums=2)
    batch = sample(replays, keys, 64)
    idx = np.asarray(batch["rewards"])
    assert idx.shape == (3, 64)
    # the seeds draw different index sequences (BRO's buffer would give three equal rows)
    assert not np.array_equal(idx[0], idx[1])
    assert not np.array_equal(idx[1], idx[2])
    assert np.mean(idx[0] == idx[1]) < 0.1
    # and each seed's draw is the one-seed draw with its own key (reproducible)
    np.testing.assert_array_equal(
        idx[2], np.asarray(replay_sample(unstack_seed(replays, 2), keys[2], 64)["rewards"])
    )


def test_vmapped_insert_writes_each_seed_its_own_transition():
    replays = stack_seeds([replay_init(4, OBS_DIM, ACT_DIM) for _ in range(2)])
    insert = jax.jit(jax.vmap(replay_insert), donate_argnums=0)
    obs = jnp.array([[1.0] * OBS_DIM, [2.0] * OBS_DIM])
    replays = insert(
        replays, obs, jnp.zeros((2, ACT_DIM)), jnp.array([10.0, 20.0]), jnp.ones(2), obs + 1
    )
    np.testing.assert_array_equal(np.asarray(replays.rewards[:, 0]), [10.0, 20.0])
    np.testing.assert_array_equal(np.asarray(replays.size), [1, 1])
    np.testing.assert_array_equal(np.asarray(replays.next_obs[:, 0, 0]), [2.0, 3.0])


@pytest.mark.parametrize(
    ("args", "name"),
    [((0, 3, 2), "capacity"), ((8, -1, 2), "obs_dim"), ((8, 3, 2.5), "act_dim")],
)
def test_replay_init_rejects_bad_sizes(args, name):
    with pytest.raises(ValueError, match=name):
        replay_init(*args)
