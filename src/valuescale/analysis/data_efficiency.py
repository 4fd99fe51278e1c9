"""Data-efficiency law D_J(σ, N) (Eq. 7.1; method.md §3.5) and its fits.

    D_J(σ, N) = D_min + (a_J / σ)**alpha_J + (b_J / N)**beta_J

fitted per return threshold J on the data needed to reach J at the best batch size of every
(env, σ, N). Variants (column ``variant`` of ``fits_data_efficiency.csv``):

* ``per_env``: one fit per (agent, env, threshold).
* ``shared``: alpha_J and beta_J shared by the envs of a suite, D_min, a_J, b_J per env, in one
  joint optimisation; one output row per env (``scope`` = env, ``group`` = suite).
* ``averaged``: the suite's envs averaged into one env named after the suite (``scope`` = suite),
  fitted per threshold. Two normalisations (:data:`TASK_AVERAGES`, config
  ``analysis.fits.task_average``, column ``task_average``):

  - ``authors`` (the paper's Appendix D): per env one median of D_J over *all* thresholds and all
    (σ, N) configurations of that env that reach its top threshold (:func:`env_medians`; the
    others are left out of the average); each D_J is divided by its env's median, the normalised
    values are averaged over the envs that have that point (a mean over the available envs), and
    the mean is multiplied by the median of the per-env medians. Column ``norm_medians`` records
    the medians (``env=value;...``) so that evaluations and figures average the same way.
  - ``per_threshold``: at each threshold, each env's D_J divided by that env's median over the grid
    points every env reached at that threshold, averaged over the envs, multiplied by the median
    of the medians; only points every env reached are averaged.

  Envs are matched on (utd, width) when every row has a width, else on (utd, critic_params); the
  averaged N is the geometric mean of the envs' N.
* ``loglinear``: the baseline ``log D = log_intercept + slope_utd log σ + slope_critic_params log N``.

Which rows feed the fits (:func:`select_fit_points`): per (env, agent, σ, N) the crossing rows of
the batch size closest in log to ``B_star`` of the best-batch-size table; without that table (or
where B_star is NaN) the batch size with the smallest D at each threshold (``batch_choice``
``"min_D"``). Data with one batch size (e.g. the published DMC ablation, B = 1024) use it. An
agent may use the rule ``min_D_top`` instead (config ``analysis.fits.batch_choice``; the
authors' SimbaV2 fits): the batch size with the smallest D at the top threshold, among (σ, N)
groups with at least ``min_batch_sizes`` batch sizes (smaller groups are left out), its D at every
threshold. Grid points can be left out of the D_J fits per suite, agent, source or env
(:func:`exclude_points`, config ``analysis.fits.exclude``): the authors' DMC fits leave the
0.55M critic out, and their DMC-hard fits σ = 1 too; their SimbaV2 fits leave W = 2048 out.

Bootstrap CIs: a ``D_boot`` column holding a length-K array per crossing row (see
:func:`attach_bootstrap`), otherwise a parametric log-normal resample from ``D_std``
(``D * exp(z * D_std / D)``), otherwise none.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from valuescale.analysis.fitting import (
    STATUS_DEGENERATE,
    STATUS_FAILED,
    STATUS_OK,
    DegeneracyRules,
    FitDataError,
    FitResult,
    LogRescale,
    ScaledProblem,
    failed_result,
    fit_loglinear,
    fit_scaled_many,
    predict_loglinear,
    relative_error,
    unscale_power_term,
)
from valuescale.catalog import DE_PARAMS  # the table columns' home: valuescale.catalog
from valuescale.tasks import task_spec

LOGLINEAR_PARAMS = ("log_intercept", "slope_utd", "slope_critic_params")
VARIANTS = ("per_env", "shared", "averaged", "loglinear")
#: Task-averaging normalisations of the ``averaged`` variant (module docstring).
TASK_AVERAGES = ("authors", "per_threshold")
#: Batch-size rules of :func:`select_fit_points` (``B_star`` falls back to ``min_D``).
BATCH_CHOICES = ("B_star", "min_D_top")
#: Keys of an ``analysis.fits.exclude`` rule: selectors, then the excluded values.
EXCLUDE_SELECTORS = ("agent", "source", "suite", "env")
EXCLUDE_VALUES = ("utd", "width", "critic_params")
DEFAULT_N_BOOT = 100
# Envs with fewer finite D at a threshold are left out of that threshold's shared/averaged fit.
MIN_POINTS_PER_ENV = 3


def suite_of(env: str) -> str:
    """Suite of ``env`` from the paper's task table, ``"other"`` if not listed."""
    spec = task_spec(env)
    return spec.suite if spec is not None else "other"


# --------------------------------------------------------------------------------------------
# The law
# --------------------------------------------------------------------------------------------


def predict_D(
    params: Mapping[str, float], utd: np.ndarray | float, critic_params: np.ndarray | float
) -> np.ndarray:
    """Data to threshold predicted by a fitted law (Eq. 7.1, or the log-linear baseline).

    Args:
        params: a fit row or ``FitResult.params``; with ``D_min, a_J, alpha_J, b_J, beta_J``
            Eq. 7.1 is used, with ``log_intercept, slope_utd, slope_critic_params`` the baseline.
        utd: σ values.
        critic_params: N values (broadcast against ``utd``).
    """
    utd = np.asarray(utd, dtype=float)
    critic_params = np.asarray(critic_params, dtype=float)
    if "slope_utd" in params and np.any(np.isfinite(np.asarray(params["slope_utd"], float))):
        return predict_loglinear(params, {"utd": utd, "critic_params": critic_params})
    return (
        params["D_min"]
        + (params["a_J"] / utd) ** params["alpha_J"]
        + (params["b_J"] / critic_params) ** params["beta_J"]
    )


class DataEfficiencyProblem(ScaledProblem):
    """Eq. 7.1 for one or several groups (envs) sharing alpha_J and beta_J.

    Parameter vector (rescaled units): ``[alpha, beta, D_min_0, a_0, b_0, D_min_1, ...]``.
    Names: ``alpha_J, beta_J, D_min, a_J, b_J`` for one group, ``D_min/<g>`` etc. for several.
    """

    def __init__(
        self,
        utd: np.ndarray,
        critic_params: np.ndarray,
        D: np.ndarray,
        group: np.ndarray | None = None,
    ) -> None:
        utd = np.asarray(utd, dtype=float)
        critic_params = np.asarray(critic_params, dtype=float)
        D = np.asarray(D, dtype=float)
        self.group = np.zeros(D.size, dtype=int) if group is None else np.asarray(group, int)
        self.n_groups = int(self.group.max()) + 1 if self.group.size else 1
        valid = np.isfinite(D) & (D > 0)
        self.rescale_utd = LogRescale.from_values(utd[valid], "utd")
        self.rescale_params = LogRescale.from_values(critic_params[valid], "critic_params")
        self.log_utd = self.rescale_utd.log_apply(utd)
        self.log_params = self.rescale_params.log_apply(critic_params)
        log_scale = np.zeros(self.n_groups)
        for g in range(self.n_groups):
            in_group = valid & (self.group == g)
            if not in_group.any():
                raise FitDataError(STATUS_FAILED, f"group {g} has no finite D")
            log_scale[g] = np.log(np.mean(D[in_group]))
        self.log_scale = log_scale
        self.log_y_offset = log_scale[self.group]
        # Lowest scaled target per group, to start D_min below it.
        scaled = np.where(valid, D / np.exp(self.log_y_offset), np.inf)
        self.min_scaled = np.array(
            [scaled[self.group == g].min() for g in range(self.n_groups)], dtype=float
        )
        if self.n_groups == 1:
            self.names = ("alpha_J", "beta_J", "D_min", "a_J", "b_J")
        else:
            per = [f"{p}/{g}" for g in range(self.n_groups) for p in ("D_min", "a_J", "b_J")]
            self.names = ("alpha_J", "beta_J", *per)
        self.exponents = (0, 1)
        self.floor_params = tuple(2 + 3 * g for g in range(self.n_groups))  # D_min may be 0
        n = D.size
        self._rows = np.arange(n)
        self._col_dmin = 2 + 3 * self.group
        self._col_a = 3 + 3 * self.group
        self._col_b = 4 + 3 * self.group

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._log_predict(theta, self.log_utd, self.log_params)

    def stack_key(self) -> object:
        # the law's arithmetic is elementwise in the inputs, so problems with the same groups of
        # points can be evaluated in one call with per-block inputs
        return ("data_efficiency", self.n_groups, self.group.tobytes())

    @classmethod
    def stack(
        cls, problems: Sequence[ScaledProblem], n_blocks: Sequence[int]
    ) -> _StackedDataEfficiency:
        return _StackedDataEfficiency(problems, n_blocks)  # type: ignore[arg-type]

    def _log_predict(
        self, theta: np.ndarray, log_utd: np.ndarray, log_params: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The prediction and Jacobian for inputs ``log_utd``, ``log_params`` (``[n]``, or
        ``[S, n]`` per block of a stack: the same arithmetic, elementwise)."""
        alpha = theta[:, :1]
        beta = theta[:, 1:2]
        if self.n_groups == 1:  # plain slices: much cheaper than gathers
            d_min, a, b = theta[:, 2:3], theta[:, 3:4], theta[:, 4:5]
        else:
            d_min = theta[:, self._col_dmin]
            a, b = theta[:, self._col_a], theta[:, self._col_b]
        x_utd = np.log(a) - log_utd  # log(a / σ~)
        x_params = np.log(b) - log_params
        # np.minimum(np.maximum(.)) is np.clip without its wrapper's overhead (hot loop)
        term_utd = np.exp(np.minimum(np.maximum(alpha * x_utd, -700.0), 700.0))
        term_params = np.exp(np.minimum(np.maximum(beta * x_params, -700.0), 700.0))
        pred = d_min + term_utd + term_params
        inv = 1.0 / pred
        d_alpha = term_utd * x_utd * inv
        d_beta = term_params * x_params * inv
        d_a = term_utd * (alpha / a) * inv
        d_b = term_params * (beta / b) * inv
        if self.n_groups == 1:
            jac = np.empty((*d_a.shape, 5))
            jac[..., 0] = d_alpha
            jac[..., 1] = d_beta
            jac[..., 2] = inv
            jac[..., 3] = d_a
            jac[..., 4] = d_b
        else:
            jac = np.zeros((*pred.shape, self.n_params))
            jac[:, :, 0] = d_alpha
            jac[:, :, 1] = d_beta
            jac[:, self._rows, self._col_dmin] = inv
            jac[:, self._rows, self._col_a] = d_a
            jac[:, self._rows, self._col_b] = d_b
        return np.log(pred), jac

    def starts(self, rng: np.random.Generator, n_starts: int) -> np.ndarray:
        theta = np.empty((n_starts, self.n_params))
        theta[:, 0] = np.exp(rng.uniform(np.log(0.3), np.log(3.0), n_starts))
        theta[:, 1] = np.exp(rng.uniform(np.log(0.3), np.log(3.0), n_starts))
        for g in range(self.n_groups):
            theta[:, 2 + 3 * g] = rng.uniform(0.05, 0.8, n_starts) * self.min_scaled[g]
            theta[:, 3 + 3 * g] = np.exp(rng.uniform(np.log(0.05), np.log(1.0), n_starts))
            theta[:, 4 + 3 * g] = np.exp(rng.uniform(np.log(0.05), np.log(1.0), n_starts))
        theta[0, :2] = 1.0
        theta[0, 2::3] = 0.5 * self.min_scaled
        theta[0, 3::3] = 0.3
        theta[0, 4::3] = 0.3
        return theta

    def unscale(self, theta: np.ndarray) -> np.ndarray:
        out = np.empty_like(theta)
        out[:, :2] = theta[:, :2]
        for g in range(self.n_groups):
            s = self.log_scale[g]
            out[:, 2 + 3 * g] = np.exp(s) * theta[:, 2 + 3 * g]
            a, alpha = unscale_power_term(theta[:, 3 + 3 * g], theta[:, 0], self.rescale_utd, s)
            b, beta = unscale_power_term(theta[:, 4 + 3 * g], theta[:, 1], self.rescale_params, s)
            out[:, 3 + 3 * g] = a
            out[:, 4 + 3 * g] = b
            out[:, 0] = alpha
            out[:, 1] = beta
        return out


class _StackedDataEfficiency(DataEfficiencyProblem):
    """Several :class:`DataEfficiencyProblem` s with the same groups of points (their
    :meth:`stack_key`) as one problem for the batched optimiser: block ``k`` is evaluated with the
    inputs of the problem it came from (:meth:`ScaledProblem.stack`)."""

    def __init__(self, problems: Sequence[DataEfficiencyProblem], n_blocks: Sequence[int]) -> None:
        first = problems[0]  # names and columns: equal for equal stack keys
        self.group, self.n_groups = first.group, first.n_groups
        self.names, self.exponents, self.floor_params = (
            first.names,
            first.exponents,
            first.floor_params,
        )
        self._rows, self._col_dmin = first._rows, first._col_dmin
        self._col_a, self._col_b = first._col_a, first._col_b

        def per_block(name: str) -> np.ndarray:
            return np.concatenate(
                [
                    np.repeat(getattr(p, name)[None, :], k, axis=0)
                    for p, k in zip(problems, n_blocks, strict=True)
                ]
            )

        self.block_log_utd = per_block("log_utd")
        self.block_log_params = per_block("log_params")

    def log_predict_blocks(
        self, theta: np.ndarray, blocks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._log_predict(theta, self.block_log_utd[blocks], self.block_log_params[blocks])

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise TypeError("a stack of problems predicts per block (log_predict_blocks)")


def fit_data_efficiency(
    utd: np.ndarray,
    critic_params: np.ndarray,
    D: np.ndarray,
    D_boot: np.ndarray | None = None,
    *,
    n_starts: int = 8,
    seed: int = 0,
    rules: DegeneracyRules | None = None,
) -> FitResult:
    """Fit Eq. 7.1 for one env and threshold.

    Args:
        utd, critic_params, D: ``[n]`` points (NaN D = threshold never reached: ignored).
        D_boot: optional ``[K, n]`` bootstrap resamples of D for parameter CIs.
        n_starts, seed: multi-start settings.
        rules: degeneracy rules of :func:`valuescale.analysis.fitting.fit_scaled` (bound,
            bootstrap interval); the collapse and loss rules need the table
            (:func:`flag_degenerate`).

    Returns:
        FitResult with params ``D_min, a_J, alpha_J, b_J, beta_J`` (+ ``_lo``/``_hi``).
    """
    return fit_data_efficiency_many(
        [(utd, critic_params, D, D_boot)], n_starts=n_starts, seed=seed, rules=rules
    )[0]


def fit_data_efficiency_many(
    fits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    n_starts: int = 8,
    seed: int = 0,
    rules: DegeneracyRules | None = None,
) -> list[FitResult]:
    """:func:`fit_data_efficiency` of every ``(utd, critic_params, D, D_boot)``, with the same
    results, optimised in batches (:func:`valuescale.analysis.fitting.fit_scaled_many`)."""
    names = ("alpha_J", "beta_J", "D_min", "a_J", "b_J")
    results: list[FitResult | None] = [None] * len(fits)
    todo, problems = [], []
    for i, (utd, critic_params, D, D_boot) in enumerate(fits):
        try:
            problems.append((DataEfficiencyProblem(utd, critic_params, D), D, D_boot))
            todo.append(i)
        except FitDataError as err:
            results[i] = failed_result(names, err.status, err.reason, _n_finite(D))
    fitted = fit_scaled_many(problems, n_starts=n_starts, seed=seed, rules=rules)
    for i, result in zip(todo, fitted, strict=True):
        results[i] = result
    return [_reorder(r) for r in results]  # type: ignore[arg-type]


def fit_shared_exponents(
    utd: np.ndarray,
    critic_params: np.ndarray,
    D: np.ndarray,
    group: np.ndarray,
    D_boot: np.ndarray | None = None,
    *,
    n_starts: int = 8,
    seed: int = 0,
    rules: DegeneracyRules | None = None,
) -> list[FitResult]:
    """Joint fit of Eq. 7.1 over groups (envs) sharing alpha_J and beta_J.

    Args:
        group: ``[n]`` integer group index 0..G-1 of every point.

    Returns:
        One FitResult per group, each with that group's D_min, a_J, b_J and the shared exponents;
        ``loss`` and ``n`` are the group's own. A failed joint fit fails every group.
    """
    return fit_shared_exponents_many(
        [(utd, critic_params, D, group, D_boot)], n_starts=n_starts, seed=seed, rules=rules
    )[0]


def fit_shared_exponents_many(
    fits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    n_starts: int = 8,
    seed: int = 0,
    rules: DegeneracyRules | None = None,
) -> list[list[FitResult]]:
    """:func:`fit_shared_exponents` of every ``(utd, critic_params, D, group, D_boot)``, with
    the same results, optimised in batches (:func:`valuescale.analysis.fitting.fit_scaled_many`:
    joint fits with the same groups of points share one)."""
    results: list[list[FitResult] | None] = [None] * len(fits)
    todo, problems = [], []
    for i, (utd, critic_params, D, group, D_boot) in enumerate(fits):
        group = np.asarray(group, dtype=int)
        n_groups = int(group.max()) + 1 if group.size else 0
        try:
            problem = DataEfficiencyProblem(utd, critic_params, D, group)
            if n_groups < 2:
                raise FitDataError(STATUS_FAILED, "shared exponents need at least 2 envs")
        except FitDataError as err:
            results[i] = [
                _reorder(failed_result(DE_PARAMS, err.status, err.reason, _n_finite(D[group == g])))
                for g in range(max(n_groups, 1))
            ]
            continue
        todo.append(i)
        problems.append((problem, D, D_boot))
    joints = fit_scaled_many(problems, n_starts=n_starts, seed=seed, rules=rules)
    for i, joint in zip(todo, joints, strict=True):
        utd, critic_params, D, group, _ = fits[i]
        results[i] = _split_joint(joint, utd, critic_params, D, np.asarray(group, dtype=int))
    return results  # type: ignore[return-value]


def _split_joint(
    joint: FitResult, utd: np.ndarray, critic_params: np.ndarray, D: np.ndarray, group: np.ndarray
) -> list[FitResult]:
    """One FitResult per group of a joint fit (its own D_min, a_J, b_J, loss and n)."""
    n_groups = int(group.max()) + 1
    D = np.asarray(D, dtype=float)
    results = []
    for g in range(n_groups):
        params, lo, hi = {}, {}, {}
        for name in DE_PARAMS:
            key = name if name in ("alpha_J", "beta_J") else f"{name}/{g}"
            params[name] = joint.params[key]
            lo[name] = joint.lo.get(key, np.nan)
            hi[name] = joint.hi.get(key, np.nan)
        in_group = (group == g) & np.isfinite(D) & (D > 0)
        loss = joint.loss
        if joint.ok and in_group.any():
            pred = predict_D(params, np.asarray(utd)[in_group], np.asarray(critic_params)[in_group])
            loss = float(np.mean((np.log(pred) - np.log(D[in_group])) ** 2))
        results.append(
            FitResult(
                params,
                loss,
                joint.status,
                joint.reason,
                int(in_group.sum()),
                lo,
                hi,
                joint.n_boot_ok,
                joint.n_boot,
            )
        )
    return results


def _reorder(result: FitResult) -> FitResult:
    """Order params as DE_PARAMS."""
    result.params = {k: result.params[k] for k in DE_PARAMS}
    result.lo = {k: result.lo.get(k, np.nan) for k in DE_PARAMS}
    result.hi = {k: result.hi.get(k, np.nan) for k in DE_PARAMS}
    return result


def _n_finite(D: np.ndarray) -> int:
    D = np.asarray(D, dtype=float)
    return int(np.sum(np.isfinite(D) & (D > 0)))


# --------------------------------------------------------------------------------------------
# Which rows feed the fits, and their bootstrap resamples
# --------------------------------------------------------------------------------------------


def exclude_points(df: pd.DataFrame, rules: Sequence[Mapping[str, object]] | None) -> pd.DataFrame:
    """``df`` without the rows that an ``analysis.fits.exclude`` rule leaves out of the fits.

    A rule holds selectors (:data:`EXCLUDE_SELECTORS`: ``agent``, ``source``, ``suite``, ``env``;
    each a name or a list of names; absent = any) and excluded values (:data:`EXCLUDE_VALUES`:
    lists of ``utd``, ``width``, ``critic_params``). A row is left out when it matches every
    selector of a rule and one of its excluded values (``{suite: dmc-hard, utd: [1]}`` leaves
    σ = 1 out of the DMC-hard envs). Works on crossings, fit points and best-batch-size tables.

    Raises:
        ValueError: a rule has an unknown key or no excluded values (naming the rule).
    """
    if not rules or df.empty:
        return df
    drop = np.zeros(len(df), dtype=bool)
    suites = None
    for i, rule in enumerate(rules):
        unknown = set(rule) - set(EXCLUDE_SELECTORS) - set(EXCLUDE_VALUES)
        if unknown or not set(rule) & set(EXCLUDE_VALUES):
            raise ValueError(
                f"analysis.fits.exclude[{i}] = {dict(rule)}: "
                + (
                    f"unknown key(s) {sorted(unknown)}"
                    if unknown
                    else f"names none of {list(EXCLUDE_VALUES)} to leave out"
                )
            )
        match = np.ones(len(df), dtype=bool)
        for key in EXCLUDE_SELECTORS:
            if key not in rule:
                continue
            wanted = rule[key]
            names = {str(v) for v in (wanted if isinstance(wanted, list | tuple) else [wanted])}
            if key == "suite":
                if suites is None:
                    suites = np.array([suite_of(str(e)) for e in df["env"]])
                values = suites
            elif key in df:
                values = df[key].astype(str).to_numpy()
            else:
                values = np.full(len(df), None)
            match &= np.isin(values, list(names))
        hit = np.zeros(len(df), dtype=bool)
        for key in EXCLUDE_VALUES:
            if key in rule and key in df:
                listed = np.asarray(list(rule[key]), dtype=float)  # type: ignore[call-overload]
                column = pd.to_numeric(df[key], errors="coerce").to_numpy(dtype=float)
                hit |= np.isin(column, listed)
        drop |= match & hit
    return df[~drop]


def select_fit_points(
    crossings: pd.DataFrame,
    best_batch_size: pd.DataFrame | None = None,
    *,
    sources: Collection[str] | None = None,
    batch_choice: Mapping[str, str] | None = None,
    min_batch_sizes: int = 3,
) -> pd.DataFrame:
    """One crossing row per (env, agent, [source,] utd, critic_params, threshold_idx).

    With ``best_batch_size`` (columns env, agent, utd, critic_params, B_star and, when both
    tables have them, source and lr): every config (and learning rate) uses the batch size
    closest in log to its ``B_star`` (the same batch size at every threshold; ties go to the
    smaller batch size). Configs without a finite ``B_star``, or calls without the table, use
    the batch size with the smallest D at each threshold (NaN counts as never). Where several
    learning rates remain, the smallest D at each threshold is taken. Agents whose rule in
    ``batch_choice`` is ``min_D_top`` use, per config (and learning rate) with at least
    ``min_batch_sizes`` batch sizes, the batch size with the smallest D at the top threshold (ties:
    the smaller batch size; where none reaches it, the smallest D at the highest threshold one
    reaches), at every threshold; their configs with fewer batch sizes are left out.

    Args:
        crossings: the ``crossings`` table (optionally with a ``D_boot`` column).
        best_batch_size: the ``best_batch_size`` table, or None.
        sources: keep only these ``source`` values (e.g. ``["fitted_bs"]`` for the fits).
        batch_choice: agent -> rule (:data:`BATCH_CHOICES`); agents not listed use ``B_star``.
        min_batch_sizes: batch sizes a config needs under ``min_D_top``.

    Returns:
        The chosen rows (all crossing columns kept) plus ``B_star``, ``suite`` and
        ``batch_choice`` (``"B_star"``, ``"min_D"`` or ``"min_D_top"``).
    """
    rules = dict(batch_choice or {})
    unknown = {r for r in rules.values() if r not in BATCH_CHOICES}
    if unknown:
        raise ValueError(f"unknown batch choice(s) {sorted(unknown)}; expected {BATCH_CHOICES}")
    top_agents = [a for a, r in rules.items() if r == "min_D_top"]
    if top_agents and len(crossings):
        by_top = crossings["agent"].astype(str).isin(top_agents)
        rest = select_fit_points(crossings[~by_top], best_batch_size, sources=sources)
        top = _min_d_top_points(crossings[by_top], sources, min_batch_sizes)
        out = pd.concat([rest, top], ignore_index=True) if len(top) else rest
        return out.sort_values(_config_keys(out) + ["threshold_idx"]).reset_index(drop=True)
    df = crossings
    if sources is not None:
        df = df[df["source"].isin(list(sources))]
    df = df.copy()
    df["_order"] = np.arange(len(df))
    df["_Dkey"] = df["D"].astype(float).fillna(np.inf)
    keys = _config_keys(df)
    sub_keys = [*keys, "lr"] if "lr" in df else keys
    if best_batch_size is not None and len(best_batch_size):
        merge_keys = [k for k in sub_keys if k in best_batch_size]
        bstar = best_batch_size[[*merge_keys, "B_star"]].drop_duplicates(merge_keys)
        df = df.drop(columns="B_star", errors="ignore").merge(bstar, on=merge_keys, how="left")
    else:
        df["B_star"] = np.nan
    with np.errstate(all="ignore"):
        df["_dist"] = np.abs(
            np.log(df["batch_size"].astype(float)) - np.log(df["B_star"].astype(float))
        )
    has_bstar = np.isfinite(df["_dist"])
    chosen = df[has_bstar]
    if len(chosen):
        # The batch size closest to B_star (smallest batch size on ties) per config and lr.
        best_b = (
            chosen.sort_values(["_dist", "batch_size"])
            .drop_duplicates(sub_keys)[[*sub_keys, "batch_size"]]
            .rename(columns={"batch_size": "_best_b"})
        )
        chosen = chosen.merge(best_b, on=sub_keys)
        chosen = chosen[chosen["batch_size"] == chosen["_best_b"]].drop(columns="_best_b")
    chosen = chosen.assign(batch_choice="B_star")
    rest = df[~has_bstar].assign(batch_choice="min_D")
    out = pd.concat([chosen, rest], ignore_index=True)
    out = out.sort_values(["_Dkey", "batch_size", "_order"]).drop_duplicates(
        [*keys, "threshold_idx"]
    )
    out = out.sort_values([*keys, "threshold_idx"]).drop(columns=["_order", "_Dkey", "_dist"])
    out["suite"] = [suite_of(env) for env in out["env"]]
    return out.reset_index(drop=True)


def _min_d_top_points(
    crossings: pd.DataFrame, sources: Collection[str] | None, min_batch_sizes: int
) -> pd.DataFrame:
    """The ``min_D_top`` rows of :func:`select_fit_points`."""
    df = crossings
    if sources is not None:
        df = df[df["source"].isin(list(sources))]
    columns = [*crossings.columns, "B_star", "suite", "batch_choice"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    keys = _config_keys(df)
    sub_keys = [*keys, "lr"] if "lr" in df else keys
    df = df.copy()
    counts = df.groupby(sub_keys, dropna=False)["batch_size"].transform("nunique")
    df = df[counts >= min_batch_sizes]
    if df.empty:
        return pd.DataFrame(columns=columns)
    reached = df[np.isfinite(df["D"].astype(float))]
    # per config and batch size: the highest threshold reached and D there
    best = (
        reached.assign(_neg_t=-reached["threshold_idx"])
        .sort_values([*sub_keys, "_neg_t", "D", "batch_size"])
        .drop_duplicates(sub_keys)[[*sub_keys, "batch_size"]]
        .rename(columns={"batch_size": "_best_b"})
    )
    out = df.merge(best, on=sub_keys)
    out = out[out["batch_size"] == out["_best_b"]].drop(columns="_best_b")
    out = out.assign(B_star=np.nan, batch_choice="min_D_top")
    # several learning rates: the smallest D at each threshold
    out = out.assign(_Dkey=out["D"].astype(float).fillna(np.inf))
    out = out.sort_values(["_Dkey", "batch_size"]).drop_duplicates([*keys, "threshold_idx"])
    out = out.drop(columns="_Dkey").sort_values([*keys, "threshold_idx"])
    out["suite"] = [suite_of(env) for env in out["env"]]
    return out.reset_index(drop=True)


def batch_choice_of(fits: pd.DataFrame) -> dict[str, str]:
    """agent -> batch-size rule recorded in a fits table's ``batch_choice`` column (so that
    evaluations and figures select the points the fits used)."""
    if "batch_choice" not in fits or fits.empty:
        return {}
    sel = fits[fits["batch_choice"].isin(BATCH_CHOICES)]
    return {str(a): str(r) for a, r in zip(sel["agent"], sel["batch_choice"], strict=True)}


def _config_keys(df: pd.DataFrame) -> list[str]:
    """(env, agent, [source,] utd, critic_params): one fit data point per threshold."""
    return [k for k in ("env", "agent", "source", "utd", "critic_params") if k in df]


def attach_bootstrap_table(crossings: pd.DataFrame, bootstrap: pd.DataFrame) -> pd.DataFrame:
    """Add a ``D_boot`` column from the long ``crossings_bootstrap`` table.

    Args:
        crossings: crossing rows.
        bootstrap: one row per (config, threshold_idx, boot_idx) with the resample's ``D``; the
            config columns are those shared with ``crossings`` among env, agent, utd, width,
            critic_params, batch_size, lr, source.

    Returns:
        ``crossings`` with ``D_boot`` (a length-K array ordered by boot_idx, or None).
    """
    keys = [
        k
        for k in ("env", "agent", "utd", "width", "critic_params", "batch_size", "lr", "source")
        if k in crossings and k in bootstrap
    ]
    keys.append("threshold_idx")
    boot = bootstrap.sort_values("boot_idx")
    grouped = boot.groupby(keys, sort=False, dropna=False)["D"].agg(
        lambda d: d.to_numpy(dtype=float)
    )
    arrays = grouped.rename("D_boot").reset_index()
    out = crossings.drop(columns="D_boot", errors="ignore").merge(arrays, on=keys, how="left")
    out["D_boot"] = [v if isinstance(v, np.ndarray) else None for v in out["D_boot"]]
    return out


def attach_bootstrap(
    crossings: pd.DataFrame,
    bootstrap: Mapping[tuple, np.ndarray],
    key_columns: Sequence[str],
) -> pd.DataFrame:
    """Add a ``D_boot`` column (length-K array per row) from per-config bootstrap crossings.

    Args:
        crossings: crossing rows with ``threshold_idx`` and the ``key_columns``.
        bootstrap: ``{config key tuple: [K, n_thresholds] array}``, the key in ``key_columns``
            order (e.g. the output of the crossings step).
        key_columns: columns that identify a config.

    Rows whose config is missing get ``None``.
    """
    values = []
    for row in crossings[list(key_columns) + ["threshold_idx"]].itertuples(index=False):
        arr = bootstrap.get(tuple(row[:-1]))
        values.append(None if arr is None else np.asarray(arr, dtype=float)[:, int(row[-1])])
    out = crossings.copy()
    out["D_boot"] = values
    return out


def bootstrap_matrix(
    points: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> np.ndarray | None:
    """``[K, n]`` bootstrap resamples of D for the rows of ``points``.

    Uses the ``D_boot`` arrays where present; otherwise a parametric log-normal resample
    ``D * exp(z * D_std / D)`` (with a ``D_boot_nan_frac`` share of NaNs, if that column exists);
    rows with neither repeat D. Returns ``None`` when ``points`` has neither column.
    """
    has_boot = "D_boot" in points and points["D_boot"].notna().any()
    if not has_boot and "D_std" not in points:
        return None
    D = points["D"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    if has_boot:
        lengths = {len(v) for v in points["D_boot"] if v is not None and np.size(v)}
        n_boot = max(lengths) if lengths else n_boot
    out = np.repeat(D[None, :], n_boot, axis=0)
    if "D_std" in points:
        std = points["D_std"].to_numpy(dtype=float)
        cv = np.where(np.isfinite(std) & (D > 0), std / np.where(D > 0, D, 1.0), 0.0)
        out = D[None, :] * np.exp(rng.standard_normal((n_boot, D.size)) * cv[None, :])
        if "D_boot_nan_frac" in points:
            frac = np.nan_to_num(points["D_boot_nan_frac"].to_numpy(dtype=float), nan=0.0)
            out[rng.random((n_boot, D.size)) < frac[None, :]] = np.nan
    if has_boot:
        for j, arr in enumerate(points["D_boot"]):
            if arr is not None and np.size(arr) == n_boot:
                out[:, j] = np.asarray(arr, dtype=float)
    return out


def env_medians(points: pd.DataFrame) -> dict[str, float]:
    """Per env, the authors' normaliser of task averaging (paper Appendix D).

    The median of D over every threshold and every (σ, N) configuration of the env that reaches
    the env's top threshold (its highest ``threshold_idx``); configurations that never reach it are
    left out. Envs where none reaches it are absent.

    Args:
        points: fit points of one agent and source (env, utd, critic_params, threshold_idx, D),
            every threshold.
    """
    out: dict[str, float] = {}
    for env, data in points.groupby("env", sort=True):
        ok = _reaches_top(data)
        D = data.loc[ok, "D"].to_numpy(float)
        D = D[np.isfinite(D)]
        if D.size:
            out[str(env)] = float(np.median(D))
    return out


def _reaches_top(data: pd.DataFrame) -> np.ndarray:
    """Mask of the rows of one env whose configuration reaches the env's top threshold."""
    keys = [k for k in ("agent", "source", "utd", "critic_params") if k in data]
    top = data["threshold_idx"].max()
    at_top = data[(data["threshold_idx"] == top) & np.isfinite(data["D"].astype(float))]
    reached = pd.MultiIndex.from_frame(at_top[keys])
    return np.asarray(pd.MultiIndex.from_frame(data[keys]).isin(reached))


def format_medians(medians: Mapping[str, float]) -> str:
    """``env=value;...``: the ``norm_medians`` column of the averaged fits."""
    return ";".join(f"{env}={value:.10g}" for env, value in sorted(medians.items()))


def parse_medians(text: object) -> dict[str, float] | None:
    """Inverse of :func:`format_medians`; None for an empty or missing value."""
    if not isinstance(text, str) or not text:
        return None
    out = {}
    for item in text.split(";"):
        env, _, value = item.partition("=")
        out[env] = float(value)
    return out


def average_over_envs(
    points: pd.DataFrame,
    D_boot: np.ndarray | None = None,
    scope: str | None = None,
    *,
    medians: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Task-averaged data of one threshold index over the envs in ``points``.

    Without ``medians`` (``per_threshold``): each env's D is divided by its median over the grid
    points every env reached, averaged over envs, and multiplied by the median of the medians
    (the same for every bootstrap resample); only those points are kept. With ``medians`` (the
    authors' convention, :func:`env_medians`): each env's D is divided by its given median, the
    mean is over the envs that have the point (any point some env has is kept), times the median
    of all the given medians; envs without a median are left out. Envs are matched on
    (utd, width) when all rows have a width, else on (utd, critic_params); the averaged N is the
    geometric mean of the N of the envs averaged at that point.

    Returns:
        ``(averaged points with env = scope, averaged [K, m] resamples or None)``.
    """
    if medians is not None:
        keep_env = points["env"].astype(str).isin(list(medians)).to_numpy()
        points = points[keep_env].reset_index(drop=True)
        D_boot = None if D_boot is None else D_boot[:, keep_env]
    envs = sorted(points["env"].unique())
    by_width = "width" in points and points["width"].notna().all() and len(points) > 0
    match = ["utd", "width"] if by_width else ["utd", "critic_params"]
    finite = points[np.isfinite(points["D"].astype(float))]
    counts = finite.groupby(match)["env"].nunique()
    common = counts.index if medians is not None else counts[counts == len(envs)].index
    columns = ["env", *match, "critic_params", "D"]
    if len(common) == 0:
        return pd.DataFrame(columns=columns), None if D_boot is None else np.empty((len(D_boot), 0))
    idx = pd.MultiIndex.from_frame(points[match])
    keep = idx.isin(common)
    sel = points[keep].reset_index(drop=True)
    boot = None if D_boot is None else D_boot[:, np.asarray(keep)]
    order = {key: i for i, key in enumerate(common)}
    m, n_env = len(common), len(envs)
    D = np.full((n_env, m), np.nan)
    log_n = np.full((n_env, m), np.nan)
    Db = None if boot is None else np.full((boot.shape[0], n_env, m), np.nan)
    e = pd.Index(envs).get_indexer(sel["env"])
    i = np.array([order[key] for key in zip(*(sel[c] for c in match), strict=True)], dtype=int)
    D[e, i] = sel["D"].to_numpy(float)
    log_n[e, i] = np.log(sel["critic_params"].to_numpy(float))
    if Db is not None:
        Db[:, e, i] = boot
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN points/resamples stay NaN
        if medians is None:
            averaged = _normalised_mean(D)
        else:
            med = np.array([medians[str(e)] for e in envs], dtype=float)
            averaged = _fixed_normalised_mean(D, med)
        has = np.isfinite(D)
        mean_log_n = np.nanmean(np.where(has, log_n, np.nan), axis=0)
    out = pd.DataFrame(list(common), columns=match)
    if by_width:
        out["critic_params"] = np.exp(mean_log_n)
    out["D"] = averaged
    out.insert(0, "env", scope or "+".join(envs))
    avg_boot = None
    if Db is not None:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples stay NaN
            avg_boot = _normalised_mean(Db) if medians is None else _fixed_normalised_mean(Db, med)
    return out, avg_boot


def _fixed_normalised_mean(D: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """Mean over the envs present (axis -2) of D / medians[env], times the median of medians."""
    return np.nanmean(D / medians[:, None], axis=-2) * float(np.median(medians))


def averaged_fit_points(fit: Mapping[str, object], points: pd.DataFrame) -> pd.DataFrame:
    """The averaged (σ, N, D) points of one ``averaged`` fit row, normalised as the fit was.

    Args:
        fit: a row of ``fits_data_efficiency`` (variant ``averaged``; ``envs`` lists the envs it
            averaged, ``norm_medians`` the authors'-convention medians if it used them).
        points: points of the fit's agent at the fit's threshold (any envs).
    """
    envs_field = fit.get("envs")
    envs = [e for e in str(envs_field or "").split(",") if e]
    sub = points[points["env"].isin(envs)] if envs else points
    medians = parse_medians(fit.get("norm_medians"))
    if medians is None and (sub.empty or sub["env"].nunique() < max(len(envs), 2)):
        return pd.DataFrame(columns=["env", "utd", "critic_params", "D"])
    avg, _ = average_over_envs(sub.reset_index(drop=True), None, str(fit["scope"]), medians=medians)
    return avg


def _normalised_mean(D: np.ndarray) -> np.ndarray:
    """Mean over envs (axis -2) of D / median_env(D), times the median of the medians.

    Medians skip NaNs (a resample that missed one point keeps its other points); a point that
    is NaN for any env stays NaN.
    """
    med = np.nanmedian(D, axis=-1, keepdims=True)
    return np.mean(D / med, axis=-2) * np.median(med, axis=-2)


# --------------------------------------------------------------------------------------------
# The fits table
# --------------------------------------------------------------------------------------------


class _FitBatch:
    """The data-efficiency fits of a table, requested while its rows are laid out and solved
    together (:func:`fit_data_efficiency_many`: one batched optimisation for all the thresholds
    and envs, with the results of one fit at a time)."""

    def __init__(self, **fit_kw: object) -> None:
        self.fit_kw = fit_kw
        self.requests: list[tuple] = []
        self.results: list[FitResult] = []
        self.shared_requests: list[tuple] = []
        self.shared_results: list[list[FitResult]] = []

    def fit(
        self, utd: np.ndarray, critic_params: np.ndarray, D: np.ndarray, D_boot: np.ndarray | None
    ) -> _PendingFit:
        """Request :func:`fit_data_efficiency` of these points (its result after :meth:`run`)."""
        self.requests.append((utd, critic_params, D, D_boot))
        return _PendingFit(self, len(self.requests) - 1)

    def fit_shared(
        self,
        utd: np.ndarray,
        critic_params: np.ndarray,
        D: np.ndarray,
        group: np.ndarray,
        D_boot: np.ndarray | None,
    ) -> _PendingFit:
        """Request :func:`fit_shared_exponents` (``.member(g)``: group ``g``'s result)."""
        self.shared_requests.append((utd, critic_params, D, group, D_boot))
        return _PendingFit(self, len(self.shared_requests) - 1, shared=True)

    def run(self) -> None:
        self.results = fit_data_efficiency_many(self.requests, **self.fit_kw)  # type: ignore[arg-type]
        self.shared_results = fit_shared_exponents_many(self.shared_requests, **self.fit_kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _PendingFit:
    batch: _FitBatch
    index: int
    shared: bool = False
    group: int | None = None

    def member(self, group: int) -> _PendingFit:
        return _PendingFit(self.batch, self.index, self.shared, group)

    def get(self) -> FitResult:
        if self.shared:
            return self.batch.shared_results[self.index][self.group or 0]
        return self.batch.results[self.index]


def _row_with(
    extra: Mapping[str, object], result: FitResult | _PendingFit, **kwargs: object
) -> dict:
    """:func:`_row` with ``extra`` columns."""
    row = _row(result, **kwargs)  # type: ignore[arg-type]
    row.update(extra)
    return row


def _row(
    result: FitResult | _PendingFit,
    *,
    scope: str,
    lead: Mapping[str, object],
    variant: str,
    group: str,
    threshold_idx: int,
    threshold: float,
    data: pd.DataFrame,
    envs: str = "",
) -> dict:
    """One row of fits_data_efficiency.csv."""
    if isinstance(result, _PendingFit):
        result = result.get()
    row: dict = {
        "scope": scope,
        **lead,
        "variant": variant,
        "group": group,
        "envs": envs or scope,
        "threshold_idx": threshold_idx,
        "threshold": threshold,
    }
    for name in (*DE_PARAMS, *LOGLINEAR_PARAMS):
        row[name] = result.params.get(name, np.nan)
        row[f"{name}_lo"] = result.lo.get(name, np.nan)
        row[f"{name}_hi"] = result.hi.get(name, np.nan)
    finite = np.isfinite(data["D"].to_numpy(float))
    row.update(
        loss=result.loss,
        status=result.status,
        reason=result.reason,
        n_points=result.n,
        n_boot_ok=result.n_boot_ok,
    )
    for name in ("utd", "critic_params", "D"):
        low, high = _finite_range(data[name], finite)
        key = "D_obs" if name == "D" else name
        row[f"{key}_min"], row[f"{key}_max"] = low, high
    return row


def _finite_range(column: pd.Series, finite: np.ndarray) -> tuple[object, object]:
    """``(min, max)`` of ``column`` on the ``finite`` rows, NaN skipped, as pandas gives them
    (NaN when no row is finite); numpy's own reductions for plain numeric columns (cheaper)."""
    if not finite.any():
        return np.nan, np.nan
    if column.dtype.kind in "if":
        values = column.to_numpy()[finite]
        if column.dtype.kind == "f":
            values = values[~np.isnan(values)]
            if values.size == 0:
                return np.nan, np.nan
        return values.min(), values.max()
    sel = column[finite]
    return sel.min(), sel.max()


def _loglinear(data: pd.DataFrame) -> FitResult:
    fit = fit_loglinear(
        {
            "utd": data["utd"].to_numpy(float),
            "critic_params": data["critic_params"].to_numpy(float),
        },
        data["D"].to_numpy(float),
    )
    return fit


def fit_data_efficiency_table(
    points: pd.DataFrame,
    *,
    variants: Iterable[str] = VARIANTS,
    n_boot: int = DEFAULT_N_BOOT,
    n_starts: int = 8,
    seed: int = 0,
    task_average: str = "per_threshold",
    rules: DegeneracyRules | None = None,
) -> pd.DataFrame:
    """Fit Eq. 7.1 (and the log-linear baseline) for every scope, variant and threshold.

    Args:
        points: output of :func:`select_fit_points` (one row per env, agent, utd, critic_params,
            threshold_idx; columns D, D_std and optionally D_boot, width, suite).
        variants: subset of ``("per_env", "shared", "averaged", "loglinear")``.
        n_boot: bootstrap resamples when they are drawn from D_std (0 = no CIs).
        n_starts, seed: multi-start settings of every fit.
        task_average: normalisation of the ``averaged`` variant (:data:`TASK_AVERAGES`).
        rules: when a fit is ``degenerate`` rather than ``ok`` (:func:`flag_degenerate`).

    Returns:
        ``fits_data_efficiency.csv``: scope, agent, [source,] variant, group (env, or suite for
        shared/averaged), envs (those in a shared/averaged fit), threshold_idx, threshold,
        D_min, a_J, alpha_J, b_J, beta_J, log_intercept, slope_utd, slope_critic_params (each with
        ``_lo``/``_hi``), loss, status, reason, n_points, n_boot_ok, the data ranges utd_min,
        utd_max, critic_params_min, critic_params_max, D_obs_min, D_obs_max, and on averaged rows
        ``task_average`` and ``norm_medians`` (the authors' per-env medians, else empty).
    """
    variants = tuple(variants)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; expected a subset of {VARIANTS}")
    if task_average not in TASK_AVERAGES:
        raise ValueError(f"unknown task_average {task_average!r}; expected one of {TASK_AVERAGES}")
    points = points.reset_index(drop=True)
    if "suite" not in points:
        points = points.assign(suite=[suite_of(env) for env in points["env"]])
    boot_all = bootstrap_matrix(points, n_boot, seed) if n_boot > 0 else None
    rules = rules or DegeneracyRules()
    fit_kw = {"n_starts": n_starts, "seed": seed, "rules": rules}
    # the per-env and averaged fits are solved in one batch at the end; their rows (callables
    # until then) are made afterwards, in order
    batch = _FitBatch(**fit_kw)
    rows: list[dict | Callable[[], dict]] = []

    lead_keys = ["agent", "source"] if "source" in points else ["agent"]
    for key, data in points.groupby([*lead_keys, "env", "threshold_idx"], sort=True):
        *lead_values, env, t_idx = key
        boot = None if boot_all is None else boot_all[:, data.index.to_numpy()]
        meta = {
            "scope": env,
            "lead": dict(zip(lead_keys, lead_values, strict=True)),
            "group": env,
            "threshold_idx": int(t_idx),
            "threshold": float(data["threshold"].iloc[0]),
            "data": data,
        }
        if "per_env" in variants:
            fit = batch.fit(
                data["utd"].to_numpy(float),
                data["critic_params"].to_numpy(float),
                data["D"].to_numpy(float),
                boot,
            )
            rows.append(partial(_row, fit, variant="per_env", **meta))
        if "loglinear" in variants:
            rows.append(_row(_loglinear(data), variant="loglinear", **meta))

    # the authors' task averaging: per (agent, source, suite) the per-env medians over every
    # threshold, and which rows belong to configurations that reach their env's top threshold
    normalisers: dict[tuple, tuple[dict[str, float], np.ndarray]] = {}
    if "averaged" in variants and task_average == "authors":
        for key, suite_points in points.groupby([*lead_keys, "suite"], sort=False):
            top_ok = np.zeros(len(points), dtype=bool)
            for _, env_points in suite_points.groupby("env"):
                top_ok[env_points.index.to_numpy()] = _reaches_top(env_points)
            normalisers[tuple(key)] = (env_medians(suite_points), top_ok)

    def averaged_row(avg, avg_boot, why: str, extra: dict, suite: str, meta: dict):
        """The task-averaged fit's row of one suite and threshold (failed with ``why`` if set)."""
        if why:
            fit = failed_result(DE_PARAMS, STATUS_FAILED, why)
        else:
            fit = batch.fit(
                avg["utd"].to_numpy(float),
                avg["critic_params"].to_numpy(float),
                avg["D"].to_numpy(float),
                avg_boot,
            )
        return partial(
            _row_with,
            extra,
            fit,
            scope=suite,
            variant="averaged",
            group=suite,
            threshold=np.nan,
            data=avg,
            **meta,
        )

    for key, data in points.groupby([*lead_keys, "suite", "threshold_idx"], sort=True):
        *lead_values, suite, t_idx = key
        if data["env"].nunique() < 2:
            continue
        finite = data.assign(_ok=np.isfinite(data["D"].astype(float)))
        counts = finite.groupby("env")["_ok"].sum()
        envs = sorted(counts[counts >= MIN_POINTS_PER_ENV].index)
        left_out = sorted(counts[counts < MIN_POINTS_PER_ENV].index)
        used = data[data["env"].isin(envs)]
        boot = None if boot_all is None else boot_all[:, used.index.to_numpy()]
        suite_meta = {
            "lead": dict(zip(lead_keys, lead_values, strict=True)),
            "threshold_idx": int(t_idx),
            "envs": ",".join(envs),
        }
        if "shared" in variants:
            joint = (
                None
                if len(envs) < 2
                else batch.fit_shared(
                    used["utd"].to_numpy(float),
                    used["critic_params"].to_numpy(float),
                    used["D"].to_numpy(float),
                    np.array([envs.index(e) for e in used["env"]]),
                    boot,
                )
            )
            for env in sorted(data["env"].unique()):
                env_data = data[data["env"] == env]
                fit: FitResult | _PendingFit
                if env in envs and joint is not None:
                    fit = joint.member(envs.index(env))
                else:
                    why = (
                        f"fewer than {MIN_POINTS_PER_ENV} finite D"
                        if env in left_out
                        else "fewer than 2 envs with data"
                    )
                    fit = failed_result(DE_PARAMS, STATUS_FAILED, why, int(counts[env]))
                rows.append(
                    partial(
                        _row,
                        fit,
                        scope=env,
                        variant="shared",
                        group=suite,
                        threshold=float(env_data["threshold"].iloc[0]),
                        data=env_data,
                        **suite_meta,
                    )
                )
        if "averaged" in variants and task_average == "authors":
            medians, top_ok = normalisers.get((*lead_values, suite)) or ({}, None)
            if top_ok is None:
                top_ok = np.zeros(len(points), dtype=bool)
            avg_rows = data[top_ok[data.index.to_numpy()] & data["env"].isin(list(medians))]
            boot = None if boot_all is None else boot_all[:, avg_rows.index.to_numpy()]
            avg, avg_boot = average_over_envs(avg_rows, boot, scope=suite, medians=medians)
            avg_envs = sorted(
                avg_rows.loc[np.isfinite(avg_rows["D"].astype(float)), "env"].unique()
            )
            why = ""
            if len(medians) < 2:
                why = "fewer than 2 envs reach their top threshold"
            elif len(avg) == 0:
                why = "no env reached this threshold"
            extra = {
                "task_average": task_average,
                "norm_medians": format_medians(medians),
                "n_envs_at_threshold": len(avg_envs),
            }
            meta = {**suite_meta, "envs": ",".join(sorted(medians))}
            rows.append(averaged_row(avg, avg_boot, why, extra, suite, meta))
        elif "averaged" in variants:
            avg, avg_boot = average_over_envs(used, boot, scope=suite)
            why = ""
            if len(envs) < 2:
                why = f"fewer than 2 envs with {MIN_POINTS_PER_ENV} finite D"
            elif len(avg) == 0:
                why = "no (utd, N) point reached by every env of the suite"
            extra = {
                "task_average": task_average,
                "norm_medians": "",
                "n_envs_at_threshold": len(envs),
            }
            rows.append(averaged_row(avg, avg_boot, why, extra, suite, suite_meta))
    batch.run()
    table = [row() if callable(row) else row for row in rows]
    return flag_degenerate(pd.DataFrame(table), rules)


def _absent_reason(row: pd.Series, rules: DegeneracyRules) -> str:
    """Why one fit row's σ or N term is absent from its data (changes D by almost nothing)."""
    try:
        u_lo, u_hi = float(row["utd_min"]), float(row["utd_max"])
        n_lo, n_hi = float(row["critic_params_min"]), float(row["critic_params_max"])
    except KeyError:
        return ""
    if not (np.all(np.isfinite([u_lo, u_hi, n_lo, n_hi])) and u_hi > u_lo > 0 and n_hi > n_lo > 0):
        return ""
    law = {name: float(row[name]) for name in DE_PARAMS}
    with np.errstate(all="ignore"):
        effect_u = float(np.log(predict_D(law, u_lo, n_hi) / predict_D(law, u_hi, n_hi)))
        effect_n = float(np.log(predict_D(law, u_hi, n_lo) / predict_D(law, u_hi, n_hi)))
    reasons = [
        f"the {symbol} term is absent: {symbol} {lo:.3g}-{hi:.3g} changes the fitted D by "
        f"{100 * np.expm1(effect):.2g} % (limit {100 * np.expm1(rules.min_effect):.2g} %)"
        for symbol, effect, lo, hi in (("σ", effect_u, u_lo, u_hi), ("N", effect_n, n_lo, n_hi))
        if np.isfinite(effect) and effect < rules.min_effect
    ]
    return "; ".join(reasons)


def _collapse_reason(row: pd.Series, rules: DegeneracyRules) -> str:
    """Why one fit row's exponent has collapsed onto a missing D_min, or ``""``."""
    d_obs_min = float(row.get("D_obs_min", np.nan))
    d_min = float(row["D_min"])
    if not (np.isfinite(d_obs_min) and d_obs_min > 0 and d_min < rules.d_min_fraction * d_obs_min):
        return ""
    reasons = []
    for exponent, prefactor, name, symbol in (
        ("alpha_J", "a_J", "utd", "σ"),
        ("beta_J", "b_J", "critic_params", "N"),
    ):
        lo, hi = float(row.get(f"{name}_min", np.nan)), float(row.get(f"{name}_max", np.nan))
        value = float(row[exponent])
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo > 0 and np.isfinite(value)):
            continue
        span = value * np.log(hi / lo)
        if span < rules.collapse_span:
            reasons.append(
                f"{exponent} = {value:.3g} collapsed: the {symbol} term changes by "
                f"{100 * np.expm1(span):.0f} % over {symbol} {lo:.3g}-{hi:.3g} while D_min = "
                f"{d_min:.3g} (smallest D {d_obs_min:.3g}), so the term stands in for D_min "
                f"({prefactor} = {float(row[prefactor]):.3g})"
            )
    return "; ".join(reasons)


def flag_degenerate(table: pd.DataFrame, rules: DegeneracyRules | None = None) -> pd.DataFrame:
    """Mark the Eq. 7.1 rows of a fits table whose law is degenerate (status ``degenerate``).

    On top of the checks of :func:`valuescale.analysis.fitting.fit_scaled` (parameters at a
    bound, exponents with bootstrap intervals over ``rules.ci_decades`` decades), a row with
    status ``ok`` becomes ``degenerate`` when

    * **an exponent collapsed**: ``D_min < rules.d_min_fraction * D_obs_min`` and a term changes
      by less than ``rules.collapse_span`` (log units) over the data,
      ``alpha_J ln(utd_max / utd_min)`` or ``beta_J ln(N_max / N_min)``: the term is nearly
      constant and plays the floor (then ``a_J`` or ``b_J`` runs to absurd values, e.g. 1e168,
      and the compute-optimal σ* ~ R^(-1/alpha_J) leaves the data by orders of magnitude);
    * **a term is absent**: σ (N) over its data range changes the fitted D by less than
      ``rules.min_effect`` in log units (at the largest N, resp. σ): the data show no such
      dependence and the law cannot place σ* (N*);
    * **its loss is far above the other thresholds'**: more than ``rules.loss_factor`` times the
      median loss of the same (agent, source, variant, scope) over its thresholds (with at
      least 3 thresholds; the median counted as at least ``rules.loss_floor``).

    ``loglinear`` rows are left alone. The reason says which rule and the numbers.
    """
    rules = rules or DegeneracyRules()
    if table.empty or "status" not in table:
        return table
    out = table.copy()
    out["reason"] = out["reason"].astype(object).where(out["reason"].notna(), "")
    law_rows = out["variant"].astype(str) != "loglinear"
    for idx in out.index[law_rows & (out["status"] == STATUS_OK)]:
        reason = _collapse_reason(out.loc[idx], rules) or _absent_reason(out.loc[idx], rules)
        if reason:
            out.loc[idx, ["status", "reason"]] = [STATUS_DEGENERATE, reason]
    family = [c for c in ("agent", "source", "variant", "scope") if c in out]
    loss = out["loss"].astype(float)
    finite = law_rows & np.isfinite(loss)
    if finite.any():
        grouped = out[finite].groupby(family, dropna=False)["loss"]
        median = grouped.transform("median").astype(float)
        count = grouped.transform("size")
        reference = np.maximum(median, rules.loss_floor)
        high = (loss[finite] > rules.loss_factor * reference) & (count >= 3)
        for idx in high[high].index:
            if out.loc[idx, "status"] != STATUS_OK:
                continue
            out.loc[idx, ["status", "reason"]] = [
                STATUS_DEGENERATE,
                f"loss {loss[idx]:.3g} is {loss[idx] / reference[idx]:.0f}x the median "
                f"{reference[idx]:.3g} of this law over its {int(count[idx])} thresholds "
                f"(limit {rules.loss_factor:g}x; median at least {rules.loss_floor:g})",
            ]
    return out


# --------------------------------------------------------------------------------------------
# Evaluation helpers
# --------------------------------------------------------------------------------------------


def prediction_errors(
    fits: pd.DataFrame,
    points: pd.DataFrame,
    variant: str = "per_env",
    *,
    fit_source: str | None = None,
) -> pd.DataFrame:
    """Predicted D and relative error ``|D_hat - D| / D`` of one variant's fits at ``points``.

    ``points`` rows (env, agent, utd, critic_params, threshold_idx, D) are matched to the fit
    rows with ``scope == env`` (pass :func:`average_over_envs` output, whose env is the suite,
    for the averaged variant). Rows without a usable fit get NaN. Points may come from another
    source (interpolated/extrapolated sets) than the fits; ``fit_source`` picks the fits' source
    when the table holds several.

    Returns:
        ``points`` with ``D_pred``, ``rel_error`` and ``fit_status`` added.

    Raises:
        ValueError: if the fits hold several sources and ``fit_source`` is not given.
    """
    sel = fits[fits["variant"] == variant]
    if fit_source is not None:
        sel = sel[sel["source"] == fit_source]
    keys = ["scope", "agent", "threshold_idx"]
    if sel.duplicated(keys).any():
        raise ValueError("fits hold several rows per scope/threshold: pass fit_source")
    cols = [*keys, *DE_PARAMS, *LOGLINEAR_PARAMS, "status"]
    merged = points[["env", "agent", "threshold_idx"]].merge(
        sel[cols].rename(columns={"scope": "env", "status": "fit_status"}),
        on=["env", "agent", "threshold_idx"],
        how="left",
    )
    usable = merged["fit_status"].eq("ok").to_numpy()
    params = {name: merged[name].to_numpy(float) for name in (*DE_PARAMS, *LOGLINEAR_PARAMS)}
    if variant != "loglinear":
        params = {k: v for k, v in params.items() if k in DE_PARAMS}
    with np.errstate(all="ignore"):
        pred = predict_D(
            params, points["utd"].to_numpy(float), points["critic_params"].to_numpy(float)
        )
    pred = np.where(usable, pred, np.nan)
    out = points.copy()
    out["D_pred"] = pred
    out["rel_error"] = relative_error(pred, points["D"].to_numpy(float))
    out["fit_status"] = merged["fit_status"].to_numpy()
    return out


def mean_relative_error(errors: pd.DataFrame, by: Sequence[str] = ("env",)) -> pd.DataFrame:
    """Mean (and median) relative error over the finite rows of :func:`prediction_errors`."""
    finite = errors[np.isfinite(errors["rel_error"])]
    return (
        finite.groupby(list(by))["rel_error"]
        .agg(mean_rel_error="mean", median_rel_error="median", n="size")
        .reset_index()
    )


def fit_sources(crossings: pd.DataFrame, holdout: Sequence[str]) -> list[str]:
    """Curve sources the laws are fitted on: every source not held out, sorted."""
    return sorted(set(crossings["source"].astype(str)) - set(holdout))


def cap_bootstrap(points: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Keep the first ``n_boot`` resamples of every ``D_boot`` array."""
    if "D_boot" not in points:
        return points
    out = points.copy()
    out["D_boot"] = [None if v is None else np.asarray(v)[:n_boot] for v in out["D_boot"]]
    return out
