"""``TrainConfig``: every setting of one training cell (one env, one hyperparameter set, S seeds).

Importing this module does not import JAX (the CLI parses and validates flags, pins the process to
its cores, and only then imports JAX).

UTD semantics (``utd`` = sigma, gradient updates per env step after the warm-up): the k-th env
step after the warm-up (k = 0, 1, ...) is followed by ``floor((k + 1) * sigma) - floor(k * sigma)``
updates, with sigma read as the exact decimal it is written as (``Fraction(repr(utd))``). For an
integer sigma that is sigma updates every step; sigma = 0.25 gives one update every 4 env steps;
sigma = 1.5 alternates 1 and 2 updates. After T post-warm-up env steps the agent has taken exactly
``floor(T * sigma)`` gradient steps (:meth:`TrainConfig.gradient_steps_after`).

Reset schedule: ``reset_interval`` is in gradient steps, as in the paper (2.5M). Resets are
scheduled in env steps, at every positive multiple of ``round(reset_interval / utd)`` env steps
below ``steps`` (:attr:`TrainConfig.reset_every_env_steps`), which is where the analysis looks for
post-reset dips (multiples of 2.5M/sigma env steps).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

CURVE_COLUMNS: tuple[str, ...] = (
    "env",
    "agent",
    "utd",
    "width",
    "critic_params",
    "batch_size",
    "lr",
    "seed",
    "step",
    "metric",
    "value",
)
"""Columns of the engine's long ``curves.parquet`` format, in order (the analysis reads the same)."""

AGENTS: tuple[str, ...] = ("bro",)
"""Implemented agents."""
RESERVED_AGENTS: tuple[str, ...] = ("simbav2",)
"""Agents with a reserved name that are not implemented yet."""

#: Fields that may differ between a checkpoint and the config that resumes it: they do not change
#: the trajectory up to the checkpoint (``steps`` may be raised to extend a run).
RESUMABLE_CHANGES: tuple[str, ...] = ("steps", "checkpoint_every")


class ConfigError(ValueError):
    """A bad ``TrainConfig`` value; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class TrainConfig:
    """One training cell: environment, agent hyperparameters, seeds and the loop's schedule."""

    env: str
    """Environment name (paper names such as ``cheetah-run``, ``finger-turn``; any dm_control
    suite task as ``<domain>-<task>``; HumanoidBench ids such as ``h1-crawl-v0``)."""
    agent: str = "bro"
    """Agent: ``bro`` (``simbav2`` is reserved for later)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds trained together in one process (leading seed axis); each a distinct int >= 0."""
    utd: float = 1.0
    """UTD ratio sigma: gradient updates per env step (fractional: one update every 1/sigma
    steps; see the module docstring)."""
    steps: int = 1_000_000
    """Environment steps per seed (warm-up included)."""
    critic_width: int = 512
    """Hidden width W of each critic head (the critic-size knob; N follows from it)."""
    critic_depth: int = 2
    """Residual blocks of each critic head."""
    actor_width: int = 256
    """Hidden width of the actor."""
    actor_depth: int = 1
    """Residual blocks of the actor."""
    batch_size: int = 128
    """Transitions per gradient step (B)."""
    lr: float = 3e-4
    """Learning rate eta of actor and critic (AdamW); the temperature keeps BRO's 3e-4."""
    weight_decay: float = 1e-4
    """AdamW weight decay of actor and critic."""
    discount: float = 0.99
    """Discount gamma."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    n_quantiles: int = 100
    """Quantiles per critic head."""
    init_temperature: float = 1.0
    """Initial entropy temperature alpha."""
    target_entropy_scale: float = 0.5
    """Target entropy is ``-target_entropy_scale * act_dim``."""
    reset_interval: int = 2_500_000
    """Gradient steps between full resets of all networks and optimiser states (0: never)."""
    replay_size: int = 1_000_000
    """Replay capacity per seed (transitions); at least ``batch_size``."""
    warmup_steps: int = 2_500
    """Env steps with uniform random actions and no training at the start."""
    eval_interval: int = 25_000
    """Env steps between deterministic evaluations (one more at the end)."""
    eval_episodes: int = 5
    """Episodes per evaluation (deterministic policy, separate eval envs)."""
    validation: bool = False
    """Fill a held-out replay from a second env (different seed) stepped with the same policy every
    ``validation_every`` env steps, and log ``validation_critic_loss`` on one batch from it."""
    validation_every: int = 10
    """k: env steps between validation env steps / validation losses."""
    passive_critic: bool = False
    """Train a passive critic on the main critic's TD targets; log ``passive_critic_loss``."""
    passive_critic_width: int = 512
    """Hidden width of the passive critic's heads."""
    checkpoint_every: int = 50_000
    """Env steps between checkpoints in the output dir (0: never)."""
    log_interval: int = 1_000
    """Env steps over which training metrics are averaged into one logged value."""
    max_episode_steps: int = 1_000
    """Episode length (time limit, a truncation that is bootstrapped through)."""
    _debug_nan_reward: tuple[int, int] | None = field(default=None, repr=False)
    """Test hook: ``(seed, step)`` replaces that seed's reward at that env step with NaN."""

    def __post_init__(self) -> None:
        _check_str(self, "env")
        _check_str(self, "agent")
        if self.agent in RESERVED_AGENTS:
            raise ConfigError("agent", f"{self.agent!r} is reserved but not implemented yet")
        if self.agent not in AGENTS:
            raise ConfigError("agent", f"unknown agent {self.agent!r}; valid: {', '.join(AGENTS)}")
        seeds = self.seeds
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = (seeds,)
        if not isinstance(seeds, tuple | list) or len(seeds) == 0:
            raise ConfigError("seeds", f"need a non-empty sequence of ints, got {self.seeds!r}")
        for s in seeds:
            if not _is_int(s) or s < 0 or s >= 2**31:
                raise ConfigError("seeds", f"each seed must be an int in [0, 2**31), got {s!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError("seeds", f"seeds must be distinct, got {list(seeds)}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))

        _check_number(self, "utd", low=0.0, low_open=True)
        if _is_int(self.utd):
            object.__setattr__(self, "utd", float(self.utd))
        for name in (
            "steps",
            "critic_width",
            "critic_depth",
            "actor_width",
            "actor_depth",
            "batch_size",
            "n_quantiles",
            "replay_size",
            "eval_interval",
            "eval_episodes",
            "validation_every",
            "passive_critic_width",
            "log_interval",
            "max_episode_steps",
        ):
            _check_int(self, name, 1)
        for name in ("reset_interval", "warmup_steps", "checkpoint_every"):
            _check_int(self, name, 0)
        _check_number(self, "lr", low=0.0, low_open=True)
        _check_number(self, "weight_decay", low=0.0)
        _check_number(self, "discount", low=0.0, high=1.0)
        _check_number(self, "tau", low=0.0, high=1.0, low_open=True)
        _check_number(self, "init_temperature", low=0.0, low_open=True)
        _check_number(self, "target_entropy_scale")
        for name in ("validation", "passive_critic"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be a bool, got {getattr(self, name)!r}")
        if self.replay_size < self.batch_size:
            raise ConfigError(
                "replay_size",
                f"replay_size ({self.replay_size}) must be >= batch_size ({self.batch_size})",
            )
        if self.reset_interval > 0 and self.reset_every_env_steps < 1:
            raise ConfigError(
                "reset_interval",
                f"reset_interval ({self.reset_interval}) / utd ({self.utd}) is below one env step",
            )
        if self._debug_nan_reward is not None:
            seed, step = self._debug_nan_reward
            if seed not in self.seeds or not _is_int(step):
                raise ConfigError("_debug_nan_reward", f"bad (seed, step) {self._debug_nan_reward}")
        try:
            from valuescale.envs import check_env_name

            check_env_name(self.env)
        except ValueError as e:
            raise ConfigError("env", str(e)) from None

    # ----------------------------------------------------------------- derived values

    @property
    def width(self) -> int:
        """The paper's width (the critic's)."""
        return self.critic_width

    @property
    def utd_fraction(self) -> Fraction:
        """sigma as an exact fraction of its decimal representation."""
        return Fraction(repr(float(self.utd)))

    def updates_at(self, k: int) -> int:
        """Gradient updates after the k-th post-warm-up env step (k >= 0)."""
        sigma = self.utd_fraction
        return math.floor((k + 1) * sigma) - math.floor(k * sigma)

    def gradient_steps_after(self, env_steps_after_warmup: int) -> int:
        """Total gradient steps after that many post-warm-up env steps."""
        return math.floor(max(0, env_steps_after_warmup) * self.utd_fraction)

    @property
    def reset_every_env_steps(self) -> int:
        """Env steps between resets, ``round(reset_interval / utd)`` (0: no resets)."""
        if self.reset_interval == 0:
            return 0
        return int(round(Fraction(self.reset_interval) / self.utd_fraction))

    def reset_steps(self) -> list[int]:
        """Env steps (< steps) at which all networks and optimiser states are re-initialised."""
        every = self.reset_every_env_steps
        if every == 0:
            return []
        return list(range(every, self.steps, every))

    def eval_steps(self) -> list[int]:
        """Env steps after which a deterministic evaluation runs (multiples and the end)."""
        out = list(range(self.eval_interval, self.steps + 1, self.eval_interval))
        if not out or out[-1] != self.steps:
            out.append(self.steps)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all public fields (the resolved config)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["seeds"] = list(self.seeds)
        out.pop("_debug_nan_reward")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(unknown[0], f"unknown TrainConfig key(s): {', '.join(unknown)}")
        data = dict(data)
        if "seeds" in data:
            data["seeds"] = tuple(data["seeds"])
        return cls(**data)

    def bro_config(self) -> Any:
        """The agent's ``BROConfig`` (imports JAX)."""
        from valuescale.agents.bro import BROConfig

        return BROConfig(
            critic_width=self.critic_width,
            critic_depth=self.critic_depth,
            actor_width=self.actor_width,
            actor_depth=self.actor_depth,
            n_quantiles=self.n_quantiles,
            batch_size=self.batch_size,
            critic_lr=self.lr,
            actor_lr=self.lr,
            weight_decay=self.weight_decay,
            discount=self.discount,
            tau=self.tau,
            init_temperature=self.init_temperature,
            target_entropy_scale=self.target_entropy_scale,
            passive_critic=self.passive_critic,
            passive_critic_width=self.passive_critic_width,
        )


def field_docs() -> dict[str, str]:
    """``{field: docstring}`` of ``TrainConfig``, read from this module's source (the CLI's help)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, following in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, str) or not value:
        raise ConfigError(name, f"must be a non-empty string, got {value!r}")


def _check_int(cfg: TrainConfig, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if not _is_int(value) or value < low:
        raise ConfigError(name, f"must be an int >= {low}, got {value!r}")


def _check_number(
    cfg: TrainConfig,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        what = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
        raise ConfigError(name, f"must be {what}, got {value!r}")
