"""Flax networks of the agents: BroNet, the double quantile critic and the tanh-Gaussian actor."""

from valuescale.networks.bronet import (
    N_HEADS,
    BroNet,
    QuantileCritic,
    apply_double_critic,
    bro_critic_param_formula,
    init_double_critic,
    param_count,
)
from valuescale.networks.policy import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    TanhGaussianPolicy,
    sample_tanh_gaussian,
    tanh_gaussian_log_prob,
)

__all__ = [
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "N_HEADS",
    "BroNet",
    "QuantileCritic",
    "TanhGaussianPolicy",
    "apply_double_critic",
    "bro_critic_param_formula",
    "init_double_critic",
    "param_count",
    "sample_tanh_gaussian",
    "tanh_gaussian_log_prob",
]
