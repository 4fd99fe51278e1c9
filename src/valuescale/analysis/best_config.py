"""Best batch size (and learning rate) per (env, agent, σ, N) from bootstrap crossings
(method.md section 3.4).

For each bootstrap resample k, the best value of the hyperparameter (batch size B or learning rate
η) is the one with the smallest D at J_max (the env's highest threshold); NaN counts as infinite.
When several values tie for the smallest D (crossings are discrete evaluation steps, so ties are
common), the resample's choice is the geometric mean of the tied values, so no ordering of the grid
is favoured. Then

* ``B_star`` = exp(mean_k log B_k) over the resamples in which some value reaches J_max,
* ``B_star_lo`` / ``B_star_hi`` = 5th / 95th percentiles of B_k,
* ``status``: ``too_few_batch_sizes`` (fewer than 3 values in the group), ``not_reached`` (no value
  reaches J_max in any resample), ``best_at_edge`` (the median B_k is the smallest or largest value
  of the grid: most resamples pick an edge outright), else ``ok``.

Resamples of different configurations are independent; resample k of one is paired with resample k
of the others.

Output tables (one row per group):

* ``best_batch_size``: env, agent, source, utd, critic_params, width, lr, B_star, B_star_lo,
  B_star_hi, n_batch_sizes, n_boot, status
* ``best_learning_rate``: env, agent, source, utd, critic_params, width, batch_size, lr_star,
  lr_star_lo, lr_star_hi, n_learning_rates, n_boot, status

``n_boot`` counts the resamples with a defined choice. ``source`` keeps separate experiments
apart; filter the bootstrap table to one source for the paper's analysis (``fitted_bs``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from valuescale.analysis.crossings import BOOTSTRAP_COLUMNS

MIN_GRID = 3
LOW_PERCENTILE = 5.0
HIGH_PERCENTILE = 95.0
_GROUP_BASE = ["env", "agent", "source", "utd", "critic_params", "width"]


def bootstrap_choices(d_boot: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per resample, the value with the smallest D (geometric mean over ties; NaN if none reached).

    Args:
        d_boot: [K, V] crossings of V candidate values in K resamples (NaN: not reached).
        values: [V] positive candidate values.

    Returns:
        [K] chosen values (NaN where no candidate reaches the threshold).
    """
    d_boot = np.asarray(d_boot, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if d_boot.ndim != 2 or d_boot.shape[1] != len(values):
        raise ValueError(
            f"bootstrap_choices: d_boot must be [K, V={len(values)}], got {d_boot.shape}"
        )
    if np.any(values <= 0):
        raise ValueError("bootstrap_choices: candidate values must be positive")
    d = np.where(np.isnan(d_boot), np.inf, d_boot)
    best = d.min(axis=1, keepdims=True)
    tied = (d == best) & np.isfinite(best)
    n_tied = tied.sum(axis=1)
    log_sum = (tied * np.log(values)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_tied > 0, np.exp(log_sum / np.maximum(n_tied, 1)), np.nan)


def _threshold_rows(boot: pd.DataFrame, threshold_idx: int | None) -> pd.DataFrame:
    missing = [c for c in BOOTSTRAP_COLUMNS if c not in boot.columns]
    if missing:
        raise ValueError(f"bootstrap table lacks column(s) {missing}")
    if threshold_idx is not None:
        return boot.loc[boot["threshold_idx"] == threshold_idx]
    top = boot.groupby("env")["threshold_idx"].transform("max")
    return boot.loc[boot["threshold_idx"] == top]


def best_hyperparameter(
    boot: pd.DataFrame,
    param: str,
    group: list[str],
    prefix: str,
    count_name: str,
    threshold_idx: int | None = None,
    min_grid: int = MIN_GRID,
) -> pd.DataFrame:
    """Bootstrap best value of ``param`` per ``group`` (see module docstring).

    Args:
        boot: bootstrap crossings table (:data:`valuescale.analysis.crossings.BOOTSTRAP_COLUMNS`).
        param: the hyperparameter column to choose (``batch_size`` or ``lr``).
        group: grouping columns; every other configuration column must be constant in a group.
        prefix: output column prefix (``B`` -> ``B_star``, ``B_star_lo``, ``B_star_hi``).
        count_name: name of the grid-size column (``n_batch_sizes``).
        threshold_idx: threshold to use; default each env's highest (J_max).
        min_grid: fewer distinct values than this give status ``too_few_...`` (3).

    Raises:
        ValueError: a column is missing, or a group holds two configurations with the same
            ``param`` value (naming the group).
    """
    rows = _threshold_rows(boot, threshold_idx)
    out_columns = group + [
        f"{prefix}_star",
        f"{prefix}_star_lo",
        f"{prefix}_star_hi",
        count_name,
        "n_boot",
        "status",
    ]
    records = []
    for values, sub in rows.groupby(group, dropna=False, sort=True):
        if sub.duplicated(["boot_idx", param]).any():
            label = dict(zip(group, values, strict=True))
            raise ValueError(
                f"best {param}: group {label} has several configurations per {param} value; "
                "add the varying column to the grouping or filter the table"
            )
        d = sub.pivot(index="boot_idx", columns=param, values="D")
        grid = d.columns.to_numpy(np.float64)
        choices = bootstrap_choices(d.to_numpy(), grid)
        defined = choices[~np.isnan(choices)]
        record = dict(zip(group, values, strict=True))
        if defined.size:
            # the geometric mean lies within [min, max]; clamp away rounding (all-equal choices)
            star = float(np.clip(np.exp(np.mean(np.log(defined))), defined.min(), defined.max()))
            lo, hi = np.percentile(defined, [LOW_PERCENTILE, HIGH_PERCENTILE])
            median = float(np.median(defined))
        else:
            star = lo = hi = median = np.nan
        if len(grid) < min_grid:
            status = f"too_few_{count_name.removeprefix('n_')}"
        elif not defined.size:
            status = "not_reached"
        elif median <= grid.min() or median >= grid.max():
            status = "best_at_edge"
        else:
            status = "ok"
        record.update(
            {
                f"{prefix}_star": star,
                f"{prefix}_star_lo": float(lo),
                f"{prefix}_star_hi": float(hi),
                count_name: len(grid),
                "n_boot": int(defined.size),
                "status": status,
            }
        )
        records.append(record)
    out = pd.DataFrame.from_records(records, columns=out_columns)
    if "width" in out:
        out["width"] = out["width"].astype("Int64")
    return out


def best_batch_size(
    boot: pd.DataFrame, threshold_idx: int | None = None, min_batch_sizes: int = MIN_GRID
) -> pd.DataFrame:
    """The ``best_batch_size`` table: B* per (env, agent, source, σ, N, width, lr)."""
    return best_hyperparameter(
        boot,
        param="batch_size",
        group=_GROUP_BASE + ["lr"],
        prefix="B",
        count_name="n_batch_sizes",
        threshold_idx=threshold_idx,
        min_grid=min_batch_sizes,
    )


def best_learning_rate(
    boot: pd.DataFrame, threshold_idx: int | None = None, min_learning_rates: int = MIN_GRID
) -> pd.DataFrame:
    """The ``best_learning_rate`` table: η* per (env, agent, source, σ, N, width, B).

    Groups where the learning rate does not vary come out with status ``too_few_learning_rates``.
    """
    return best_hyperparameter(
        boot,
        param="lr",
        group=_GROUP_BASE + ["batch_size"],
        prefix="lr",
        count_name="n_learning_rates",
        threshold_idx=threshold_idx,
        min_grid=min_learning_rates,
    )
