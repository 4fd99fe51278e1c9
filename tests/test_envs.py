"""Environments: names, flat observations, action scaling, episode ends, exact snapshots."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from valuescale.envs import (
    PAPER_DMC_ENVS,
    check_env_name,
    list_envs,
    make_env,
    resolve_dmc,
)


@pytest.mark.parametrize(
    ("name", "domain", "task"),
    [
        ("cheetah-run", "cheetah", "run"),
        ("walker-run", "walker", "run"),
        ("finger-turn", "finger", "turn_hard"),
        ("humanoid-stand", "humanoid", "stand"),
        ("ball_in_cup-catch", "ball_in_cup", "catch"),
    ],
)
def test_flat_observation_matches_dm_control(name: str, domain: str, task: str) -> None:
    env = make_env(name, seed=7)
    from dm_control import suite  # after make_env chose MUJOCO_GL: no OpenGL probing

    raw = suite.load(domain, task, task_kwargs={"random": 7})
    spec = raw.observation_spec()
    assert env.obs_dim == sum(int(np.prod(v.shape)) for v in spec.values())
    assert env.act_dim == raw.action_spec().shape[0]
    obs = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (env.obs_dim,)
    # Same seed, same initial state: the flat vector is the dict in the spec's key order.
    ts = raw.reset()
    expected = np.concatenate([np.asarray(ts.observation[k], np.float32).reshape(-1) for k in spec])
    np.testing.assert_array_equal(obs, expected)


def test_finger_turn_is_turn_hard() -> None:
    assert resolve_dmc("finger-turn") == ("finger", "turn_hard")
    assert resolve_dmc("finger-turn_easy") == ("finger", "turn_easy")
    # turn_hard's target is smaller than turn_easy's.
    hard = make_env("finger-turn", 0)._env.task._target_radius
    easy = make_env("finger-turn_easy", 0)._env.task._target_radius
    assert hard < easy


def test_unknown_env_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown env 'cheetah-fly'") as info:
        make_env("cheetah-fly", 0)
    message = str(info.value)
    for name in ("cheetah-run", "finger-turn", "dog-trot", "h1-crawl-v0"):
        assert name in message
    with pytest.raises(ValueError, match="unknown env"):
        check_env_name("nonsense")


def test_list_envs_has_paper_and_generic_names() -> None:
    names = list_envs()
    assert set(PAPER_DMC_ENVS) <= set(names)
    for generic in ("cartpole-swingup", "walker-walk", "reacher-easy", "pendulum-swingup"):
        assert generic in names
        make_env(generic, 0)  # builds
    assert names == sorted(names)


def test_actions_are_rescaled_to_the_task_bounds() -> None:
    env = make_env("quadruped-run", 0)  # bounds are not all [-1, 1]
    spec = env._env.action_spec()
    assert not np.allclose(spec.maximum, 1.0)
    env.reset()
    env.step(np.ones(env.act_dim))
    np.testing.assert_allclose(env._env.physics.data.ctrl, spec.maximum)
    env.step(-np.ones(env.act_dim))
    np.testing.assert_allclose(env._env.physics.data.ctrl, spec.minimum)
    env.step(np.full(env.act_dim, 5.0))  # clipped first
    np.testing.assert_allclose(env._env.physics.data.ctrl, spec.maximum)
    with pytest.raises(ValueError, match="expected 12"):
        env.step(np.zeros(3))


def test_episodes_are_truncated_never_terminated() -> None:
    env = make_env("cheetah-run", 1, max_episode_steps=30)
    env.reset()
    rng = np.random.default_rng(0)
    flags = [env.step(rng.uniform(-1, 1, env.act_dim))[2:] for _ in range(30)]
    assert all(not terminated for terminated, _ in flags)
    assert [truncated for _, truncated in flags] == [False] * 29 + [True]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.act_dim))
    env.reset()
    env.step(np.zeros(env.act_dim))  # a new episode steps again


def test_default_episode_is_1000_steps() -> None:
    env = make_env("acrobot-swingup", 0)
    env.reset()
    steps = 0
    truncated = False
    while not truncated:
        _, _, _, truncated = env.step(np.zeros(env.act_dim))
        steps += 1
    assert steps == 1000


def test_seeds_change_initial_states() -> None:
    a, b, c = make_env("walker-run", 1), make_env("walker-run", 1), make_env("walker-run", 2)
    oa, ob, oc = a.reset(), b.reset(), c.reset()
    np.testing.assert_array_equal(oa, ob)
    assert not np.array_equal(oa, oc)


@pytest.mark.parametrize("name", ["cheetah-run", "finger-turn", "fish-swim", "humanoid-run"])
def test_snapshot_continues_bit_for_bit(name: str) -> None:
    """Snapshot mid-episode, continue across an episode boundary in a fresh env (other seed)."""
    rng = np.random.default_rng(0)
    env = make_env(name, 3, max_episode_steps=120)
    actions = rng.uniform(-1, 1, (300, env.act_dim))
    env.reset()
    snapshot = None
    reference = []
    for i, a in enumerate(actions):
        if i == 90:
            snapshot = pickle.dumps(env.get_state())
        out = env.step(a)
        if i >= 90:
            reference.append(out)
        if out[2] or out[3]:
            env.reset()
    restored = make_env(name, 12345, max_episode_steps=120)
    restored.reset()
    restored.set_state(pickle.loads(snapshot))
    for a, (obs, reward, terminated, truncated) in zip(actions[90:], reference, strict=True):
        out = restored.step(a)
        np.testing.assert_array_equal(out[0], obs)
        assert (out[1], out[2], out[3]) == (reward, terminated, truncated)
        if out[2] or out[3]:
            restored.reset()


def test_snapshot_of_another_env_is_refused() -> None:
    state = make_env("cheetah-run", 0).get_state()
    with pytest.raises(ValueError, match="cheetah-run"):
        make_env("walker-run", 0).set_state(state)


# HumanoidBench (installed and missing): test_humanoidbench.py
