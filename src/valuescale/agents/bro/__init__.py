"""BRO (Nauman et al. 2024), the engine's primary agent: ``valuescale.agents.base.Agent``.

Importing this package does not import JAX: ``BROConfig`` (``config``) is loaded at once, the
JAX parts on first use (``agent``: state, init, act, update, update_n, td_losses, parameter
counts; ``loss``: the quantile Huber loss and the other building blocks), so that
``from valuescale.agents import bro; bro.update_n(...)`` works as one module.
"""

from __future__ import annotations

from valuescale.agents.base import lazy_attributes
from valuescale.agents.bro.config import BROConfig

NAME = "bro"
Config = BROConfig

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "BROState",
            "INIT_COMPILER_OPTIONS",
            "TRAIN_METRICS",
            "act",
            "critic_param_count",
            "init",
            "init_seeds",
            "passive_critic_param_count",
            "td_losses",
            "train_metrics",
            "update",
            "update_n",
        ),
        "agent",
    ),
    **dict.fromkeys(
        (
            "head_mean",
            "polyak_update",
            "quantile_huber_loss",
            "quantile_huber_loss_reference",
            "quantile_taus",
        ),
        "loss",
    ),
}


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


__all__ = ["NAME", "BROConfig", "Config", *_LAZY]
