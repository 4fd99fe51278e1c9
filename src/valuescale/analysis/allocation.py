"""Compute and budget allocation from fitted data-efficiency laws (method.md §3.6-3.8).

Compute to reach a threshold: ``C_J = k * σ * N * D_J``. The authors' code uses
``k = 10 * 256`` (10 FLOPs per parameter and sample, 256 a fixed "accounting" batch); paper 2
used ``10 * N * B * σ * D`` with the real batch size. :class:`ComputeModel` makes the constant
and the batch convention explicit.

With ``D_J(σ, N) = D_min + (a/σ)**alpha + (b/N)**beta`` and ``R = D_0 - D_min``:

* **Compute-optimal** (minimise σN s.t. D_J = D_0; since D is fixed this minimises C_J).
  With ``u = (a/σ)**alpha``, ``v = (b/N)**beta``, ``u + v = R``, ``log σN = const - log(u)/alpha
  - log(v)/beta``; the Lagrange condition ``alpha u = beta v`` gives ``u = R beta/(alpha+beta)``,
  so ``σ* = a ((1 + alpha/beta)/R)**(1/alpha)``, ``N* = b ((1 + beta/alpha)/R)**(1/beta)``.
  Eliminating R: ``log N* = (alpha/beta) log σ* + log b - (alpha/beta) log a
  + log(beta/alpha)/beta`` -- the compute-optimal line, slope ``alpha/beta``.
* **Budget-optimal** (minimise F = C_J + delta D_J). Along the compute-optimal path
  ``σ*N* = P R**(-gamma)`` with ``P = a b (1+alpha/beta)**(1/alpha) (1+beta/alpha)**(1/beta)``
  and ``gamma = 1/alpha + 1/beta``, so ``F(R) = (D_min + R) (k P R**(-gamma) + delta)``.
  ``dF/dR = 0`` reduces to ``delta R**(gamma+1) = k P (gamma D_min + (gamma - 1) R)``, whose log
  form is strictly increasing in log R: a unique root, found by bracketing + brentq. (Any other
  (σ, N) with the same D costs more compute, so the 2-D minimum lies on this path.) With
  ``D_min = 0`` and ``gamma <= 1`` F has no interior minimum (status ``degenerate``).
  For the real-batch convention with a batch-size law, :func:`budget_optimal_numeric` minimises
  F on a 2-D log grid and polishes with L-BFGS-B.

Budget lines (the authors' route, :func:`fit_budget_lines`): the budget-optimal points of the
thresholds give (F_i*, D_i*, C_i*, σ_i*, N_i*); log D* and log C* are fitted against log F on the
lowest budgets (15 of 20), the top ones held out, and σ* and N* are then **derived** from each
point's own threshold law at the fitted D: ``(σ̂_i, N̂_i) = compute_optimal(law_i, D̂*(F_i))``
(the budget optimum lies on the compute-optimal path, where D fixes σ and N). R² of σ*, N* is that
of the derived values against the budget-optimal ones (log space, all points). The direct log-log
regressions of σ* and N* on F are kept as a diagnostic (``*_direct`` columns): across thresholds
the laws differ, so σ*, N* need not follow a power law of F, and these regressions can flip sign.

Degenerate fits (status ``degenerate``, see :func:`valuescale.analysis.data_efficiency.
flag_degenerate`) are never allocated: the tables hold one row per such fit with status
``skipped`` and the fit's reason (:func:`skipped_rows`).

Tables (columns documented on the functions): ``compute_optimal.csv``
(:func:`compute_optimal_table`), ``budget_optimal.csv`` (:func:`budget_optimal_table`),
``budget_fits.csv`` (:func:`budget_fit_table`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import brentq, minimize, minimize_scalar

from valuescale.analysis.data_efficiency import DE_PARAMS, predict_D
from valuescale.tasks import DEFAULT_DELTA, TASKS, task_spec

FLOPS_PER_PARAM_SAMPLE = 10.0
ACCOUNTING_BATCH = 256.0
DEFAULT_K = FLOPS_PER_PARAM_SAMPLE * ACCOUNTING_BATCH  # 2560
N_HELDOUT = 5
_LN10 = np.log(10.0)
#: Status of an allocation row whose fit is degenerate (not allocated).
STATUS_SKIPPED = "skipped"


@dataclass(frozen=True)
class ComputeModel:
    """How compute is counted: ``C_J = flops_per_param_sample * batch * σ * N * D_J``.

    Attributes:
        batch_convention: ``"accounting"`` uses the fixed ``accounting_batch`` (the authors'
            code; ``k = 10 * 256``); ``"real"`` uses the run's real batch size (paper 2).
        flops_per_param_sample: FLOPs per critic parameter and sample of one update (10).
        accounting_batch: the fixed batch of the accounting convention (256).
    """

    batch_convention: str = "accounting"
    flops_per_param_sample: float = FLOPS_PER_PARAM_SAMPLE
    accounting_batch: float = ACCOUNTING_BATCH

    def __post_init__(self) -> None:
        if self.batch_convention not in ("accounting", "real"):
            raise ValueError(
                f"batch_convention must be 'accounting' or 'real', got {self.batch_convention!r}"
            )

    @property
    def k(self) -> float:
        """``C / (σ N D)`` of the accounting convention."""
        return self.flops_per_param_sample * self.accounting_batch

    def coefficient(self, batch_size: np.ndarray | float | None = None) -> np.ndarray | float:
        """``C / (σ N D)``: ``k`` (accounting) or ``flops_per_param_sample * B`` (real)."""
        if self.batch_convention == "accounting":
            return self.k
        if batch_size is None:
            raise ValueError("batch_convention='real' needs the batch size")
        return self.flops_per_param_sample * np.asarray(batch_size, dtype=float)


def compute_to_threshold(
    utd: np.ndarray | float,
    critic_params: np.ndarray | float,
    D: np.ndarray | float,
    *,
    model: ComputeModel = ComputeModel(),
    batch_size: np.ndarray | float | None = None,
) -> np.ndarray:
    """``C_J = coefficient * σ * N * D_J`` (see :class:`ComputeModel`)."""
    return (
        model.coefficient(batch_size)
        * np.asarray(utd, dtype=float)
        * np.asarray(critic_params, dtype=float)
        * np.asarray(D, dtype=float)
    )


def _law(params: Mapping[str, float]) -> tuple[float, float, float, float, float]:
    return tuple(float(params[k]) for k in ("D_min", "a_J", "alpha_J", "b_J", "beta_J"))


def law_is_usable(params: Mapping[str, float]) -> str:
    """``""`` if ``params`` is a usable Eq. 7.1 law, else why not."""
    try:
        d_min, a, alpha, b, beta = _law(params)
    except (KeyError, TypeError, ValueError):
        return "missing data-efficiency parameters"
    values = np.array([d_min, a, alpha, b, beta])
    if not np.all(np.isfinite(values)):
        return "non-finite law parameters"
    if d_min < 0 or min(a, alpha, b, beta) <= 0:
        return "law parameters must be positive (D_min >= 0)"
    return ""


def compute_optimal(
    params: Mapping[str, float], D_target: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form compute-optimal ``(σ*, N*)`` reaching J with ``D_target`` env steps.

    NaN where ``D_target <= D_min`` (the threshold cannot be reached with that little data).
    """
    d_min, a, alpha, b, beta = _law(params)
    remaining = np.asarray(D_target, dtype=float) - d_min
    with np.errstate(all="ignore"):
        ok = remaining > 0
        r = np.where(ok, remaining, np.nan)
        utd = a * ((1.0 + alpha / beta) / r) ** (1.0 / alpha)
        n = b * ((1.0 + beta / alpha) / r) ** (1.0 / beta)
    return utd, n


def compute_optimal_line(params: Mapping[str, float]) -> tuple[float, float]:
    """``(slope, intercept)`` of ``log10 N* = intercept + slope * log10 σ*`` (slope alpha/beta)."""
    _, a, alpha, b, beta = _law(params)
    slope = alpha / beta
    intercept = (np.log(b) - slope * np.log(a) + np.log(beta / alpha) / beta) / _LN10
    return float(slope), float(intercept)


def _path_coefficient(params: Mapping[str, float]) -> tuple[float, float]:
    """``(log P, gamma)`` with ``σ*N* = P R**(-gamma)`` along the compute-optimal path."""
    _, a, alpha, b, beta = _law(params)
    log_p = np.log(a) + np.log(b) + np.log1p(alpha / beta) / alpha + np.log1p(beta / alpha) / beta
    return float(log_p), 1.0 / alpha + 1.0 / beta


def _bracket_root(fun: Callable[[float], float], x0: float, lo_limit: float, hi_limit: float):
    """``(lo, hi)`` with ``fun(lo) < 0 < fun(hi)`` for increasing ``fun``, or None."""
    lo, hi, step = x0 - 1.0, x0 + 1.0, 2.0
    while fun(lo) >= 0:
        lo -= step
        step *= 2
        if lo < lo_limit:
            return None
    step = 2.0
    while fun(hi) <= 0:
        hi += step
        step *= 2
        if hi > hi_limit:
            return None
    return lo, hi


@dataclass(frozen=True)
class Allocation:
    """One allocation: budget F, σ, N, D and compute C (NaN with a reason when infeasible)."""

    budget: float
    utd: float
    critic_params: float
    D: float
    compute: float
    status: str = "ok"
    reason: str = ""


def _nan_allocation(status: str, reason: str, budget: float = np.nan) -> Allocation:
    return Allocation(budget, np.nan, np.nan, np.nan, np.nan, status, reason)


def _allocation_at(params: Mapping[str, float], D: float, delta: float, k: float) -> Allocation:
    utd, n = compute_optimal(params, D)
    compute = k * float(utd) * float(n) * D
    return Allocation(compute + delta * D, float(utd), float(n), D, compute)


def budget_optimal(params: Mapping[str, float], delta: float, k: float = DEFAULT_K) -> Allocation:
    """Minimise ``F = k σ N D_J + delta D_J`` over (σ, N) for one threshold's law.

    Returns the optimum (F*, σ*, N*, D*, C*) or a NaN allocation with status
    ``degenerate``/``failed`` and the reason.
    """
    reason = law_is_usable(params)
    if reason:
        return _nan_allocation("failed", reason)
    if not (np.isfinite(delta) and delta > 0 and np.isfinite(k) and k > 0):
        return _nan_allocation("failed", "delta and k must be positive")
    d_min = float(params["D_min"])
    log_p, gamma = _path_coefficient(params)
    log_kp = np.log(k) + log_p
    log_delta = np.log(delta)

    def phi(x: float) -> float:
        # log(delta R^(gamma+1)) - log(k P (gamma D_min + (gamma - 1) R)), increasing in x.
        rhs = gamma * d_min + (gamma - 1.0) * np.exp(x)
        if rhs <= 0:
            return 1e300
        return log_delta + (gamma + 1.0) * x - log_kp - np.log(rhs)

    if d_min <= 0 and gamma <= 1:
        return _nan_allocation(
            "degenerate", "no interior minimum of F (D_min = 0 and 1/alpha + 1/beta <= 1)"
        )
    x0 = np.log(d_min) if d_min > 0 else 0.0
    bracket = _bracket_root(phi, x0, -700.0, 700.0)
    if bracket is None:
        return _nan_allocation("failed", "could not bracket the optimum of F")
    x = brentq(phi, *bracket, xtol=1e-13, rtol=1e-14, maxiter=500)
    return _allocation_at(params, d_min + float(np.exp(x)), delta, k)


def budget_optimal_numeric(
    params: Mapping[str, float],
    delta: float,
    *,
    compute_coefficient: Callable[[np.ndarray, np.ndarray], np.ndarray] | float = DEFAULT_K,
    utd_range: tuple[float, float] = (1e-3, 1e4),
    params_range: tuple[float, float] = (1e3, 1e13),
    grid_points: int = 241,
) -> Allocation:
    """Minimise ``F = c(σ, N) σ N D_J + delta D_J`` numerically (2-D log grid + L-BFGS-B).

    ``compute_coefficient`` is ``k`` or a function ``c(σ, N)`` (e.g. ``10 * B*(σ, N)`` for the
    real-batch convention). An optimum on the edge of the search box is reported ``degenerate``.
    """
    reason = law_is_usable(params)
    if reason:
        return _nan_allocation("failed", reason)

    def coeff(utd: np.ndarray, n: np.ndarray) -> np.ndarray:
        if callable(compute_coefficient):
            return np.asarray(compute_coefficient(utd, n), dtype=float)
        return np.full(np.broadcast(utd, n).shape, float(compute_coefficient))

    def log_f(log_u: np.ndarray, log_n: np.ndarray) -> np.ndarray:
        utd, n = np.exp(log_u), np.exp(log_n)
        D = predict_D(params, utd, n)
        return np.log(D) + np.log(coeff(utd, n) * utd * n + delta)

    lu = np.linspace(np.log(utd_range[0]), np.log(utd_range[1]), grid_points)
    ln = np.linspace(np.log(params_range[0]), np.log(params_range[1]), grid_points)
    grid_u, grid_n = np.meshgrid(lu, ln, indexing="ij")
    with np.errstate(all="ignore"):
        values = log_f(grid_u, grid_n)
    values = np.where(np.isfinite(values), values, np.inf)
    i, j = np.unravel_index(np.argmin(values), values.shape)
    res = minimize(
        lambda z: float(log_f(np.array(z[0]), np.array(z[1]))),
        x0=np.array([lu[i], ln[j]]),
        method="L-BFGS-B",
        bounds=[(lu[0], lu[-1]), (ln[0], ln[-1])],
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    utd, n = float(np.exp(res.x[0])), float(np.exp(res.x[1]))
    D = float(predict_D(params, utd, n))
    compute = float(coeff(np.array(utd), np.array(n))) * utd * n * D
    edge = min(i, j) == 0 or max(i, j) == grid_points - 1
    status, why = ("degenerate", "optimum on the edge of the search box") if edge else ("ok", "")
    return Allocation(compute + delta * D, utd, n, D, compute, status, why)


def propose_allocation(
    params: Mapping[str, float],
    budgets: np.ndarray,
    delta: float,
    *,
    k: float = DEFAULT_K,
) -> pd.DataFrame:
    """The most data-efficient (σ*, N*, D*) reaching one threshold J within each budget.

    For budget F: minimise D_J subject to ``k σ N D_J + delta D_J <= F``. The optimum lies on the
    compute-optimal path; the smallest feasible D is the root of ``F(R) = budget`` on the branch
    ``R <= R*`` of the budget-optimal point (more budget -> less data, down to D_min). Budgets
    below the budget-optimal F* cannot reach J: NaN with status ``infeasible``.

    Returns:
        Columns budget, utd, critic_params, D, compute, status, reason.
    """
    budgets = np.atleast_1d(np.asarray(budgets, dtype=float))
    optimum = budget_optimal(params, delta, k)
    rows = []
    for budget in budgets:
        if optimum.status != "ok":
            alloc = _nan_allocation(optimum.status, optimum.reason, budget)
        elif not budget >= optimum.budget * (1 - 1e-12):
            alloc = _nan_allocation(
                "infeasible", f"budget below the minimum {optimum.budget:.4g} to reach J", budget
            )
        else:
            alloc = _smallest_D_within(params, budget, delta, k, optimum)
        rows.append(alloc.__dict__)
    return pd.DataFrame(rows)


def _smallest_D_within(
    params: Mapping[str, float], budget: float, delta: float, k: float, optimum: Allocation
) -> Allocation:
    d_min = float(params["D_min"])
    log_p, gamma = _path_coefficient(params)
    x_star = np.log(optimum.D - d_min)
    log_budget = np.log(budget)

    def excess(x: float) -> float:
        # log F(R) - log budget; decreasing in x for x <= x_star. Negated to be increasing.
        r = np.exp(x)
        log_cost = np.logaddexp(np.log(k) + log_p - gamma * x, np.log(delta))
        return -(np.log(d_min + r) + log_cost - log_budget)

    if excess(x_star) <= 0:  # budget == F* up to rounding
        return _allocation_at(params, optimum.D, delta, k)
    lo = x_star - 1.0
    step = 1.0
    while excess(lo) > 0:
        lo -= step
        step *= 2
        if lo < -700:
            return _nan_allocation("failed", "could not bracket the allocation", budget)
    x = brentq(excess, lo, x_star, xtol=1e-13, rtol=1e-14, maxiter=500)
    alloc = _allocation_at(params, d_min + float(np.exp(x)), delta, k)
    return Allocation(budget, alloc.utd, alloc.critic_params, alloc.D, alloc.compute)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

_ID_COLUMNS = ("scope", "agent", "source", "variant", "group", "threshold_idx", "threshold")


def delta_for(scope: str, overrides: Mapping[str, float] | None = None) -> float:
    """delta of an env (paper Table 2), of a suite (median over its envs), or the default."""
    if overrides and scope in overrides:
        return float(overrides[scope])
    spec = task_spec(scope)
    if spec is not None:
        return spec.delta
    suite = [t.delta for t in TASKS.values() if t.suite == scope]
    return float(np.median(suite)) if suite else DEFAULT_DELTA


def _ids(row: pd.Series) -> dict:
    return {c: row[c] for c in _ID_COLUMNS if c in row}


def _usable_rows(fits: pd.DataFrame, variants: tuple[str, ...]) -> pd.DataFrame:
    sel = fits[fits["variant"].isin(variants)] if "variant" in fits else fits
    return sel[sel["status"] == "ok"] if "status" in sel else sel


def skipped_rows(
    fits: pd.DataFrame, variants: tuple[str, ...] = ("per_env", "shared", "averaged")
) -> pd.DataFrame:
    """One allocation row per degenerate fit of ``variants``: its ids, status ``skipped`` and
    ``reason = "degenerate fit: <the fit's reason>"`` (no allocation is computed from it)."""
    if "status" not in fits:
        return pd.DataFrame()
    sel = fits[fits["variant"].isin(variants)] if "variant" in fits else fits
    sel = sel[sel["status"] == "degenerate"]
    rows = [
        {
            **_ids(fit),
            "status": STATUS_SKIPPED,
            "reason": f"degenerate fit: {fit.get('reason', '') or ''}",
        }
        for _, fit in sel.iterrows()
    ]
    return pd.DataFrame(rows)


def compute_optimal_table(
    fits: pd.DataFrame,
    *,
    variants: tuple[str, ...] = ("per_env", "shared", "averaged"),
    n_targets: int = 5,
    k: float = DEFAULT_K,
    include_skipped: bool = True,
) -> pd.DataFrame:
    """``compute_optimal.csv``: closed-form optima over a range of data targets D_0.

    For every usable fit row, ``n_targets`` values of D_0 spaced geometrically over the observed
    range ``[D_obs_min, D_obs_max]`` (those above D_min; ``[1.25, 4] * D_min`` without it).

    Columns: scope, agent, variant, threshold_idx, threshold, D_target, utd_star,
    critic_params_star, compute_star (``k σ* N* D_0``), k, line_slope, line_intercept
    (``log10 N* = line_intercept + line_slope log10 σ*``), status, reason. With
    ``include_skipped``, one row per degenerate fit with status ``skipped`` (:func:`skipped_rows`).
    """
    rows = []
    for _, fit in _usable_rows(fits, variants).iterrows():
        params = {name: fit[name] for name in DE_PARAMS}
        reason = law_is_usable(params)
        d_min = float(params["D_min"])
        lo = fit.get("D_obs_min", np.nan)
        hi = fit.get("D_obs_max", np.nan)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > d_min):
            lo, hi = 1.25 * d_min, 4.0 * d_min
        lo = max(lo, 1.01 * d_min) if d_min > 0 else lo
        targets = np.geomspace(lo, hi, n_targets) if hi > lo else np.array([hi])
        if reason:
            slope = intercept = np.nan
        else:
            slope, intercept = compute_optimal_line(params)
        utd, n = (
            (np.full(targets.shape, np.nan),) * 2 if reason else compute_optimal(params, targets)
        )
        for D0, u, nn in zip(targets, utd, n, strict=True):
            rows.append(
                {
                    **_ids(fit),
                    "D_target": D0,
                    "utd_star": u,
                    "critic_params_star": nn,
                    "compute_star": k * u * nn * D0,
                    "k": k,
                    "line_slope": slope,
                    "line_intercept": intercept,
                    "status": "failed" if reason else ("ok" if np.isfinite(u) else "infeasible"),
                    "reason": reason or ("" if np.isfinite(u) else "D_target <= D_min"),
                }
            )
    table = _with_skipped(pd.DataFrame(rows), fits, variants, include_skipped)
    value_columns = ("D_target", "utd_star", "critic_params_star", "compute_star", "k")
    return _with_columns(table, (*value_columns, "line_slope", "line_intercept"))


def budget_optimal_table(
    fits: pd.DataFrame,
    *,
    variants: tuple[str, ...] = ("per_env", "shared", "averaged"),
    k: float = DEFAULT_K,
    delta: Mapping[str, float] | None = None,
    include_skipped: bool = True,
) -> pd.DataFrame:
    """``budget_optimal.csv``: the budget-optimal point of every usable threshold fit.

    delta per scope from :func:`delta_for` (``delta`` overrides by scope name). With
    ``include_skipped``, every degenerate fit adds a row with status ``skipped`` and its reason
    (:func:`skipped_rows`).

    Columns: scope, agent, variant, group, threshold_idx, threshold, delta, budget (F*), utd (σ*),
    critic_params (N*), D (D*), compute (C*), status, reason.
    """
    rows = []
    for _, fit in _usable_rows(fits, variants).iterrows():
        params = {name: fit[name] for name in DE_PARAMS}
        d = delta_for(str(fit["scope"]), delta)
        alloc = budget_optimal(params, d, k)
        rows.append({**_ids(fit), "delta": d, **alloc.__dict__})
    table = _with_skipped(pd.DataFrame(rows), fits, variants, include_skipped)
    return _with_columns(table, ("delta", "budget", "utd", "critic_params", "D", "compute"))


def _with_skipped(
    table: pd.DataFrame, fits: pd.DataFrame, variants: tuple[str, ...], include_skipped: bool
) -> pd.DataFrame:
    """``table`` and, with ``include_skipped``, a ``skipped`` row per degenerate fit."""
    skipped = skipped_rows(fits, variants) if include_skipped else pd.DataFrame()
    if not len(skipped):
        return table
    return pd.concat([table, skipped], ignore_index=True) if len(table) else skipped


def _with_columns(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """``table`` with every value column present (NaN where no usable fit gave one: a table of
    skipped rows only still has the columns its readers select)."""
    for column in columns:
        if column not in table:
            table[column] = np.nan
    return table


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if y.size < 2 or ss_tot <= 1e-24 * max(1.0, float(np.sum(y**2))):
        return np.nan
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot


def _line_fit(x: np.ndarray, y: np.ndarray, n_fit: int) -> tuple[float, float, np.ndarray]:
    """``(slope, intercept, prediction at every x)`` of a line fitted to the first n_fit points."""
    slope, intercept = np.polyfit(x[:n_fit], y[:n_fit], 1)
    return float(slope), float(intercept), intercept + slope * x


def _r2_split(y: np.ndarray, pred: np.ndarray, n_fit: int, n_heldout: int) -> dict[str, float]:
    """R² over all points, the fitted ones and the held-out ones (finite pairs only)."""
    ok = np.isfinite(y) & np.isfinite(pred)
    idx = np.arange(y.size)
    fitted, held = ok & (idx < n_fit), ok & (idx >= n_fit)
    return {
        "r2": _r2(y[ok], pred[ok]),
        "r2_fit": _r2(y[fitted], pred[fitted]),
        "r2_heldout": _r2(y[held], pred[held]) if n_heldout > 0 else np.nan,
    }


def derive_allocations(laws: pd.DataFrame, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(σ̂, N̂)`` of each row's law (columns :data:`DE_PARAMS`) reaching ``D`` compute-optimally.

    NaN where the law is unusable or ``D <= D_min``.
    """
    utd = np.full(len(laws), np.nan)
    n = np.full(len(laws), np.nan)
    for i, (_, row) in enumerate(laws.iterrows()):
        params = {name: float(row[name]) for name in DE_PARAMS}
        if law_is_usable(params) or not np.isfinite(D[i]):
            continue
        with np.errstate(all="ignore"):
            u, nn = compute_optimal(params, D[i])
        utd[i], n[i] = float(u), float(nn)
    return utd, n


def budget_line_points(
    points: pd.DataFrame, *, n_heldout: int = N_HELDOUT
) -> tuple[pd.DataFrame, int]:
    """The usable budget-optimal points of one scope, sorted by budget, with the lines' values.

    Adds ``D_line`` and ``compute_line`` (the log-log lines of D* and C* against F, fitted on the
    lowest ``len - n_heldout`` points, evaluated at every F*) and, when the points carry their
    law (columns :data:`DE_PARAMS`), ``utd_derived`` / ``critic_params_derived`` (σ̂, N̂ of
    :func:`derive_allocations` at ``D_line``). Returns ``(points, n_fit)``; with fewer than 3
    fitted points the line columns are NaN.
    """
    ok = points[(points["status"] == "ok") & np.isfinite(points["budget"].astype(float))]
    ok = ok.sort_values("budget").reset_index(drop=True)
    n_fit = len(ok) - n_heldout
    for column in ("D_line", "compute_line", "utd_derived", "critic_params_derived"):
        ok[column] = np.nan
    if n_fit < 3:
        return ok, n_fit
    x = np.log10(ok["budget"].to_numpy(float))
    for quantity, column in (("D", "D"), ("compute", "compute")):
        _, _, pred = _line_fit(x, np.log10(ok[column].to_numpy(float)), n_fit)
        ok[f"{quantity}_line"] = 10**pred
    if set(DE_PARAMS) <= set(ok.columns):
        utd, n = derive_allocations(ok, ok["D_line"].to_numpy(float))
        ok["utd_derived"], ok["critic_params_derived"] = utd, n
    return ok, n_fit


def fit_budget_lines(
    points: pd.DataFrame, *, n_heldout: int = N_HELDOUT
) -> list[dict[str, float | str]]:
    """Budget lines of one scope's budget-optimal points (the authors' route, module docstring).

    Points are sorted by budget; the lowest ``len - n_heldout`` are fitted, the top
    ``n_heldout`` held out. ``D`` and ``C``: ``log10 q = intercept + slope log10 F``, ``r2`` its
    R² (log space) over all points, ``r2_fit`` / ``r2_heldout`` over the fitted / held-out ones.
    ``sigma`` and ``N`` (``method = "derived"`` when the points carry their laws): the derived
    σ̂, N̂ of :func:`budget_line_points` scored against σ*, N* (``r2``...), ``slope`` /
    ``intercept`` a log-log line through the derived values of the fitted points (a summary for
    extrapolation). The direct regression of σ* (N*) on F, as in the D and C rows, gives
    ``slope_direct``, ``intercept_direct``, ``r2_direct`` (all rows; the same as the line for D
    and C). Without the laws σ and N use the direct regression (``method = "direct"``).
    """
    ok, n_fit = budget_line_points(points, n_heldout=n_heldout)
    n = len(ok)
    derived = "utd_derived" in ok and np.isfinite(ok["utd_derived"].to_numpy(float)).any()
    out = []
    for quantity, column, derived_column in (
        ("D", "D", None),
        ("C", "compute", None),
        ("sigma", "utd", "utd_derived"),
        ("N", "critic_params", "critic_params_derived"),
    ):
        row: dict[str, float | str] = {
            "quantity": quantity,
            "method": "line",
            "n_fit": max(n_fit, 0),
            "n_heldout": min(n_heldout, n),
        }
        if n_fit < 3:
            row.update(
                slope=np.nan,
                intercept=np.nan,
                r2=np.nan,
                r2_fit=np.nan,
                r2_heldout=np.nan,
                slope_direct=np.nan,
                intercept_direct=np.nan,
                r2_direct=np.nan,
                status="failed",
                reason=f"{n} budget-optimal points; need {n_heldout + 3}",
            )
            out.append(row)
            continue
        x = np.log10(ok["budget"].to_numpy(float))
        y = np.log10(ok[column].to_numpy(float))
        slope, intercept, pred = _line_fit(x, y, n_fit)
        direct = _r2_split(y, pred, n_fit, n_heldout)
        row.update(
            slope=slope,
            intercept=intercept,
            **direct,
            slope_direct=slope,
            intercept_direct=intercept,
            r2_direct=direct["r2"],
            status="ok",
            reason="",
        )
        if derived_column is not None:
            if derived:
                values = np.log10(ok[derived_column].to_numpy(float))
                good = np.isfinite(values[:n_fit])
                row["method"] = "derived"
                row.update(_r2_split(y, values, n_fit, n_heldout))
                if good.sum() >= 2:
                    d_slope, d_intercept = np.polyfit(x[:n_fit][good], values[:n_fit][good], 1)
                    row.update(slope=float(d_slope), intercept=float(d_intercept))
                else:
                    row.update(slope=np.nan, intercept=np.nan)
                n_bad = int(np.sum(~np.isfinite(values)))
                if n_bad:
                    row["reason"] = f"{n_bad} point(s) with D_line <= D_min: no derived value"
            else:
                row["method"] = "direct"
        out.append(row)
    return out


def budget_fit_table(
    budget_points: pd.DataFrame,
    *,
    n_heldout: int = N_HELDOUT,
    fits: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``budget_fits.csv``: :func:`fit_budget_lines` per (scope, agent, [source,] variant).

    ``fits``: the data-efficiency fits the points came from; their laws (matched on scope, agent,
    [source,] variant, threshold_idx) let σ* and N* be derived (the authors' route); without them
    σ and N are regressed directly.

    Columns: scope, agent, variant, quantity (D|C|sigma|N), method (line|derived|direct), slope,
    intercept (log10 q = intercept + slope log10 F), r2 (all points), r2_fit, r2_heldout,
    slope_direct, intercept_direct, r2_direct (direct regression, diagnostic), n_fit, n_heldout,
    status, reason.
    """
    budget_points = attach_laws(budget_points, fits)
    keys = [c for c in ("scope", "agent", "source", "variant") if c in budget_points]
    rows = []
    for key, data in budget_points.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for line in fit_budget_lines(data, n_heldout=n_heldout):
            rows.append({**dict(zip(keys, key, strict=True)), **line})
    return pd.DataFrame(rows)


def attach_laws(budget_points: pd.DataFrame, fits: pd.DataFrame | None) -> pd.DataFrame:
    """``budget_points`` with the law parameters (:data:`DE_PARAMS`) of the fit of each row."""
    if fits is None or not len(fits) or not len(budget_points):
        return budget_points
    keys = [
        c
        for c in ("scope", "agent", "source", "variant", "threshold_idx")
        if c in budget_points and c in fits
    ]
    laws = fits[[*keys, *DE_PARAMS]].drop_duplicates(keys)
    out = budget_points.drop(columns=[c for c in DE_PARAMS if c in budget_points])
    return out.merge(laws, on=keys, how="left")


def annotate_budget_points(
    budget_points: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    *,
    n_heldout: int = N_HELDOUT,
) -> pd.DataFrame:
    """``budget_points`` with ``D_line``, ``compute_line``, ``utd_derived`` and
    ``critic_params_derived`` of :func:`budget_line_points` per scope (NaN on rows not used)."""
    columns = ["D_line", "compute_line", "utd_derived", "critic_params_derived"]
    if not len(budget_points):
        return budget_points
    with_laws = attach_laws(budget_points, fits).assign(_row=np.arange(len(budget_points)))
    keys = [c for c in ("scope", "agent", "source", "variant") if c in with_laws]
    frames = [
        budget_line_points(data, n_heldout=n_heldout)[0][["_row", *columns]]
        for _, data in with_laws.groupby(keys, sort=False)
    ]
    values = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["_row"])
    out = budget_points.drop(columns=[c for c in columns if c in budget_points])
    out = out.assign(_row=np.arange(len(out))).merge(values, on="_row", how="left")
    return out.drop(columns="_row")


def propose_from_budget_lines(
    budget_fits: pd.DataFrame,
    budgets: np.ndarray,
    delta: float | None = None,
    law: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Evaluate one scope's budget lines at new budgets (extrapolation).

    Args:
        budget_fits: rows of :func:`budget_fit_table` for one (scope, agent, variant).
        budgets: budgets F.
        delta: if given, ``compute`` is ``F - delta D``; otherwise the C*(F) line.
        law: a data-efficiency law; σ and N are then derived from it at the D*(F) line
            (``compute_optimal(law, D*(F))``, the authors' route), else taken from the σ and N
            rows' lines.

    Returns:
        Columns budget, utd, critic_params, D, compute.
    """
    budgets = np.atleast_1d(np.asarray(budgets, dtype=float))
    lines = budget_fits.set_index("quantity")

    def line(q: str) -> np.ndarray:
        if q not in lines.index or lines.loc[q, "status"] != "ok":
            return np.full(budgets.shape, np.nan)
        return 10 ** (lines.loc[q, "intercept"] + lines.loc[q, "slope"] * np.log10(budgets))

    D = line("D")
    compute = budgets - delta * D if delta is not None else line("C")
    if law is not None and not law_is_usable(law):
        utd, n = compute_optimal(law, D)
    else:
        utd, n = line("sigma"), line("N")
    return pd.DataFrame(
        {
            "budget": budgets,
            "utd": utd,
            "critic_params": n,
            "D": D,
            "compute": compute,
        }
    )


# --------------------------------------------------------------------------------------------
# Critic size <-> width (BRO critic, two heads)
# --------------------------------------------------------------------------------------------


def params_from_width(
    width: np.ndarray | float, d_in: int, depth: int = 2, n_quantiles: int = 100
) -> np.ndarray:
    """Critic parameters N of two BroNet heads of ``width`` on ``d_in`` inputs.

    Per head: Dense(d_in->W) + LN, ``depth`` blocks of 2 x (Dense(W->W) + LN), Dense(W->n_q):
    ``2 depth W^2 + (d_in + 3 + n_q + 6 depth) W + n_q``; depth 2, n_q = 100 gives
    ``N = 2 (4 W^2 + (d_in + 115) W + 100)``.
    """
    w = np.asarray(width, dtype=float)
    return 2.0 * (2 * depth * w**2 + (d_in + 3 + n_quantiles + 6 * depth) * w + n_quantiles)


def width_from_params(
    critic_params: np.ndarray | float, d_in: int, depth: int = 2, n_quantiles: int = 100
) -> np.ndarray:
    """Inverse of :func:`params_from_width`: the (real-valued) width W of a critic with N params."""
    n = np.asarray(critic_params, dtype=float)
    qa = 4.0 * depth
    qb = 2.0 * (d_in + 3 + n_quantiles + 6 * depth)
    qc = 2.0 * n_quantiles - n
    return (-qb + np.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)


# --------------------------------------------------------------------------------------------
# Real-batch convention (C = flops x B(σ, N) x σ N D): numerical allocation
# --------------------------------------------------------------------------------------------


def compute_optimal_numeric(
    params: Mapping[str, float],
    D_target: float,
    coefficient: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[float, float]:
    """(σ*, N*) minimising ``coefficient(σ, N) σ N`` on the iso-D curve ``D_J(σ, N) = D_target``.

    On the curve, ``N(σ) = b / (D_target - D_min - (a/σ)^alpha)^(1/beta)`` for σ above
    ``a / (D_target - D_min)^(1/alpha)``; the minimum over log σ is found by a bounded scalar
    search. NaN where ``D_target <= D_min``.
    """
    d_min, a, alpha, b, beta = (float(params[k]) for k in DE_PARAMS)
    remaining = D_target - d_min
    if not remaining > 0:
        return np.nan, np.nan
    log_lo = math.log(a) - math.log(remaining) / alpha + 1e-9

    def n_of(log_u: float) -> float:
        rest = remaining - (a / math.exp(log_u)) ** alpha
        return b / rest ** (1.0 / beta) if rest > 0 else math.inf

    def cost(log_u: float) -> float:
        u = math.exp(log_u)
        n = n_of(log_u)
        if not math.isfinite(n):
            return math.inf
        return math.log(float(coefficient(np.array(u), np.array(n)))) + log_u + math.log(n)

    closed_u, _ = compute_optimal(params, D_target)
    centre = math.log(float(closed_u)) if np.isfinite(closed_u) else log_lo + 1.0
    res = minimize_scalar(cost, bounds=(log_lo, max(centre, log_lo) + 12.0), method="bounded")
    return float(math.exp(res.x)), float(n_of(res.x))


def real_coefficient(
    fits_bs: pd.DataFrame | None, row: pd.Series, flops: float
) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray] | None, str]:
    """``flops * B(σ, N)`` with the batch-size rule of a fit row's scope (an env, or the suite of
    an averaged fit: :func:`valuescale.analysis.proposal.batch_size_rule` looks for the scope,
    its suite, then ``all``)."""
    from valuescale.analysis.proposal import batch_size_rule  # proposal imports this module

    rule, text = batch_size_rule(fits_bs, str(row["agent"]), str(row["source"]), str(row["scope"]))
    if rule is None:
        return None, text

    def coefficient(u: np.ndarray, n: np.ndarray) -> np.ndarray:
        return flops * np.asarray(rule(u, n), dtype=float)

    return coefficient, text


def real_batch_tables(
    usable: pd.DataFrame,
    fits_bs: pd.DataFrame | None,
    model: ComputeModel,
    deltas: Mapping[str, float],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute- and budget-optimal tables under the real-batch convention (numerical): the
    compute coefficient is ``flops_per_param_sample * B(σ, N)`` of the scope's batch-size rule;
    compute-optimal points by a 1-D search along the iso-D curve
    (:func:`compute_optimal_numeric`), budget-optimal points by
    :func:`budget_optimal_numeric`. ``usable``: fits with status ``ok``."""
    co_rows, bo_rows = [], []
    ids = ("scope", "agent", "source", "variant", "threshold_idx", "threshold")
    base_co = compute_optimal_table(usable, k=model.k)
    for _, row in usable.iterrows():
        params = {k: float(row[k]) for k in DE_PARAMS}
        meta = {c: row[c] for c in ids if c in row}
        coefficient, text = real_coefficient(fits_bs, row, model.flops_per_param_sample)
        delta = delta_for(str(row["scope"]), deltas)
        reason = law_is_usable(params)
        if coefficient is None or reason:
            why = reason or f"batch_convention real: {text}"
            bo_rows.append({**meta, "delta": delta, "status": "failed", "reason": why})
            continue
        alloc = budget_optimal_numeric(params, delta, compute_coefficient=coefficient)
        bo_rows.append({**meta, "delta": delta, **alloc.__dict__})
        targets = base_co[
            (base_co["scope"] == row["scope"])
            & (base_co["agent"] == row["agent"])
            & (base_co["variant"] == row["variant"])
            & (base_co["threshold_idx"] == row["threshold_idx"])
        ]["D_target"].to_numpy(float)
        slope, intercept = compute_optimal_line(params)
        for D0 in targets:
            u, n = compute_optimal_numeric(params, float(D0), coefficient)
            c = float(coefficient(np.array(u), np.array(n))) if np.isfinite(u) else np.nan
            co_rows.append(
                {
                    **meta,
                    "D_target": D0,
                    "utd_star": u,
                    "critic_params_star": n,
                    "compute_star": c * u * n * D0,
                    "k": c,
                    "line_slope": slope,
                    "line_intercept": intercept,
                    "status": "ok" if np.isfinite(u) else "infeasible",
                    "reason": f"real batch: {text}",
                }
            )
    return pd.DataFrame(co_rows), pd.DataFrame(bo_rows)


def budget_ranges(budget_fits: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Add ``budget_min`` / ``budget_max`` (range of the usable F*) to budget-fit rows."""
    keys = [c for c in ("scope", "agent", "source", "variant") if c in budget_fits and c in points]
    ok = points[(points["status"] == "ok") & np.isfinite(points["budget"].astype(float))]
    ranges = ok.groupby(keys)["budget"].agg(budget_min="min", budget_max="max").reset_index()
    return budget_fits.merge(ranges, on=keys, how="left")


def _concat(frames: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if frames:
        return pd.concat(frames, ignore_index=True)
    return pd.DataFrame({c: pd.Series([], dtype="object") for c in columns})


def allocation_tables(
    fits: pd.DataFrame,
    fits_bs: pd.DataFrame | None,
    *,
    model: ComputeModel,
    deltas: Mapping[str, float],
    n_heldout: int = N_HELDOUT,
    variants: tuple[str, ...] = ("per_env", "shared", "averaged"),
    on_skipped: Callable[[pd.DataFrame, str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``compute_optimal``, ``budget_optimal`` and ``budget_fits`` tables of a study, per fit
    source (a ``source`` column): fits of ``variants`` with status ``ok`` are allocated, the
    degenerate ones get a ``skipped`` row (``on_skipped(rows, source)`` is told about them).

    Under the accounting convention the closed forms (:func:`compute_optimal_table`,
    :func:`budget_optimal_table`), under the real-batch one :func:`real_batch_tables`;
    ``budget_fits`` adds ``budget_min`` / ``budget_max`` (:func:`budget_ranges`).
    """
    from valuescale.catalog import columns as catalog_columns

    co_columns = catalog_columns("compute_optimal")
    bo_columns = catalog_columns("budget_optimal")
    bf_columns = catalog_columns("budget_fits")
    selected = fits[fits["variant"].isin(variants)]
    selected = selected[selected["status"].isin(["ok", "degenerate"])]
    co_frames, bo_frames, bf_frames = [], [], []
    for source, group in selected.groupby("source", sort=True):
        usable = group[group["status"] == "ok"]
        skipped = skipped_rows(group, variants)
        if on_skipped is not None and len(skipped):
            on_skipped(skipped, source)
        if model.batch_convention == "accounting":
            co = compute_optimal_table(group, variants=variants, k=model.k)
            bo = budget_optimal_table(group, variants=variants, k=model.k, delta=deltas)
        else:
            co, bo = real_batch_tables(usable, fits_bs, model, deltas)
            co = _concat([co, skipped], co_columns)
            bo = _concat([bo, skipped], bo_columns)
        if len(bo):
            bf = budget_fit_table(bo, n_heldout=n_heldout, fits=usable)
            bo = annotate_budget_points(bo, usable, n_heldout=n_heldout)
        co = co.assign(source=source) if len(co) else co
        bo = bo.assign(source=source) if len(bo) else bo
        co_frames.append(co)
        bo_frames.append(bo)
        if len(bo):
            bf_frames.append(budget_ranges(bf.assign(source=source), bo))
    return (
        _concat(co_frames, co_columns),
        _concat(bo_frames, bo_columns),
        _concat(bf_frames, bf_columns),
    )
