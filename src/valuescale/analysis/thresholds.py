"""Return thresholds J per env (method.md section 3.2).

Twenty thresholds are spaced linearly from J_min to J_max (both included) per env.

* **J_max** (the authors' rule): among the configurations of an env, take the best run per (σ, N)
  (the highest final isotonic return over batch sizes and learning rates); J_max is 0.95 x the 20th
  percentile of those final returns (the return that 80 % of them reach, with a margin), floored to
  a multiple of 10. A per-env override replaces the rule (e.g. the paper's Table 2 values, see
  :func:`paper_j_max`).
* **J_min** comes from the paper's task table (:mod:`valuescale.tasks`), or a per-env override.
  For an env outside the table the fallback rule is the 10th percentile of the final isotonic returns
  of all its configurations, floored to a multiple of 10.

The "final isotonic return" of a configuration is the last value of the isotonic regression of its
seed-mean return, i.e. its best smoothed level within the run.

Thresholds of a study (:func:`study_thresholds`, table ``thresholds.csv``: env, agent,
threshold_idx, threshold) are set per env over the curves of every agent, except that an agent with
its own settings (config ``analysis.thresholds.per_agent``) gets thresholds from its own curves:
e.g. the authors' SimbaV2 fits use the unrounded J_max of their BRO data rule (h1-crawl 788.887,
h1-stand 657.000: ``j_max: {env: value}``) rather than the rounded Table 2 values, or a study can
give an agent the data rule on its own curves, unrounded (``j_max_rule: data``, ``round_to:
null``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from valuescale.analysis.preprocess import Curve
from valuescale.tasks import TASKS, task_spec

N_THRESHOLDS = 20
J_MAX_PERCENTILE = 20.0
J_MAX_FACTOR = 0.95
J_MIN_FALLBACK_PERCENTILE = 10.0
ROUND_TO = 10.0


def final_returns(curves: Sequence[Curve]) -> pd.DataFrame:
    """Per configuration: its key columns, ``final_step`` and ``final_return`` (isotonic, last)."""
    rows = [
        {
            **curve.key,
            "final_step": int(curve.steps[-1]),
            "final_return": float(curve.isotonic()[-1]),
        }
        for curve in curves
        if len(curve.steps)
    ]
    return pd.DataFrame(rows)


def _floor(x: float, quantum: float | None) -> float:
    """``x`` floored to a multiple of ``quantum`` (``x`` itself when quantum is None)."""
    if quantum is None:
        return float(x)
    return float(np.floor(x / quantum) * quantum)


def paper_j_max() -> dict[str, float]:
    """The paper's J_max per env (Table 2), usable as the ``j_max`` override."""
    return {env: spec.j_max for env, spec in TASKS.items()}


def compute_thresholds(
    curves: Sequence[Curve],
    n_thresholds: int = N_THRESHOLDS,
    j_min: Mapping[str, float] | None = None,
    j_max: Mapping[str, float] | None = None,
    by: Sequence[str] = ("env",),
    percentile: float = J_MAX_PERCENTILE,
    factor: float = J_MAX_FACTOR,
    round_to: float | None = ROUND_TO,
    fallback_percentile: float = J_MIN_FALLBACK_PERCENTILE,
) -> pd.DataFrame:
    """Thresholds per env (or per ``by`` group) from preprocessed curves.

    Args:
        curves: preprocessed configurations (:func:`valuescale.analysis.preprocess.preprocess`).
        n_thresholds: number of thresholds (20 in the paper); at least 2.
        j_min: env -> J_min overrides (default: the paper's table, then the fallback rule).
        j_max: env -> J_max overrides (default: the data rule).
        by: grouping columns, ``env`` first; e.g. ``("env", "agent")`` for separate thresholds
            per agent.
        percentile, factor, round_to: the J_max rule's constants (20, 0.95, 10); ``round_to``
            None leaves the data rules' values unrounded.
        fallback_percentile: percentile of all final returns used as J_min for envs outside the
            paper's table (10).

    Returns:
        Tidy table with columns ``*by, threshold_idx, threshold`` (threshold_idx 0..n-1, increasing
        thresholds; the last one is J_max).

    Raises:
        ValueError: no curves, ``by`` does not start with ``env``, fewer than 2 thresholds, or
            J_min >= J_max for a group (naming the env and both values).
    """
    by = list(by)
    if not by or by[0] != "env":
        raise ValueError(f"compute_thresholds: 'by' must start with 'env', got {by}")
    if n_thresholds < 2:
        raise ValueError(f"compute_thresholds: n_thresholds must be >= 2, got {n_thresholds}")
    finals = final_returns(curves)
    if finals.empty:
        raise ValueError("compute_thresholds: no curves")
    missing = [c for c in by if c not in finals.columns]
    if missing:
        raise ValueError(f"compute_thresholds: curves lack the grouping column(s) {missing}")
    j_min = {} if j_min is None else dict(j_min)
    j_max = {} if j_max is None else dict(j_max)

    frames = []
    for group_values, group in finals.groupby(by, dropna=False, sort=True):
        env = str(group_values[0])
        if env in j_max:
            top = float(j_max[env])
        else:
            best = group.groupby(["utd", "critic_params"], dropna=False)["final_return"].max()
            top = _floor(factor * float(np.percentile(best.to_numpy(), percentile)), round_to)
        spec = task_spec(env)
        if env in j_min:
            bottom = float(j_min[env])
        elif spec is not None:
            bottom = spec.j_min
        else:
            bottom = _floor(
                float(np.percentile(group["final_return"].to_numpy(), fallback_percentile)),
                round_to,
            )
        if not bottom < top:
            label = ", ".join(f"{c}={v}" for c, v in zip(by, group_values, strict=True))
            raise ValueError(
                f"compute_thresholds: {label}: J_min ({bottom:g}) must be below J_max ({top:g})"
            )
        frame = pd.DataFrame(
            {
                "threshold_idx": np.arange(n_thresholds, dtype=np.int64),
                "threshold": np.linspace(bottom, top, n_thresholds),
            }
        )
        for column, value in reversed(list(zip(by, group_values, strict=True))):
            frame.insert(0, column, value)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


#: Keys of ``analysis.thresholds`` an agent's own settings may override (``per_agent``).
AGENT_OVERRIDES: tuple[str, ...] = (
    "j_max",
    "j_max_rule",
    "j_max_percentile",
    "j_max_factor",
    "round_to",
)


def study_thresholds(
    curves: Sequence[Curve],
    spec: Mapping[str, Any],
    j_min: Mapping[str, float] | None = None,
    j_max: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]], list[str]]:
    """Thresholds of every (env, agent) of a study, and the pairs that cannot have them.

    Args:
        curves: preprocessed configurations of every agent.
        spec: ``analysis.thresholds`` (n, j_max_percentile, j_max_factor, round_to and
            ``per_agent``: agent -> overrides of :data:`AGENT_OVERRIDES`; ``j_max_rule: data``
            ignores the per-env ``j_max`` values for that agent, ``j_max`` ({env: value}) sets
            that agent's J_max of the envs it lists, above both).
        j_min, j_max: per-env overrides (the paper's table, or the user's values).

    Returns:
        ``(table, dropped, messages)``: the table (env, agent, threshold_idx, threshold), the
        (env, agent) pairs whose thresholds cannot be set (J_min >= J_max), and why.
    """
    per_agent = dict(spec.get("per_agent") or {})
    for agent, override in per_agent.items():
        unknown = set(override or {}) - set(AGENT_OVERRIDES)
        if unknown:
            raise ValueError(
                f"analysis.thresholds.per_agent.{agent}: unknown key(s) {sorted(unknown)}; "
                f"expected {list(AGENT_OVERRIDES)}"
            )
    groups: dict[tuple[str, str | None], list[Curve]] = {}
    agents: dict[str, set[str]] = {}
    for curve in curves:
        env, agent = str(curve.key["env"]), str(curve.key["agent"])
        own = agent if agent in per_agent else None
        groups.setdefault((env, own), []).append(curve)
        if own is None:
            agents.setdefault(env, set()).add(agent)
    frames, dropped, messages = [], [], []
    for (env, own), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        settings = {**spec, **(per_agent.get(own) or {})} if own else dict(spec)
        rule = settings.get("j_max_rule", "config")
        if rule not in ("config", "data"):
            raise ValueError(
                f"analysis.thresholds j_max_rule must be 'config' or 'data', got {rule!r}"
            )
        round_to = settings.get("round_to", ROUND_TO)
        env_j_max = {} if rule == "data" else dict(j_max or {})
        env_j_max.update((settings.get("j_max") or {}) if own else {})
        names = [own] if own else sorted(agents[env])
        try:
            table = compute_thresholds(
                group,
                n_thresholds=int(settings.get("n", N_THRESHOLDS)),
                j_min=j_min,
                j_max=env_j_max,
                percentile=float(settings.get("j_max_percentile", J_MAX_PERCENTILE)),
                factor=float(settings.get("j_max_factor", J_MAX_FACTOR)),
                round_to=None if round_to is None else float(round_to),
            )
        except ValueError as err:
            dropped.extend((env, name) for name in names)
            messages.append(f"env {env}, agent(s) {', '.join(names)}: {err}")
            continue
        for name in names:
            frames.append(table.assign(agent=name))
    columns = ["env", "agent", "threshold_idx", "threshold"]
    if not frames:
        return pd.DataFrame(columns=columns), dropped, messages
    return pd.concat(frames, ignore_index=True)[columns], dropped, messages
