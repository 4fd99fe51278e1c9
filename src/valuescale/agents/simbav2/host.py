"""Host-side pieces of SimbaV2: float64 running statistics and the action-repeat wrapper.

Observation normalisation and reward scaling (method.md section 1 "SimbaV2", part 1) keep their
statistics in float64 numpy on the host (float32 accumulation is reported to lose the published
performance); the device only sees their float32 results through :class:`Statistics` in the agent
state (set with :func:`valuescale.agents.simbav2.set_statistics`). One row per seed: every seed has
its own environment, so its own statistics.

* Observations: per-coordinate running mean and variance, merged in parallel form (init mean 0,
  variance 1, count 1e-4), updated with every observation acted on in training (warm-up included,
  never in evaluation or validation). ``o_bar = (o - mean) / sqrt(var + 1e-8)``.
* Rewards: a running discounted return ``G <- discount (1 - done) G + r`` (``done`` = termination
  or truncation of the transition that produced ``r``), the running variance of ``G`` (same
  estimator) and ``G_max = max |G|``. Rewards are divided by
  ``max(sqrt(Var(G) + 1e-8), G_max / g_max)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

COUNT_INIT = 1e-4
"""Initial count of the running statistics (mean 0, variance 1 weigh almost nothing)."""
VAR_EPS = 1e-8
"""Added to the variances before the square root."""


def merge_moments(
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    batch_mean: np.ndarray,
    batch_var: np.ndarray,
    batch_count: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parallel merge of (mean, variance, count) with a batch's moments (Chan et al.).

    ``count`` may carry trailing singleton axes to broadcast against ``mean``.
    """
    delta = batch_mean - mean
    total = count + batch_count
    ratio = batch_count / total
    new_mean = mean + delta * ratio
    m2 = var * count + batch_var * batch_count + np.square(delta) * count * ratio
    return new_mean, m2 / total, total


class RunningStatistics:
    """Float64 running observation and return statistics of ``n_seeds`` independent seeds.

    Args:
        n_seeds: rows (one per seed).
        obs_dim: observation size.
        discount: the agent's discount (of the running return ``G``).
        g_max: return bound of the reward scale (``SimbaV2Config.g_max``).
    """

    def __init__(self, n_seeds: int, obs_dim: int, discount: float, g_max: float) -> None:
        if n_seeds < 1 or obs_dim < 1:
            raise ValueError(
                f"RunningStatistics: n_seeds and obs_dim must be >= 1, got {n_seeds}, {obs_dim}"
            )
        self.n_seeds, self.obs_dim = int(n_seeds), int(obs_dim)
        self.discount, self.g_max = float(discount), float(g_max)
        f64 = np.float64
        self.obs_mean = np.zeros((n_seeds, obs_dim), f64)
        self.obs_var = np.ones((n_seeds, obs_dim), f64)
        self.obs_count = np.full((n_seeds,), COUNT_INIT, f64)
        self.ret = np.zeros((n_seeds,), f64)
        self.ret_mean = np.zeros((n_seeds,), f64)
        self.ret_var = np.ones((n_seeds,), f64)
        self.ret_count = np.full((n_seeds,), COUNT_INIT, f64)
        self.ret_max = np.zeros((n_seeds,), f64)

    def _rows(self, x: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
        arr = np.asarray(x, np.float64)
        if arr.shape != shape:
            raise ValueError(f"RunningStatistics.{what}: expected shape {shape}, got {arr.shape}")
        return arr

    def observe_obs(self, obs: Any) -> None:
        """Add one observation per seed ([n_seeds, obs_dim]): the observations about to be acted
        on in training."""
        obs = self._rows(obs, (self.n_seeds, self.obs_dim), "observe_obs")
        self.obs_mean, self.obs_var, count = merge_moments(
            self.obs_mean, self.obs_var, self.obs_count[:, None], obs, 0.0, 1.0
        )
        self.obs_count = count[:, 0]

    def observe_reward(self, reward: Any, done: Any) -> None:
        """Add one training transition's reward and done flag (termination or truncation) per
        seed ([n_seeds] each)."""
        reward = self._rows(reward, (self.n_seeds,), "observe_reward")
        done = self._rows(done, (self.n_seeds,), "observe_reward")
        self.ret = self.discount * (1.0 - done) * self.ret + reward
        self.ret_mean, self.ret_var, self.ret_count = merge_moments(
            self.ret_mean, self.ret_var, self.ret_count, self.ret, 0.0, 1.0
        )
        self.ret_max = np.maximum(self.ret_max, np.abs(self.ret))

    def obs_std(self) -> np.ndarray:
        """``sqrt(var + 1e-8)`` per seed and coordinate (float64)."""
        return np.sqrt(self.obs_var + VAR_EPS)

    def reward_scale(self) -> np.ndarray:
        """The divisor of the rewards per seed: ``max(sqrt(Var(G) + 1e-8), G_max / g_max)``."""
        return np.maximum(np.sqrt(self.ret_var + VAR_EPS), self.ret_max / self.g_max)

    def device_arrays(self) -> dict[str, np.ndarray]:
        """float32 ``obs_mean`` [S, d], ``obs_std`` [S, d], ``reward_scale`` [S]: the fields of
        :class:`~valuescale.agents.simbav2.Statistics` with a leading seed axis."""
        return {
            "obs_mean": self.obs_mean.astype(np.float32),
            "obs_std": self.obs_std().astype(np.float32),
            "reward_scale": self.reward_scale().astype(np.float32),
        }

    _FIELDS = ("obs_mean", "obs_var", "obs_count", "ret", "ret_mean", "ret_var", "ret_count")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (numpy float64 copies; for checkpoints)."""
        out: dict[str, Any] = {k: getattr(self, k).copy() for k in self._FIELDS}
        out["ret_max"] = self.ret_max.copy()
        out["discount"], out["g_max"] = self.discount, self.g_max
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunningStatistics:
        """Inverse of :meth:`state_dict`."""
        n_seeds, obs_dim = np.asarray(state["obs_mean"]).shape
        out = cls(n_seeds, obs_dim, state["discount"], state["g_max"])
        for k in (*cls._FIELDS, "ret_max"):
            value = np.asarray(state[k], np.float64)
            if value.shape != getattr(out, k).shape:
                raise ValueError(f"RunningStatistics.from_state_dict: {k} has shape {value.shape}")
            setattr(out, k, value.copy())
        return out


class ActionRepeat:
    """An env (``valuescale.envs`` interface) stepped ``repeat`` times per agent step.

    Rewards of the repeated steps are summed; a termination or truncation inside the repeat ends
    the agent step early. The inner env's time limit (simulator steps) stays in force, so an
    episode has ``ceil(max_episode_steps / repeat)`` agent steps (500 for 1000 and 2).
    """

    def __init__(self, env: Any, repeat: int) -> None:
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ValueError(f"ActionRepeat: repeat must be a positive int, got {repeat!r}")
        self.env, self.repeat = env, repeat
        self.obs_dim, self.act_dim = env.obs_dim, env.act_dim
        self.max_episode_steps = math.ceil(env.max_episode_steps / repeat)

    def reset(self) -> np.ndarray:
        return self.env.reset()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated

    def get_state(self) -> dict[str, Any]:
        return self.env.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state)
