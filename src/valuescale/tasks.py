"""The paper's task table (Fu, Rybkin et al. 2025, Table 2): suite, J_min, J_max, delta per env.

``J_min`` / ``J_max`` bound the 20 return thresholds of the analysis; ``delta`` is the
FLOP-equivalent cost of one environment step used in the budget F = C_J + delta * D_J.
Names are the paper's (``finger-turn`` is dm_control's ``finger/turn_hard``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """Analysis defaults of one environment."""

    env: str
    suite: str
    j_min: float
    j_max: float
    delta: float


def _spec(env: str, suite: str, j_min: float, j_max: float, delta: float) -> TaskSpec:
    return TaskSpec(env, suite, float(j_min), float(j_max), float(delta))


TASKS: dict[str, TaskSpec] = {
    t.env: t
    for t in [
        _spec("h1-crawl-v0", "humanoidbench", 450, 780, 2e12),
        _spec("h1-pole-v0", "humanoidbench", 300, 680, 5e11),
        _spec("h1-stand-v0", "humanoidbench", 200, 660, 5e11),
        _spec("humanoid-stand", "dmc", 300, 850, 5e10),
        _spec("acrobot-swingup", "dmc-medium", 150, 400, 1e11),
        _spec("cheetah-run", "dmc-medium", 400, 750, 1e11),
        _spec("finger-turn", "dmc-medium", 400, 900, 1e11),
        _spec("fish-swim", "dmc-medium", 200, 710, 1e11),
        _spec("hopper-hop", "dmc-medium", 150, 320, 1e11),
        _spec("quadruped-run", "dmc-medium", 200, 790, 1e11),
        _spec("walker-run", "dmc-medium", 350, 730, 1e11),
        _spec("dog-run", "dmc-hard", 100, 270, 1e11),
        _spec("dog-trot", "dmc-hard", 100, 580, 1e11),
        _spec("dog-stand", "dmc-hard", 100, 910, 1e11),
        _spec("dog-walk", "dmc-hard", 100, 860, 1e11),
        _spec("humanoid-run", "dmc-hard", 75, 190, 1e11),
        _spec("humanoid-walk", "dmc-hard", 200, 650, 1e11),
    ]
}

# Default cost of an environment step for envs outside the paper's table.
DEFAULT_DELTA = 1e11


def task_spec(env: str) -> TaskSpec | None:
    """The paper's analysis defaults for ``env``, or ``None`` if it is not in Table 2."""
    return TASKS.get(env)
