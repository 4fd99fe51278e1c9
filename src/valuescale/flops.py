"""Analytic FLOP counts of the agents' networks and of one gradient update (BRO and SimbaV2).

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

One SimbaV2 update (:func:`valuescale.agents.simbav2.update`) has the same passes (actor step on
the current critic, TD target from the updated actor and the target critic, critic step, optional
passive critic), so the same ``12 Mc + 8 Ma (+ 6 Mp)`` with SimbaV2's MACs: per critic head the
embedder ``(d+1) W``, ``8 W^2`` per LERP block (``W -> 4W -> W``) and the head ``W^2 + W K``;
the actor's two heads each ``Wa^2 + Wa |A|``. For both networks the MACs per sample equal the
number of kernel weights (each weight is used once per sample).
"""

from __future__ import annotations

from typing import Any

from valuescale.agents.bro.config import CRITIC_HEADS as N_HEADS
from valuescale.agents.bro.config import BROConfig
from valuescale.agents.simbav2.config import SimbaV2Config


def bronet_macs(d_in: int, width: int, depth: int, n_out: int) -> int:
    """Dense-layer MACs per sample of one BroNet (``n_out = 0``: no output layer)."""
    return d_in * width + depth * 2 * width * width + width * n_out


def critic_macs(obs_dim: int, act_dim: int, width: int, depth: int, n_quantiles: int) -> int:
    """MACs per sample of the double critic (both heads)."""
    return N_HEADS * bronet_macs(obs_dim + act_dim, width, depth, n_quantiles)


def actor_macs(obs_dim: int, act_dim: int, width: int, depth: int) -> int:
    """MACs per sample of the actor (trunk plus its mean and log-std heads)."""
    return bronet_macs(obs_dim, width, depth, 2 * act_dim)


def simbav2_critic_macs(d_in: int, width: int, depth: int, n_atoms: int, n_heads: int) -> int:
    """MACs per sample of SimbaV2's categorical critic (all ``n_heads`` heads; ``d_in`` = obs +
    act): embedder, LERP blocks and head."""
    per_head = (d_in + 1) * width + depth * 8 * width * width + width * width + width * n_atoms
    return n_heads * per_head


def simbav2_actor_macs(obs_dim: int, act_dim: int, width: int, depth: int) -> int:
    """MACs per sample of SimbaV2's actor (embedder, blocks, mean and log-std heads)."""
    return (obs_dim + 1) * width + depth * 8 * width * width + 2 * (width * width + width * act_dim)


def _update_flops(mc: int, ma: int, mp: int, batch_size: int) -> int:
    """``(12 Mc + 8 Ma + 6 Mp) * B``: the passes of one update (module docstring)."""
    return (12 * mc + 8 * ma + 6 * mp) * batch_size


def update_flops(obs_dim: int, act_dim: int, cfg: Any) -> int:
    """Dense-layer FLOPs of one update of one seed on a batch of ``cfg.batch_size`` (``cfg``: a
    ``BROConfig`` or a ``SimbaV2Config`` with ``critic_heads`` resolved)."""
    if isinstance(cfg, BROConfig):
        mc = critic_macs(obs_dim, act_dim, cfg.critic_width, cfg.critic_depth, cfg.n_quantiles)
        ma = actor_macs(obs_dim, act_dim, cfg.actor_width, cfg.actor_depth)
        mp = 0
        if cfg.passive_critic:
            mp = critic_macs(
                obs_dim, act_dim, cfg.passive_critic_width, cfg.critic_depth, cfg.n_quantiles
            )
        return _update_flops(mc, ma, mp, cfg.batch_size)
    if isinstance(cfg, SimbaV2Config):
        if cfg.critic_heads is None:
            raise ValueError("update_flops: resolve SimbaV2Config.critic_heads first (for_env)")
        d_in, heads = obs_dim + act_dim, cfg.critic_heads
        mc = simbav2_critic_macs(d_in, cfg.critic_width, cfg.critic_depth, cfg.n_atoms, heads)
        ma = simbav2_actor_macs(obs_dim, act_dim, cfg.actor_width, cfg.actor_depth)
        mp = 0
        if cfg.passive_critic:
            mp = simbav2_critic_macs(
                d_in, cfg.passive_critic_width, cfg.critic_depth, cfg.n_atoms, heads
            )
        return _update_flops(mc, ma, mp, cfg.batch_size)
    raise TypeError(f"update_flops: no FLOP count for a {type(cfg).__name__}")


def quantile_loss_elements(cfg: BROConfig) -> int:
    """Pairwise quantile-Huber terms evaluated per update (main critic, both heads)."""
    return N_HEADS * cfg.batch_size * cfg.n_quantiles * cfg.n_quantiles
