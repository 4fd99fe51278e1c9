"""Preprocess return curves per configuration (method.md section 3.1).

A *configuration* is one setting of the hyperparameters :data:`CONFIG_KEYS`; its seeds are the
samples. For each configuration the long curve table (:mod:`valuescale.analysis.ingest`) is pivoted
to a steps[T] x seeds[S] return matrix, then

1. truncated to a per-env maximum step (optional),
2. cleared of post-reset dips: resets happen every ``reset_interval / utd`` env steps
   (``reset_interval`` gradient steps, 2.5M for BRO, none for SimbaV2); after each reset the
   evaluation points are dropped until the seed-mean return recovers to its pre-reset level.
   Two rules (:data:`RESET_RULES`, config ``analysis.preprocess.reset_dips``):

   * ``ours`` (:func:`remove_reset_dips`): an evaluation exactly on a reset step counts as before
     it; the level is the last *kept* evaluation at or before the reset; a dip that never recovers
     drops everything after it.
   * ``authors`` (:func:`remove_reset_dips_authors`, the authors' published analysis): the reset
     step is truncated to ``int(reset_interval / utd)``; per configuration an evaluation exactly on
     a reset step counts as before or after it, whichever gives the larger summed drop over the
     resets; the level is the raw seed-mean just before the reset (kept or not); a segment between
     two resets that never recovers is dropped whole and the next reset starts afresh.
3. summarised by the isotonic (monotone non-decreasing) regression of the seed-mean return
   (:func:`isotonic`).

The per-seed matrix is kept (:class:`Curve`) so that the bootstrap can resample seeds; the dip mask is
decided once on the full-sample mean and applied to every seed.

Runs that share :data:`CONFIG_KEYS` but differ in another hyperparameter column (the published
``side_critic`` runs differ only in the passive critic's width, which never acts or bootstraps) are
pooled: each (run, seed) becomes one sample. A seed without an evaluation at some step is missing
(NaN) there; the seed mean averages the seeds present. This is how the authors treat their
NaN-padded seed columns, and how a seed the engine marks ``diverged`` is treated: the engine writes
no rows at or after its divergence step, so from there on the seed is missing, and the means (and
the bootstrap's resampled means) average the seeds that remain. The crossings table reports how
many remain at each D_J (``seeds_remaining``, :func:`seeds_at`), so a point carried by fewer seeds
is visible instead of silently biasing the fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy.optimize import isotonic_regression

from valuescale import catalog
from valuescale.analysis.ingest import HYPERPARAMETER_COLUMNS

# Hyperparameters that identify a configuration in the analysis tables (the catalogue's).
CONFIG_KEYS: list[str] = list(catalog.CONFIG_KEYS)
# Gradient steps between full resets, by agent (None: the agent never resets).
DEFAULT_RESET_INTERVAL: Mapping[str, float | None] = MappingProxyType(
    {"bro": 2_500_000.0, "simbav2": None}
)
#: Post-reset dip rules (module docstring): ours, and the authors' published one.
RESET_RULES: tuple[str, ...] = ("ours", "authors")


@dataclass(frozen=True)
class Curve:
    """One configuration's preprocessed return curves.

    Attributes:
        key: the configuration, ``{column: value}`` over :data:`CONFIG_KEYS` (None for a null width).
        steps: evaluation env steps [T], int64, strictly increasing.
        returns: per-seed returns [T, S], NaN where a seed has no evaluation at that step; every
            row has at least one value.
    """

    key: dict[str, object]
    steps: np.ndarray
    returns: np.ndarray
    _iso: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def n_seeds(self) -> int:
        """Number of seed samples S."""
        return int(self.returns.shape[1])

    def mean(self) -> np.ndarray:
        """Seed-mean return [T] (over the seeds present at each step)."""
        return seed_mean(self.returns)

    def isotonic(self) -> np.ndarray:
        """Isotonic regression of the seed-mean return [T]."""
        if self._iso is None:
            object.__setattr__(self, "_iso", isotonic(self.mean()))
        return self._iso


def seed_mean(returns: np.ndarray) -> np.ndarray:
    """Mean over the seed axis (last) of a [..., T, S] matrix, ignoring NaN; NaN where none."""
    present = ~np.isnan(returns)
    count = present.sum(axis=-1)
    total = np.where(present, returns, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares monotone non-decreasing fit of a 1-D series (scipy's PAVA).

    Raises:
        ValueError: ``y`` is not 1-D or holds NaN.
    """
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"isotonic: expected a 1-D series, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("isotonic: the series holds NaN")
    if arr.size == 0:
        return arr.copy()
    return np.asarray(isotonic_regression(arr, increasing=True).x)


def remove_reset_dips(
    steps: np.ndarray, mean_return: np.ndarray, reset_every: float | None
) -> np.ndarray:
    """Mask of the evaluation points to keep after dropping post-reset dips.

    Resets happen at every positive multiple of ``reset_every`` env steps; an evaluation at exactly
    a reset step counts as before it. After each reset, points are dropped until the first one whose
    ``mean_return`` is at least the level of the last kept point at or before the reset; that point
    and everything after it are kept (until the next reset). A reset with no kept point before it
    drops nothing.

    Args:
        steps: evaluation env steps [T], increasing.
        mean_return: seed-mean return [T].
        reset_every: env steps between resets (``reset_interval / utd``); None or inf: no resets.

    Returns:
        Boolean mask [T], True = keep.
    """
    steps = np.asarray(steps)
    mean_return = np.asarray(mean_return, dtype=np.float64)
    if steps.shape != mean_return.shape or steps.ndim != 1:
        raise ValueError(
            f"remove_reset_dips: steps {steps.shape} and mean_return {mean_return.shape} "
            "must be 1-D of the same length"
        )
    keep = np.ones(len(steps), dtype=bool)
    if reset_every is None or not np.isfinite(reset_every) or len(steps) == 0:
        return keep
    if reset_every <= 0:
        raise ValueError(f"remove_reset_dips: reset_every must be positive, got {reset_every}")
    n_resets = int(np.floor(steps[-1] / reset_every))
    for k in range(1, n_resets + 1):
        reset = k * reset_every
        before = np.flatnonzero(keep & (steps <= reset))
        if before.size == 0:
            continue
        level = mean_return[before[-1]]
        j = int(np.searchsorted(steps, reset, side="right"))
        while j < len(steps) and not mean_return[j] >= level:
            keep[j] = False
            j += 1
    return keep


def remove_reset_dips_authors(
    steps: np.ndarray, mean_return: np.ndarray, reset_every: float | None
) -> np.ndarray:
    """Mask of the evaluation points to keep under the authors' post-reset dip rule.

    Resets at every positive multiple of ``R = int(reset_every)`` env steps up to the last
    evaluation. An evaluation exactly on a reset step is placed before the reset or after it,
    whichever gives the larger summed drop ``sum(mean[pre] - mean[post])`` over the resets (one
    choice per configuration); with "before", a reset whose first post-reset evaluation would lie
    past the last one is ignored. The evaluations between two resets form a segment; a segment is
    kept from its first evaluation whose mean reaches the raw mean of the evaluation just before
    its reset (whether that one was kept or not), and dropped whole if none does. The first
    segment is always kept; a reset with no evaluation before it drops nothing.

    Args:
        steps: evaluation env steps [T], increasing.
        mean_return: seed-mean return [T].
        reset_every: env steps between resets (``reset_interval / utd``); None or inf: no resets.

    Returns:
        Boolean mask [T], True = keep.
    """
    steps = np.asarray(steps)
    mean_return = np.asarray(mean_return, dtype=np.float64)
    if steps.shape != mean_return.shape or steps.ndim != 1:
        raise ValueError(
            f"remove_reset_dips_authors: steps {steps.shape} and mean_return "
            f"{mean_return.shape} must be 1-D of the same length"
        )
    n = len(steps)
    keep = np.ones(n, dtype=bool)
    if reset_every is None or not np.isfinite(reset_every) or n == 0:
        return keep
    if reset_every <= 0:
        raise ValueError(
            f"remove_reset_dips_authors: reset_every must be positive, got {reset_every}"
        )
    period = int(reset_every)
    if period < 1:
        return keep
    resets = np.arange(period, int(steps[-1]) + 1, period)
    if resets.size == 0:
        return keep
    after = np.searchsorted(steps, resets, side="left")  # an evaluation on the step: after
    before = np.searchsorted(steps, resets, side="right")  # an evaluation on the step: before
    before = before[before < n]

    def drop(post: np.ndarray) -> float:
        post = post[post > 0]
        return float(np.sum(mean_return[post - 1] - mean_return[post])) if post.size else 0.0

    post = after if drop(after) > drop(before) else before
    post = np.unique(post[(post > 0) & (post < n)])
    starts = np.concatenate([[0], post])
    ends = np.concatenate([post, [n]])
    levels = np.concatenate([[-np.inf], mean_return[post - 1]])
    keep[:] = False
    for start, end, level in zip(starts, ends, levels, strict=True):
        reached = np.flatnonzero(mean_return[start:end] >= level)
        if reached.size:
            keep[start + reached[0] : end] = True
    return keep


def reset_mask(
    steps: np.ndarray, mean_return: np.ndarray, reset_every: float | None, rule: str = "ours"
) -> np.ndarray:
    """The keep-mask of the post-reset dip rule ``rule`` (one of :data:`RESET_RULES`)."""
    if rule == "ours":
        return remove_reset_dips(steps, mean_return, reset_every)
    if rule == "authors":
        return remove_reset_dips_authors(steps, mean_return, reset_every)
    raise ValueError(f"unknown reset-dip rule {rule!r}; expected one of {RESET_RULES}")


def seeds_at(curve: Curve, at_steps: np.ndarray) -> np.ndarray:
    """Seeds of ``curve`` with an evaluation at each of ``at_steps`` (NaN entries: at the last
    evaluation): the D_J points' ``seeds_remaining``."""
    at_steps = np.asarray(at_steps, dtype=np.float64)
    present = (~np.isnan(curve.returns)).sum(axis=1)
    if len(curve.steps) == 0:
        return np.zeros(at_steps.shape, dtype=np.int64)
    idx = np.searchsorted(curve.steps, np.where(np.isnan(at_steps), curve.steps[-1], at_steps))
    idx = np.clip(idx, 0, len(curve.steps) - 1)
    return present[idx].astype(np.int64)


def _py(value: object) -> object:
    """A plain Python scalar (None for missing values) for configuration keys."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def config_curves(
    df: pd.DataFrame, metric: str = "return", keys: list[str] | None = None
) -> Iterator[tuple[dict[str, object], np.ndarray, np.ndarray]]:
    """Pivot a long curve table to one (key, steps[T], values[T, S]) per configuration.

    Args:
        df: long curve table (columns of :data:`valuescale.analysis.ingest.TABLE_COLUMNS`).
        metric: which metric to pivot.
        keys: configuration columns (default :data:`CONFIG_KEYS`); other hyperparameter columns
            present in ``df`` distinguish runs whose seeds are pooled as separate samples.

    Yields:
        ``(key, steps, values)`` in sorted key order; ``steps`` int64 increasing over the union of
        the samples' steps, ``values`` NaN where a sample has no value at a step.

    Raises:
        ValueError: a key column is missing, or a sample has two values at one step (naming the
            configuration).
    """
    keys = list(CONFIG_KEYS if keys is None else keys)
    missing = [c for c in keys + ["seed", "step", "metric", "value"] if c not in df.columns]
    if missing:
        raise ValueError(f"config_curves: missing column(s) {missing}")
    sub = df.loc[(df["metric"] == metric) & df["value"].notna()]
    if sub.empty:
        return
    extras = [c for c in HYPERPARAMETER_COLUMNS if c in sub.columns and c not in keys]
    sample_code = sub.groupby(keys + extras + ["seed"], dropna=False, sort=True).ngroup()
    sub = sub.assign(_sample=sample_code.to_numpy())
    for values, group in sub.groupby(keys, dropna=False, sort=True):
        key = {k: _py(v) for k, v in zip(keys, values, strict=True)}
        steps, t_idx = np.unique(group["step"].to_numpy(np.int64), return_inverse=True)
        _, s_idx = np.unique(group["_sample"].to_numpy(), return_inverse=True)
        n_samples = int(s_idx.max()) + 1
        flat = t_idx * n_samples + s_idx
        if len(np.unique(flat)) != len(flat):
            raise ValueError(f"config_curves: {key}: a seed has two {metric!r} values at one step")
        matrix = np.full((len(steps), n_samples), np.nan)
        matrix[t_idx, s_idx] = group["value"].to_numpy(np.float64)
        yield key, steps, matrix


def _lookup(
    mapping: float | None | Mapping[str, float | None], name: str, default: float | None
) -> float | None:
    if isinstance(mapping, Mapping):
        return mapping.get(name, default)
    return mapping


def preprocess(
    df: pd.DataFrame,
    max_step: Mapping[str, float] | None = None,
    reset_interval: float | None | Mapping[str, float | None] = DEFAULT_RESET_INTERVAL,
    metric: str = "return",
    reset_rule: str = "ours",
) -> list[Curve]:
    """Preprocess every configuration of a long curve table (truncate, remove dips).

    Args:
        df: long curve table.
        max_step: env -> last env step to keep (envs not listed are not truncated).
        reset_interval: gradient steps between resets: a mapping agent -> number or None
            (default :data:`DEFAULT_RESET_INTERVAL`; agents not listed never reset), one number for
            all agents, or None for no resets.
        metric: the metric to preprocess (the return).
        reset_rule: the post-reset dip rule, ``ours`` or ``authors`` (module docstring).

    Returns:
        One :class:`Curve` per configuration with at least one evaluation left, in key order.
    """
    if reset_rule not in RESET_RULES:
        raise ValueError(f"unknown reset-dip rule {reset_rule!r}; expected one of {RESET_RULES}")
    curves: list[Curve] = []
    for key, steps, returns in config_curves(df, metric=metric):
        env, agent = str(key["env"]), str(key["agent"])
        if max_step is not None and env in max_step:
            inside = steps <= max_step[env]
            steps, returns = steps[inside], returns[inside]
        if len(steps) == 0:
            continue
        interval = _lookup(reset_interval, agent, None)
        reset_every = None if interval is None else interval / float(key["utd"])
        keep = reset_mask(steps, seed_mean(returns), reset_every, reset_rule)
        curves.append(Curve(key=key, steps=steps[keep], returns=returns[keep]))
    return curves


def curves_table(curves: list[Curve]) -> pd.DataFrame:
    """Tidy table of preprocessed curves: key columns, step, n_seeds, mean_return, isotonic_return.

    ``n_seeds`` counts the seeds with an evaluation at that step.
    """
    frames = []
    for curve in curves:
        frame = pd.DataFrame(
            {
                "step": curve.steps,
                "n_seeds": (~np.isnan(curve.returns)).sum(axis=1),
                "mean_return": curve.mean(),
                "isotonic_return": curve.isotonic(),
            }
        )
        for k in reversed(list(curve.key)):
            frame.insert(0, k, curve.key[k])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(
            columns=CONFIG_KEYS + ["step", "n_seeds", "mean_return", "isotonic_return"]
        )
    out = pd.concat(frames, ignore_index=True)
    if "width" in out:
        out["width"] = out["width"].astype("Int64")
    return out
