"""Data to reach a threshold, D_J, with a seed bootstrap (method.md section 3.3).

D_J of a configuration is the first evaluation step where the isotonic regression of its seed-mean
return reaches J (NaN if it never does). Its uncertainty comes from a bootstrap over seeds: K = 100
resamples of the seeds with replacement, each giving mean -> isotonic -> crossing. The K resamples of
a configuration are processed as one [K, T] batch (:func:`isotonic_batch`), without a Python loop
per resample.

Tables:

* ``crossings``: :data:`CROSSING_COLUMNS` -- one row per (configuration, threshold). ``D`` is from
  the full-sample curve; ``D_std`` the standard deviation (ddof = 1) of the bootstrap crossings that
  are not NaN (NaN when fewer than two are); ``D_boot_nan_frac`` the fraction of resamples that never
  reach the threshold; ``n_seeds`` the configuration's seeds and ``seeds_remaining`` how many of
  them have an evaluation at step D (at the last evaluation where D is NaN): fewer than ``n_seeds``
  where a seed stopped early (the authors' NaN-padded columns, or a seed the engine marked
  ``diverged``), whose missing evaluations the means skip (:mod:`valuescale.analysis.preprocess`).
* ``crossings_bootstrap``: :data:`BOOTSTRAP_COLUMNS` -- every resample's crossing, for the best
  batch size (:mod:`valuescale.analysis.best_config`) and bootstrap confidence intervals of fits.

Each configuration's resamples use their own generator seeded from (``seed``, a hash of the
configuration key), so a configuration's bootstrap does not change when others are added or removed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from valuescale.analysis.preprocess import CONFIG_KEYS, Curve, isotonic, seed_mean, seeds_at
from valuescale.catalog import columns

N_BOOT = 100
#: Columns of the crossings as computed; ``crossings.parquet`` adds ``D_boot`` and ``reset_dips``
#: (:func:`with_bootstrap_column`; the table's home: :mod:`valuescale.catalog`).
CROSSING_COLUMNS: list[str] = [c for c in columns("crossings") if c not in ("D_boot", "reset_dips")]
BOOTSTRAP_COLUMNS: list[str] = CONFIG_KEYS + ["threshold_idx", "threshold", "boot_idx", "D"]
# Upper bound on K * T * T elements per isotonic_batch chunk (about 64 MB of float64).
_CHUNK_ELEMENTS = 8_000_000


def isotonic_batch(y: np.ndarray) -> np.ndarray:
    """Isotonic (monotone non-decreasing, least-squares) regression of each row of a [K, T] batch.

    Vectorised over rows with the max-min characterisation of the isotonic fit,
    ``fit[i] = max_{j <= i} min_{k >= i} mean(y[j..k])``, evaluated for all (j, k) at once from
    prefix sums (O(K T^2) memory, chunked over K). NaN entries are missing points (weight 0): they
    do not influence the fit and come back as NaN; the fit at the other points equals the isotonic
    regression of the row with its NaNs removed.

    Args:
        y: [K, T] or [T] array.

    Returns:
        Array of the same shape.
    """
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim == 1:
        return isotonic_batch(arr[None, :])[0]
    if arr.ndim != 2:
        raise ValueError(f"isotonic_batch: expected a [K, T] array, got shape {arr.shape}")
    n_rows, n_steps = arr.shape
    out = np.full_like(arr, np.nan)
    if n_rows == 0 or n_steps == 0:
        return out
    present = ~np.isnan(arr)
    zero = np.zeros((n_rows, 1))
    csum = np.concatenate([zero, np.cumsum(np.where(present, arr, 0.0), axis=1)], axis=1)
    ccount = np.concatenate([zero, np.cumsum(present, axis=1)], axis=1)
    upper = np.triu(np.ones((n_steps, n_steps), dtype=bool))  # [j, k]: k >= j
    chunk = max(1, _CHUNK_ELEMENTS // (n_steps * n_steps))
    for start in range(0, n_rows, chunk):
        rows = slice(start, start + chunk)
        # block sums over y[j..k]: csum[k + 1] - csum[j], shape [rows, j, k]
        block_sum = csum[rows, None, 1:] - csum[rows, :-1, None]
        block_count = ccount[rows, None, 1:] - ccount[rows, :-1, None]
        valid = upper & (block_count > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            block_mean = np.where(valid, block_sum / block_count, np.nan)
        # min over k >= i (NaN-ignoring suffix minimum along k) -> [rows, j, i]
        suffix_min = np.fmin.accumulate(block_mean[:, :, ::-1], axis=2)[:, :, ::-1]
        # max over j <= i
        suffix_min[:, ~upper] = np.nan
        out[rows] = np.fmax.reduce(suffix_min, axis=1)
    out[~present] = np.nan
    return out


def crossing_steps(steps: np.ndarray, curves: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """First step at which each curve reaches each threshold.

    Args:
        steps: evaluation steps [T].
        curves: [..., T] (NaN never counts as reaching).
        thresholds: [J].

    Returns:
        float array [..., J]: the step, or NaN where the curve never reaches the threshold.
    """
    steps = np.asarray(steps)
    curves = np.asarray(curves, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if curves.shape[-1] != steps.shape[0]:
        raise ValueError(
            f"crossing_steps: curves have {curves.shape[-1]} steps, steps has {steps.shape[0]}"
        )
    reached = curves[..., :, None] >= thresholds  # [..., T, J]
    first = np.argmax(reached, axis=-2)
    hit = np.take_along_axis(reached, first[..., None, :], axis=-2)[..., 0, :]
    return np.where(hit, steps[first].astype(np.float64), np.nan)


def bootstrap_crossings(
    steps: np.ndarray,
    returns: np.ndarray,
    thresholds: np.ndarray,
    n_boot: int = N_BOOT,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Crossings of K seed-bootstrap resamples of one configuration.

    Each resample draws S seeds with replacement from the S columns of ``returns``, averages them
    per step (over the drawn seeds present there), fits the isotonic regression and finds the first
    step reaching each threshold.

    Args:
        steps: evaluation steps [T].
        returns: per-seed returns [T, S] (NaN = missing evaluation).
        thresholds: [J].
        n_boot: K.
        rng: generator or seed.

    Returns:
        [K, J] float array of steps (NaN: not reached in that resample).
    """
    returns = np.asarray(returns, dtype=np.float64)
    if returns.ndim != 2 or returns.shape[0] != len(steps):
        raise ValueError(
            f"bootstrap_crossings: returns must be [T={len(steps)}, S], got {returns.shape}"
        )
    if n_boot < 1:
        raise ValueError(f"bootstrap_crossings: n_boot must be >= 1, got {n_boot}")
    generator = np.random.default_rng(rng)
    n_seeds = returns.shape[1]
    draws = generator.integers(0, n_seeds, size=(n_boot, n_seeds))
    resampled = returns[:, draws]  # [T, K, S]
    means = seed_mean(resampled).T  # [K, T]
    return crossing_steps(steps, isotonic_batch(means), thresholds)


def _key_seed(seed: int, key: dict[str, object]) -> np.random.Generator:
    digest = zlib.crc32(repr(tuple(key[k] for k in CONFIG_KEYS)).encode())
    return np.random.default_rng([seed, digest])


def _threshold_lookup(thresholds: pd.DataFrame) -> tuple[list[str], dict[tuple, np.ndarray]]:
    """Map the threshold table's grouping columns to sorted [J] arrays of thresholds."""
    needed = {"env", "threshold_idx", "threshold"}
    if not needed <= set(thresholds.columns):
        raise ValueError(
            f"thresholds table needs columns {sorted(needed)}, has {list(thresholds.columns)}"
        )
    by = [c for c in thresholds.columns if c not in ("threshold_idx", "threshold")]
    lookup = {}
    for values, group in thresholds.groupby(by, sort=True):
        ordered = group.sort_values("threshold_idx")
        lookup[tuple(values)] = ordered["threshold"].to_numpy(np.float64)
    return by, lookup


@dataclass(frozen=True)
class CrossingTables:
    """The ``crossings`` table and the long table of bootstrap crossings."""

    crossings: pd.DataFrame
    bootstrap: pd.DataFrame


def crossing_tables(
    curves: Sequence[Curve],
    thresholds: pd.DataFrame,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> CrossingTables:
    """D_J with bootstrap statistics for every configuration and threshold.

    Args:
        curves: preprocessed configurations (one per :data:`CONFIG_KEYS` key).
        thresholds: table from :func:`valuescale.analysis.thresholds.compute_thresholds`; its
            columns other than ``threshold_idx``/``threshold`` (``env``, maybe ``agent``) select
            the thresholds of each configuration.
        n_boot: bootstrap resamples K.
        seed: base seed of the bootstrap.

    Returns:
        :class:`CrossingTables` with ``crossings`` (:data:`CROSSING_COLUMNS`) and ``bootstrap``
        (:data:`BOOTSTRAP_COLUMNS`).

    Raises:
        ValueError: a configuration has no thresholds (naming it), or two curves share a key.
    """
    by, lookup = _threshold_lookup(thresholds)
    keys: list[dict[str, object]] = []
    stats: list[dict[str, np.ndarray]] = []
    boots: list[np.ndarray] = []
    seen: set[tuple] = set()
    for curve in curves:
        key_tuple = tuple(curve.key[k] for k in CONFIG_KEYS)
        if key_tuple in seen:
            raise ValueError(f"crossing_tables: two curves share the configuration {curve.key}")
        seen.add(key_tuple)
        select = tuple(curve.key.get(c) for c in by)
        if select not in lookup:
            raise ValueError(
                f"crossing_tables: no thresholds for {dict(zip(by, select, strict=True))} "
                f"(configuration {curve.key})"
            )
        levels = lookup[select]
        full = crossing_steps(curve.steps, isotonic(seed_mean(curve.returns)), levels)  # [J]
        boot = bootstrap_crossings(
            curve.steps, curve.returns, levels, n_boot, _key_seed(seed, curve.key)
        )  # [K, J]
        n_finite = np.sum(~np.isnan(boot), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot_mean = np.nansum(boot, axis=0) / np.maximum(n_finite, 1)
            boot_var = np.nansum((boot - boot_mean) ** 2, axis=0) / (n_finite - 1)
        keys.append({k: curve.key[k] for k in CONFIG_KEYS})
        stats.append(
            {
                "threshold_idx": np.arange(len(levels), dtype=np.int64),
                "threshold": levels,
                "D": full,
                "D_std": np.where(n_finite >= 2, np.sqrt(boot_var), np.nan),
                "D_boot_nan_frac": 1.0 - n_finite / n_boot,
                "n_seeds": np.full(len(levels), curve.n_seeds, dtype=np.int64),
                "seeds_remaining": seeds_at(curve, full),
            }
        )
        boots.append(boot)
    crossings = _assemble(keys, stats, CROSSING_COLUMNS)
    boot_stats = [
        {
            "threshold_idx": np.tile(st["threshold_idx"], n_boot),
            "threshold": np.tile(st["threshold"], n_boot),
            "boot_idx": np.repeat(np.arange(n_boot, dtype=np.int64), len(st["threshold"])),
            "D": boot.reshape(-1),
        }
        for st, boot in zip(stats, boots, strict=True)
    ]
    bootstrap = _assemble(keys, boot_stats, BOOTSTRAP_COLUMNS)
    return CrossingTables(crossings=crossings, bootstrap=bootstrap)


_TYPES = {
    "env": "str",
    "agent": "str",
    "source": "str",
    "utd": "float64",
    "width": "Int64",
    "critic_params": "int64",
    "batch_size": "int64",
    "lr": "float64",
    "threshold_idx": "int64",
    "threshold": "float64",
    "D": "float64",
    "D_std": "float64",
    "D_boot_nan_frac": "float64",
    "n_seeds": "int64",
    "seeds_remaining": "int64",
    "boot_idx": "int64",
}


def _assemble(
    keys: list[dict[str, object]], stats: list[dict[str, np.ndarray]], columns: list[str]
) -> pd.DataFrame:
    """One table from per-configuration keys and equal-length per-configuration columns."""
    if not keys:
        out = pd.DataFrame({c: [] for c in columns})
        return out.astype({c: _TYPES[c] for c in columns})
    lengths = [len(next(iter(st.values()))) for st in stats]
    key_table = pd.DataFrame(keys, columns=CONFIG_KEYS).astype({c: _TYPES[c] for c in CONFIG_KEYS})
    out = key_table.iloc[np.repeat(np.arange(len(keys)), lengths)].reset_index(drop=True)
    for column in columns:
        if column not in CONFIG_KEYS:
            out[column] = np.concatenate([st[column] for st in stats])
    return out[columns].astype({c: _TYPES[c] for c in columns})


def compute_crossings(
    curves: Sequence[Curve], thresholds: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """The ``crossings`` table alone (see :func:`crossing_tables`)."""
    return crossing_tables(curves, thresholds, n_boot=n_boot, seed=seed).crossings


def with_bootstrap_column(tables: CrossingTables, n_boot: int) -> pd.DataFrame:
    """The crossings table with a ``D_boot`` column (the K resamples of each row).

    Uses the row layout of :func:`crossing_tables` (per configuration a [K, J] block) when it
    verifies, else a keyed merge
    (:func:`valuescale.analysis.data_efficiency.attach_bootstrap_table`).
    """
    cr, boot = tables.crossings, tables.bootstrap
    n_rows = len(cr)
    if n_rows == 0:
        return cr.assign(D_boot=pd.Series([], dtype="object"))
    sizes = cr.groupby(CONFIG_KEYS, dropna=False, sort=False).size()
    n_thr = int(sizes.iloc[0])
    n_cfg = len(sizes)
    fast = (sizes == n_thr).all() and len(boot) == n_rows * n_boot and n_cfg * n_thr == n_rows
    if fast:
        t_idx = boot["threshold_idx"].to_numpy().reshape(n_cfg, n_boot, n_thr)
        b_idx = boot["boot_idx"].to_numpy().reshape(n_cfg, n_boot, n_thr)
        first_boot = boot[["env", "utd", "critic_params", "batch_size", "source"]].iloc[
            :: n_boot * n_thr
        ]
        first_cr = cr[["env", "utd", "critic_params", "batch_size", "source"]].iloc[::n_thr]
        fast = (
            bool((t_idx == cr["threshold_idx"].to_numpy()[:n_thr]).all())
            and bool((b_idx == np.arange(n_boot)[None, :, None]).all())
            and first_boot.reset_index(drop=True).equals(first_cr.reset_index(drop=True))
        )
    if not fast:
        from valuescale.analysis.data_efficiency import attach_bootstrap_table

        return attach_bootstrap_table(cr, boot)
    D = boot["D"].to_numpy(float).reshape(n_cfg, n_boot, n_thr).transpose(0, 2, 1)
    out = cr.copy()
    out["D_boot"] = list(D.reshape(n_rows, n_boot))
    return out
