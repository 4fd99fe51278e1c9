"""``BROConfig``: every hyperparameter of the BRO agent, each declared once (JAX-free).

The engine CLI's flags, ``run.json``'s config and the workflow schema's ``train`` block derive
from these fields (``valuescale.settings``); their docstrings are the flags' help and the schema's
descriptions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from valuescale.settings import check_fields, setting

CRITIC_HEADS = 2
"""Heads of BRO's double critic (two independently initialised BroNets)."""


@dataclasses.dataclass(frozen=True)
class BROConfig:
    """Hyperparameters of BRO (hashable: passed as a static argument under ``jit``)."""

    critic_width: int = setting(512, low=1)
    """Hidden width W of each critic head (the critic-size knob; N follows from it)."""
    critic_depth: int = setting(2, low=0)
    """Residual blocks of each critic head."""
    actor_width: int = setting(256, low=1)
    """Hidden width of the actor."""
    actor_depth: int = setting(1, low=0)
    """Residual blocks of the actor."""
    n_quantiles: int = setting(100, low=1)
    """Quantiles per critic head (midpoints (k + 0.5) / n_quantiles)."""
    kappa: float = setting(1.0, low=0.0, low_open=True)
    """Huber threshold of the quantile Huber loss."""
    batch_size: int = setting(128, low=1)
    """Transitions per gradient step (B)."""
    lr: float = setting(3e-4, low=0.0, low_open=True)
    """Learning rate eta of actor and critic (AdamW); the temperature has its own."""
    critic_lr: float | None = setting(None, low=0.0, low_open=True)
    """Learning rate of the critic (and passive critic) where it differs from lr (null: lr)."""
    actor_lr: float | None = setting(None, low=0.0, low_open=True)
    """Learning rate of the actor where it differs from lr (null: lr)."""
    temperature_lr: float = setting(3e-4, low=0.0, low_open=True)
    """Adam learning rate of log alpha."""
    temperature_b1: float = setting(0.5, low=0.0, high=1.0)
    """Adam beta1 of the temperature optimiser."""
    weight_decay: float = setting(1e-4, low=0.0)
    """AdamW decoupled weight decay of actor and critic."""
    discount: float = setting(0.99, low=0.0, high=1.0)
    """Discount factor gamma."""
    tau: float = setting(0.005, low=0.0, high=1.0, low_open=True)
    """Polyak rate of the target critic, applied after every critic step."""
    init_temperature: float = setting(1.0, low=0.0, low_open=True)
    """Initial entropy temperature alpha."""
    target_entropy_scale: float = setting(0.5)
    """Target entropy is -target_entropy_scale * action_dim."""
    pessimism: float = setting(0.0)
    """Weight of the head disagreement |q1 - q2| / 2 subtracted from the head mean (0: mean)."""
    reset_interval: int = setting(2_500_000, low=0)
    """Gradient steps between full resets of all networks and optimiser states (0 = never); a
    reset happens every reset_interval / utd env steps."""
    passive_critic: bool = setting(False)
    """Train a passive critic on the main critic's TD targets (never acts); logs
    passive_critic_loss."""
    passive_critic_width: int = setting(512, low=1)
    """Hidden width of the passive critic's heads (same depth and quantiles as the critic)."""

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def critic_learning_rate(self) -> float:
        """The critic's (and passive critic's) learning rate: ``critic_lr``, else ``lr``."""
        return self.lr if self.critic_lr is None else self.critic_lr

    @property
    def actor_learning_rate(self) -> float:
        """The actor's learning rate: ``actor_lr``, else ``lr``."""
        return self.lr if self.actor_lr is None else self.actor_lr

    @property
    def taus(self) -> Any:
        """Quantile midpoints ``(k + 0.5) / n_quantiles``, shape [n_quantiles] (imports JAX)."""
        from valuescale.agents.bro.loss import quantile_taus

        return quantile_taus(self.n_quantiles)
