"""SimbaV2's hyperparameters: :class:`SimbaV2Config`, the single home of each of them.

Defaults are the published ones (method.md section 1, "SimbaV2"; Lee et al. 2025), the same on
DMC and HumanoidBench except the number of critic heads, which follows the environment
(:func:`critic_heads_for_env`, resolved by :meth:`SimbaV2Config.for_env`).
"""

from __future__ import annotations

import dataclasses

from valuescale.settings import ConfigError, check_fields, setting


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

    critic_width: int = setting(512, low=1)
    """Residual-stream width W of each critic head (the critic-size knob; blocks are 4W wide
    inside)."""
    critic_depth: int = setting(2, low=0)
    """Number of LERP blocks L of the critic (not swept in the paper)."""
    critic_heads: int | None = setting(None, low=1, high=2)
    """Independent critic heads H: 1 (DMC) or 2 (HumanoidBench, clipped double Q); null: by
    environment (resolved by for_env, which the engine's bind calls)."""
    actor_width: int = setting(128, low=1)
    """Residual-stream width of the actor."""
    actor_depth: int = setting(1, low=0)
    """Number of LERP blocks of the actor."""
    n_atoms: int = setting(101, low=2)
    """Atoms K of the categorical critic, linspace(v_min, v_max, K)."""
    v_min: float = setting(-5.0)
    """Lowest atom (in scaled-reward return units)."""
    v_max: float = setting(5.0)
    """Highest atom."""
    c_shift: float = setting(3.0)
    """Constant appended to the input before its l2 projection (keeps the input's norm)."""
    batch_size: int = setting(256, low=1)
    """Transitions per gradient step (B), resampled for every update."""
    lr: float = setting(1e-4, low=0.0, low_open=True)
    """Initial Adam learning rate eta of actor and critic (decays linearly, lr_end_ratio)."""
    critic_lr: float | None = setting(None, low=0.0, low_open=True)
    """Initial learning rate of the critic (and passive critic) where it differs from lr
    (null: lr)."""
    actor_lr: float | None = setting(None, low=0.0, low_open=True)
    """Initial learning rate of the actor where it differs from lr (null: lr)."""
    temperature_lr: float = setting(1e-4, low=0.0, low_open=True)
    """Initial Adam learning rate of log alpha."""
    lr_end_ratio: float = setting(0.5, low=0.0, low_open=True)
    """Every learning rate decays linearly from its initial value to lr_end_ratio times it over
    lr_decay_updates updates (the authors' code: 1e-4 -> 5e-5), then stays there."""
    lr_decay_updates: int | None = setting(None, low=1)
    """Gradient updates over which the learning rates decay; null: the run's planned updates
    (agent steps after the warm-up x utd), filled in by the engine (bind)."""
    discount: float = setting(0.99, low=0.0, high=1.0)
    """Discount gamma (also of the reward scaler's running return). The authors derive it from
    the episode length (horizon_discount): 0.99 for 500-agent-step episodes."""
    tau: float = setting(0.005, low=0.0, high=1.0, low_open=True)
    """Polyak rate of the target critic, applied after every critic step (all critic params)."""
    init_temperature: float = setting(0.01, low=0.0, low_open=True)
    """Initial entropy temperature alpha."""
    target_entropy_scale: float = setting(0.5)
    """Target entropy is -target_entropy_scale * action_dim."""
    g_max: float = setting(5.0, low=0.0, low_open=True)
    """Reward scaling: rewards are divided by max(std(G), max|G| / g_max) (G: running discounted
    return), which keeps returns within the atoms' support."""
    action_repeat: int = setting(2, low=1)
    """Simulator steps per agent step (rewards summed; the engine wraps every env). utd counts
    updates per agent step; the loop's step settings and the logged steps are simulator steps
    (multiples of action_repeat)."""
    passive_critic: bool = setting(False)
    """Train a passive critic on the main critic's target distributions (never acts); logs
    passive_critic_loss."""
    passive_critic_width: int = setting(512, low=1)
    """Width of the passive critic's heads (same depth, heads and atoms as the critic)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.v_min < self.v_max:
            raise ConfigError(
                "v_min", f"v_min ({self.v_min!r}) must be below v_max ({self.v_max!r})"
            )

    @property
    def critic_learning_rate(self) -> float:
        """The critic's (and passive critic's) initial learning rate: critic_lr, else lr."""
        return self.lr if self.critic_lr is None else self.critic_lr

    @property
    def actor_learning_rate(self) -> float:
        """The actor's initial learning rate: actor_lr, else lr."""
        return self.lr if self.actor_lr is None else self.actor_lr

    def for_env(self, env_name: str) -> SimbaV2Config:
        """This config with ``critic_heads`` resolved for ``env_name`` when it is ``None``."""
        if self.critic_heads is not None:
            return self
        return dataclasses.replace(self, critic_heads=critic_heads_for_env(env_name))
