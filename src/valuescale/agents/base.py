"""The engine's agent protocol (JAX-free: types and documentation only).

An agent is a module (or package) with the attributes of :class:`Agent`; the engine
(``valuescale.engine``, ``valuescale.device``) reaches it through the registry
(``valuescale.agents.get_agent``) and never imports an agent by name. Every function below works
on ONE seed's state; the engine adds the seed axis with ``jax.vmap`` (``init_seeds`` excepted,
which returns the stacked states) and jits the calls. ``docs/engine-api.md`` states the contract
in full, with the host-side hooks a SimbaV2-like agent adds.

The config class (``Agent.Config``) is a frozen, hashable dataclass in a module that does not
import JAX; each field is one hyperparameter, declared once with ``valuescale.settings.setting``
(type, default, bounds) and a docstring. It must have the three fields of ``GRID_FIELDS`` (a cell's
path: critic width, batch size, learning rate); it may have ``reset_interval`` (gradient steps
between full resets, 0 = never; without it the engine never resets) and ``action_repeat``
(simulator steps per agent step; without it 1: see ``valuescale.config``'s docstring). Its field
names must not clash with ``TrainConfig``'s loop settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

#: Fields every agent config has: the grid's path knobs (``--width``, ``--batch-size``, ``--lr``),
#: recorded as the curves' ``width``, ``batch_size`` and ``lr`` columns.
GRID_FIELDS: tuple[str, ...] = ("critic_width", "batch_size", "lr")

#: Validation metric of each ``td_losses`` key (the engine logs them per seed).
VALIDATION_METRICS: dict[str, str] = {
    "critic_loss": "validation_critic_loss",
    "passive_critic_loss": "passive_validation_critic_loss",
}

State = Any
"""One seed's agent state: a pytree of arrays (the engine checkpoints its leaves)."""
Info = dict[str, Any]
"""Scalars by metric name (float32 under jit)."""


class Agent(Protocol):
    """What the engine needs of an agent (module-level functions; ``cfg`` is an instance of
    ``Config``, passed as a static argument under jit)."""

    NAME: ClassVar[str]
    """Registry name (``--agent``, the curves' ``agent`` column, the run path)."""
    Config: ClassVar[type]
    """The agent's config dataclass (the single home of its hyperparameters)."""

    @staticmethod
    def init(key: Any, obs_dim: int, act_dim: int, cfg: Any) -> State:
        """A freshly initialised state (networks, optimisers, an rng); called again for a reset."""

    @staticmethod
    def init_seeds(keys: Any, obs_dim: int, act_dim: int, cfg: Any) -> State:
        """``init`` of each of ``keys`` [S, 2], stacked on a leading seed axis."""

    @staticmethod
    def act(state: State, obs: Any, key: Any, deterministic: bool = False) -> Any:
        """Action in [-1, 1]^act_dim for ``obs`` [obs_dim] (``deterministic``: the evaluation
        action; a Python bool, static)."""

    @staticmethod
    def update_n(state: State, replay: Any, cfg: Any, n: Any) -> tuple[State, Info]:
        """``n`` gradient updates (``n`` a traced int32 scalar, 0 allowed: the state unchanged
        and zero info), each on its own batch of ``cfg.batch_size`` drawn from ``replay`` with keys
        from the state's rng; info averaged over the ``n`` updates, keys ``train_metrics(cfg)``,
        at least ``critic_loss`` and ``actor_loss`` (a non-finite one marks the seed diverged)."""

    @staticmethod
    def td_losses(state: State, batch: Any, cfg: Any) -> Info:
        """TD losses on ``batch`` without updating (validation): ``critic_loss``, and
        ``passive_critic_loss`` when ``train_metrics(cfg)`` has it."""

    @staticmethod
    def train_metrics(cfg: Any) -> tuple[str, ...]:
        """The keys of ``update_n``'s info, logged every ``log_interval`` env steps."""

    @staticmethod
    def critic_param_count(state: State) -> int:
        """N: parameters of the critic (all heads) in one seed's state."""

    @staticmethod
    def passive_critic_param_count(state: State) -> int:
        """Parameters of the passive critic (0 when there is none)."""


def lazy_attributes(
    package: str, namespace: dict[str, Any], modules: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__`` that load its JAX parts on first
    use (so that importing an agent package does not import JAX): ``modules`` maps each such
    attribute to the submodule of ``package`` that defines it; a loaded attribute is kept in
    ``namespace`` (the package's ``globals()``)."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *modules])

    return __getattr__, __dir__
