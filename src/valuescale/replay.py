"""Device-resident replay buffer: one ring buffer per seed, stored as JAX arrays.

All functions act on ONE seed's buffer; the training loop adds a leading seed axis with
:func:`stack_seeds` and ``jax.vmap``s insert/sample over it. Sampling happens inside the jitted
update (no host-to-device batch copies). Under ``jax.vmap`` with per-seed keys every seed draws its
own indices (BRO's buffer shares one index draw across seeds, so its "independent" seeds train on
identical transition sequences; ours do not).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]
"""A minibatch: ``obs [B, obs_dim]``, ``actions [B, act_dim]``, ``rewards [B]``, ``masks [B]``,
``next_obs [B, obs_dim]`` (float32)."""

BATCH_KEYS = ("obs", "actions", "rewards", "masks", "next_obs")


@flax.struct.dataclass
class Replay:
    """Ring buffer of transitions (one seed).

    Attributes:
        obs: observations [capacity, obs_dim].
        actions: actions in [-1, 1], [capacity, act_dim].
        rewards: rewards [capacity].
        masks: bootstrap masks [capacity]: 0 at a true termination, 1 otherwise (also at a
            time-limit truncation, which is bootstrapped through).
        next_obs: next observations [capacity, obs_dim].
        pos: int32 index the next insert writes to.
        size: int32 number of valid transitions (saturates at capacity).
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    masks: jax.Array
    next_obs: jax.Array
    pos: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        """Number of slots (static: read from the array shape)."""
        return self.rewards.shape[-1]


def replay_init(capacity: int, obs_dim: int, act_dim: int) -> Replay:
    """An empty buffer with ``capacity`` slots (zeros; ``pos = size = 0``)."""
    dims = {}
    for name, value in (("capacity", capacity), ("obs_dim", obs_dim), ("act_dim", act_dim)):
        try:
            dims[name] = operator.index(value)
        except TypeError:
            dims[name] = 0
        if isinstance(value, bool) or dims[name] < 1:
            raise ValueError(f"replay_init: {name} must be a positive int, got {value!r}")
    capacity, obs_dim, act_dim = dims["capacity"], dims["obs_dim"], dims["act_dim"]
    f32 = jnp.float32
    return Replay(
        obs=jnp.zeros((capacity, obs_dim), f32),
        actions=jnp.zeros((capacity, act_dim), f32),
        rewards=jnp.zeros((capacity,), f32),
        masks=jnp.zeros((capacity,), f32),
        next_obs=jnp.zeros((capacity, obs_dim), f32),
        pos=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
    )


def replay_insert(
    replay: Replay,
    obs: jax.Array,
    action: jax.Array,
    reward: jax.Array,
    mask: jax.Array,
    next_obs: jax.Array,
) -> Replay:
    """Write one transition at ``pos`` (overwriting the oldest once full) and advance."""
    pos = replay.pos
    f32 = jnp.float32
    return replay.replace(
        obs=replay.obs.at[pos].set(jnp.asarray(obs, f32)),
        actions=replay.actions.at[pos].set(jnp.asarray(action, f32)),
        rewards=replay.rewards.at[pos].set(jnp.asarray(reward, f32)),
        masks=replay.masks.at[pos].set(jnp.asarray(mask, f32)),
        next_obs=replay.next_obs.at[pos].set(jnp.asarray(next_obs, f32)),
        pos=(pos + 1) % replay.capacity,
        size=jnp.minimum(replay.size + 1, replay.capacity),
    )


def replay_sample(replay: Replay, key: jax.Array, batch_size: int) -> Batch:
    """``batch_size`` transitions drawn uniformly with replacement from ``[0, size)``.

    ``batch_size`` must be static. An empty buffer (``size == 0``) returns slot 0 (zeros): the
    caller must not train before the warm-up has filled it.
    """
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.size, 1))
    return {name: jnp.take(getattr(replay, name), idx, axis=0, mode="clip") for name in BATCH_KEYS}


def stack_seeds(trees: Sequence):
    """Stack per-seed pytrees (replays, agent states) along a new leading seed axis."""
    if len(trees) == 0:
        raise ValueError("stack_seeds: need at least one per-seed tree")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_seed(tree, seed_index: int):
    """The ``seed_index``-th seed of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[seed_index], tree)
