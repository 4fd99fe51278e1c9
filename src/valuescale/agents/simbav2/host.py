"""Host-side pieces of SimbaV2: float64 running statistics and the engine's host hooks.

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

import dataclasses
from typing import Any

import numpy as np

from valuescale.envs import ActionRepeat as ActionRepeat  # its old home; now valuescale.envs

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


# ----------------------------------------------------------------------------- the engine's hooks
# (docs/engine-api.md, "Optional hooks"): the statistics above as a dict of float64 arrays
# (``RunningStatistics.state_dict``), checkpointed by the engine as they are.


def bind(cfg: Any, run: Any) -> Any:
    """The config for one run (``run``: the ``TrainConfig``): critic heads for its env
    (:meth:`SimbaV2Config.for_env`) and, when ``lr_decay_updates`` is null, the run's planned
    gradient updates (``run.total_updates``, at least 1) as the learning rates' decay length."""
    cfg = cfg.for_env(run.env)
    if cfg.lr_decay_updates is None:
        cfg = dataclasses.replace(cfg, lr_decay_updates=max(1, int(run.total_updates)))
    return cfg


def host_init(cfg: Any, n_seeds: int, obs_dim: int) -> dict[str, Any]:
    """Fresh statistics of ``n_seeds`` seeds (mean 0, variance 1, count 1e-4; no return yet)."""
    return RunningStatistics(n_seeds, obs_dim, cfg.discount, cfg.g_max).state_dict()


def host_observe(cfg: Any, h: dict[str, Any], obs: np.ndarray) -> dict[str, Any]:
    """One observation per seed about to be acted on in training (``observe_obs``)."""
    stats = RunningStatistics.from_state_dict(h)
    stats.observe_obs(obs)
    return stats.state_dict()


def host_reward(
    cfg: Any, h: dict[str, Any], reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray
) -> dict[str, Any]:
    """One training agent step's reward per seed; ``done`` = terminated or truncated resets the
    running return (``observe_reward``)."""
    stats = RunningStatistics.from_state_dict(h)
    stats.observe_reward(reward, np.logical_or(terminated, truncated))
    return stats.state_dict()


def host_device(cfg: Any, h: dict[str, Any]) -> dict[str, np.ndarray]:
    """float32 ``obs_mean``, ``obs_std`` [S, d] and ``reward_scale`` [S] for ``with_stats``."""
    return RunningStatistics.from_state_dict(h).device_arrays()
