"""SimbaV2's hyperparameters: :class:`SimbaV2Config`, the single home of each of them.

Defaults are the published ones (method.md section 1, "SimbaV2"; Lee et al. 2025), the same on
DMC and HumanoidBench except the number of critic heads, which follows the environment
(:func:`critic_heads_for_env`, resolved by :meth:`SimbaV2Config.for_env`).
"""

from __future__ import annotations

import dataclasses
import math


def critic_heads_for_env(env_name: str) -> int:
    """Critic heads SimbaV2 uses on ``env_name``: 2 on episodic suites (HumanoidBench: falls
    terminate), 1 on DMC (no termination). The authors' ``critic_use_cdq = env.episodic``."""
    from valuescale.envs import is_humanoid_bench

    return 2 if is_humanoid_bench(env_name) else 1


def horizon_discount(episode_agent_steps: int) -> float:
    """SimbaV2's discount heuristic ``clip((T/5 - 1) / (T/5), 0.95, 0.995)`` for an episode of
    ``T`` agent steps (T = 1000 / action_repeat = 500 on DMC and HumanoidBench: 0.99)."""
    if episode_agent_steps < 1:
        raise ValueError(f"horizon_discount: T must be >= 1, got {episode_agent_steps!r}")
    h = episode_agent_steps / 5.0
    return float(min(max((h - 1.0) / h, 0.95), 0.995))


@dataclasses.dataclass(frozen=True)
class SimbaV2Config:
    """Hyperparameters of SimbaV2 (hashable: passed as a static argument under ``jit``)."""

    critic_width: int = 512
    """Residual-stream width W of each critic head (the paper's critic-size knob; blocks are 4W
    wide inside)."""
    critic_depth: int = 2
    """Number of LERP blocks L of the critic (not swept in the paper)."""
    critic_heads: int | None = None
    """Independent critic heads H: 1 (DMC) or 2 (HumanoidBench, clipped double Q). ``None``
    means "by environment": resolve with :meth:`for_env` before :func:`init`."""
    actor_width: int = 128
    """Residual-stream width of the actor."""
    actor_depth: int = 1
    """Number of LERP blocks of the actor."""
    n_atoms: int = 101
    """Atoms K of the categorical critic, ``linspace(v_min, v_max, K)``."""
    v_min: float = -5.0
    """Lowest atom (in scaled-reward return units)."""
    v_max: float = 5.0
    """Highest atom."""
    c_shift: float = 3.0
    """Constant appended to the input before its l2 projection (keeps the input's norm)."""
    batch_size: int = 256
    """Transitions per gradient step (B), resampled for every update."""
    critic_lr: float = 1e-4
    """Initial Adam learning rate of the critic (and of the passive critic)."""
    actor_lr: float = 1e-4
    """Initial Adam learning rate of the actor."""
    temperature_lr: float = 1e-4
    """Initial Adam learning rate of log alpha."""
    lr_end_ratio: float = 0.5
    """Every learning rate decays linearly from its initial value to ``lr_end_ratio`` times it
    over ``lr_decay_updates`` updates (the authors' code: 1e-4 -> 5e-5), then stays there."""
    lr_decay_updates: int = 1_000_000
    """Gradient updates over which the learning rates decay: the run's planned updates
    (agent steps x updates per agent step). The engine sets it from its budget."""
    discount: float = 0.99
    """Discount gamma (also of the reward scaler's running return). The authors derive it from
    the episode length with :func:`horizon_discount`: 0.99 for 500-agent-step episodes."""
    tau: float = 0.005
    """Polyak rate of the target critic, applied after every critic step (all critic params)."""
    init_temperature: float = 0.01
    """Initial alpha."""
    target_entropy_scale: float = 0.5
    """Target entropy is ``-target_entropy_scale * act_dim``."""
    g_max: float = 5.0
    """Reward scaling: rewards are divided by ``max(std(G), max|G| / g_max)`` (G: running
    discounted return), which keeps returns within the atoms' support."""
    action_repeat: int = 2
    """Simulator steps per agent step (rewards summed); the 1000-sim-step time limit applies
    before the repeat (500 agent steps). UTD is counted per agent step."""
    passive_critic: bool = False
    """Also train a passive critic on the main critic's target distributions (instrumentation)."""
    passive_critic_width: int = 512
    """Width of the passive critic's heads (same depth, heads and atoms as the critic)."""

    def __post_init__(self) -> None:
        positive_ints = (
            "critic_width",
            "actor_width",
            "batch_size",
            "lr_decay_updates",
            "action_repeat",
            "passive_critic_width",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SimbaV2Config.{name} must be a positive int, got {value!r}")
        for name in ("critic_depth", "actor_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SimbaV2Config.{name} must be a non-negative int, got {value!r}")
        heads = self.critic_heads
        if heads is not None and (isinstance(heads, bool) or heads not in (1, 2)):
            raise ValueError(f"SimbaV2Config.critic_heads must be 1, 2 or None, got {heads!r}")
        if not isinstance(self.n_atoms, int) or isinstance(self.n_atoms, bool) or self.n_atoms < 2:
            raise ValueError(f"SimbaV2Config.n_atoms must be an int >= 2, got {self.n_atoms!r}")
        positive = (
            "critic_lr",
            "actor_lr",
            "temperature_lr",
            "init_temperature",
            "g_max",
            "lr_end_ratio",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"SimbaV2Config.{name} must be a finite number > 0, got {value!r}")
        for name in ("v_min", "v_max", "c_shift", "target_entropy_scale"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"SimbaV2Config.{name} must be a finite number, got {value!r}")
        if not self.v_min < self.v_max:
            raise ValueError(
                f"SimbaV2Config: v_min ({self.v_min!r}) must be below v_max ({self.v_max!r})"
            )
        for name in ("discount", "tau"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"SimbaV2Config.{name} must be in [0, 1], got {value!r}")

    def for_env(self, env_name: str) -> SimbaV2Config:
        """This config with ``critic_heads`` resolved for ``env_name`` when it is ``None``."""
        if self.critic_heads is not None:
            return self
        return dataclasses.replace(self, critic_heads=critic_heads_for_env(env_name))
