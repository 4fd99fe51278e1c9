"""Analytic FLOP counts of BRO's networks and of one BRO gradient update.

Counts multiply-accumulates (MACs) of the dense layers only (LayerNorm, activations, the optimiser
and the quantile loss are elementwise and excluded); one MAC = 2 FLOPs. For a dense network with
``M`` MACs per sample, a forward pass costs ``2M`` FLOPs per sample; a backward pass costs ``2M``
for the input gradients plus ``2M`` for the weight gradients.

One BRO update (:func:`valuescale.agents.bro.update`) per sample of the batch:

====================================  ===========================
critic step, TD target                actor fwd ``2 Ma`` + target critic fwd ``2 Mc``
critic step, loss                     critic fwd + bwd ``6 Mc``
actor step                            actor fwd + bwd ``6 Ma`` + critic fwd ``2 Mc`` + critic
                                      bwd to the action (input gradients only) ``2 Mc``
passive critic step (optional)        passive fwd + bwd ``6 Mp``
====================================  ===========================

i.e. ``12 Mc + 8 Ma (+ 6 Mp)`` FLOPs per sample, where ``Mc``/``Mp`` count both critic heads. The
first layer's input gradient is counted although it is not needed (a < 1 % overcount at the
paper's sizes).
"""

from __future__ import annotations

from valuescale.agents.bro import BROConfig
from valuescale.networks.bronet import N_HEADS


def bronet_macs(d_in: int, width: int, depth: int, n_out: int) -> int:
    """Dense-layer MACs per sample of one BroNet (``n_out = 0``: no output layer)."""
    return d_in * width + depth * 2 * width * width + width * n_out


def critic_macs(obs_dim: int, act_dim: int, width: int, depth: int, n_quantiles: int) -> int:
    """MACs per sample of the double critic (both heads)."""
    return N_HEADS * bronet_macs(obs_dim + act_dim, width, depth, n_quantiles)


def actor_macs(obs_dim: int, act_dim: int, width: int, depth: int) -> int:
    """MACs per sample of the actor (trunk plus its mean and log-std heads)."""
    return bronet_macs(obs_dim, width, depth, 2 * act_dim)


def update_flops(obs_dim: int, act_dim: int, cfg: BROConfig) -> int:
    """Dense-layer FLOPs of one BRO update of one seed on a batch of ``cfg.batch_size``."""
    mc = critic_macs(obs_dim, act_dim, cfg.critic_width, cfg.critic_depth, cfg.n_quantiles)
    ma = actor_macs(obs_dim, act_dim, cfg.actor_width, cfg.actor_depth)
    per_sample = 12 * mc + 8 * ma
    if cfg.passive_critic:
        mp = critic_macs(
            obs_dim, act_dim, cfg.passive_critic_width, cfg.critic_depth, cfg.n_quantiles
        )
        per_sample += 6 * mp
    return per_sample * cfg.batch_size


def quantile_loss_elements(cfg: BROConfig) -> int:
    """Pairwise quantile-Huber terms evaluated per update (main critic, both heads)."""
    return N_HEADS * cfg.batch_size * cfg.n_quantiles * cfg.n_quantiles
