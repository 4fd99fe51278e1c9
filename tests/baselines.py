"""What uniformly random actions score: the bar the learning tests compare a trained agent with."""

from __future__ import annotations

import numpy as np

from valuescale.envs import ActionRepeat, make_env


def random_return(env_name: str, seeds: list[int], steps: int, action_repeat: int = 1) -> float:
    """Mean return over ``seeds`` of one episode of ``steps`` simulator steps with uniform random
    actions in [-1, 1], each held for ``action_repeat`` simulator steps (rewards summed, as the
    engine evaluates an agent with action repeat)."""
    returns = []
    for seed in seeds:
        env = ActionRepeat(
            make_env(env_name, 10_000 + seed, max_episode_steps=steps), action_repeat
        )
        rng = np.random.default_rng(seed)
        env.reset()
        total, truncated = 0.0, False
        while not truncated:
            _, reward, _, truncated = env.step(rng.uniform(-1, 1, env.act_dim))
            total += reward
        returns.append(total)
    return float(np.mean(returns))
