"""Batch-size and learning-rate rules (Eq. 6.1; method.md §3.5).

Batch size (Eq. 6.1), fitted to the best batch sizes B*(σ, N) of ``best_batch_size``::

    B*(σ, N) = a_B / (σ**alpha_B * (1 + b_B * N**(-beta_B)))

The law factorises into a σ part and an N part; with positive parameters B* falls with σ and
rises with N towards ``a_B / σ**alpha_B`` (small critics cannot use large batches). The baseline
is log-linear, ``log B = log_intercept + slope_utd log σ + slope_critic_params log N``; both are
scored by the mean relative error ``|B_hat - B| / B`` on the fitted rows.

Learning rate: log-linear in (log σ, log N, log B), and paper 2's ``eta*(σ) = (beta_eta/σ)**alpha_eta``.

Bootstrap CIs of the batch-size law come from a parametric log-normal resample of B* whose
90 % interval is ``[B_star_lo, B_star_hi]`` (the table holds no per-resample values).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd

from valuescale.analysis.fitting import (
    DegeneracyRules,
    FitDataError,
    FitResult,
    LogRescale,
    ScaledProblem,
    failed_result,
    fit_loglinear,
    fit_scaled,
    predict_loglinear,
    relative_error,
    unscale_power_term,
)
from valuescale.catalog import BATCH_PARAMS  # the table columns' home: valuescale.catalog
from valuescale.tasks import task_spec

LR_PARAMS = ("alpha_eta", "beta_eta")
# z-value of the 95th percentile: B_star_lo/hi are read as a 90 % interval.
Z90 = 1.6448536269514722
DEFAULT_N_BOOT = 100
# Best-batch-size rows compared fewer batch sizes than this are not used.
MIN_BATCH_SIZES = 3
# best_batch_size statuses: interior optimum, and optimum on the edge of the grid.
PREFERRED_STATUS = ("ok",)
FALLBACK_STATUS = ("best_at_edge",)
# Edge rows are dropped from a scope's fit when at least this many interior rows remain.
MIN_PREFERRED_ROWS = 6


def predict_batch_size(
    params: Mapping[str, float], utd: np.ndarray | float, critic_params: np.ndarray | float
) -> np.ndarray:
    """B*(σ, N) of Eq. 6.1 (or of the log-linear baseline when ``slope_utd`` is given)."""
    utd = np.asarray(utd, dtype=float)
    critic_params = np.asarray(critic_params, dtype=float)
    if "slope_utd" in params and np.any(np.isfinite(np.asarray(params["slope_utd"], float))):
        return predict_loglinear(params, {"utd": utd, "critic_params": critic_params})
    return params["a_B"] / (
        utd ** params["alpha_B"] * (1.0 + params["b_B"] * critic_params ** (-params["beta_B"]))
    )


class BatchSizeProblem(ScaledProblem):
    """Eq. 6.1 in rescaled units; parameter vector ``[a_B, alpha_B, b_B, beta_B]``."""

    names = BATCH_PARAMS
    exponents = (1, 3)

    def __init__(self, utd: np.ndarray, critic_params: np.ndarray, B: np.ndarray) -> None:
        utd = np.asarray(utd, dtype=float)
        critic_params = np.asarray(critic_params, dtype=float)
        B = np.asarray(B, dtype=float)
        valid = np.isfinite(B) & (B > 0)
        if not valid.any():
            raise FitDataError("failed", "no finite batch size")
        self.rescale_utd = LogRescale.from_values(utd[valid], "utd")
        self.rescale_params = LogRescale.from_values(critic_params[valid], "critic_params")
        self.log_utd = self.rescale_utd.log_apply(utd)
        self.log_params = self.rescale_params.log_apply(critic_params)
        self.log_scale = float(np.log(np.mean(B[valid])))
        self.log_y_offset = np.full(B.size, self.log_scale)

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, alpha, b, beta = (theta[:, i : i + 1] for i in range(4))
        q = np.exp(np.clip(np.log(b) - beta * self.log_params, -700, 700))  # b N~^-beta
        inv = 1.0 / (1.0 + q)
        log_pred = np.log(a) - alpha * self.log_utd - np.log1p(q)
        jac = np.empty((*log_pred.shape, 4))
        jac[:, :, 0] = 1.0 / a
        jac[:, :, 1] = -self.log_utd
        jac[:, :, 2] = -q / b * inv
        jac[:, :, 3] = q * self.log_params * inv
        return log_pred, jac

    def starts(self, rng: np.random.Generator, n_starts: int) -> np.ndarray:
        theta = np.exp(rng.uniform(np.log(0.2), np.log(3.0), (n_starts, 4)))
        theta[0] = (2.0, 0.5, 1.0, 1.0)
        return theta

    def unscale(self, theta: np.ndarray) -> np.ndarray:
        out = np.empty_like(theta)
        ru, rn = self.rescale_utd, self.rescale_params
        # s a~ / ((c_u σ^p_u)^alpha~ (1 + b~ (c_n N^p_n)^-beta~))
        out[:, 0] = np.exp(self.log_scale + np.log(theta[:, 0]) - theta[:, 1] * ru.log_c)
        out[:, 1] = ru.p * theta[:, 1]
        out[:, 2] = theta[:, 2] * np.exp(-theta[:, 3] * rn.log_c)
        out[:, 3] = rn.p * theta[:, 3]
        return out


class LearningRateProblem(ScaledProblem):
    """``eta*(σ) = (beta_eta / σ)**alpha_eta`` in rescaled units; vector ``[alpha, beta]``."""

    names = LR_PARAMS
    exponents = (0,)

    def __init__(self, utd: np.ndarray, lr: np.ndarray) -> None:
        utd = np.asarray(utd, dtype=float)
        lr = np.asarray(lr, dtype=float)
        valid = np.isfinite(lr) & (lr > 0)
        if not valid.any():
            raise FitDataError("failed", "no finite learning rate")
        self.rescale_utd = LogRescale.from_values(utd[valid], "utd")
        self.log_utd = self.rescale_utd.log_apply(utd)
        self.log_scale = float(np.log(np.mean(lr[valid])))
        self.log_y_offset = np.full(lr.size, self.log_scale)

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha, beta = theta[:, :1], theta[:, 1:2]
        x = np.log(beta) - self.log_utd
        jac = np.empty((*x.shape, 2))
        jac[:, :, 0] = x
        jac[:, :, 1] = alpha / beta
        return alpha * x, jac

    def starts(self, rng: np.random.Generator, n_starts: int) -> np.ndarray:
        theta = np.exp(rng.uniform(np.log(0.2), np.log(3.0), (n_starts, 2)))
        theta[0] = (0.5, 1.0)
        return theta

    def unscale(self, theta: np.ndarray) -> np.ndarray:
        beta, alpha = unscale_power_term(theta[:, 1], theta[:, 0], self.rescale_utd, self.log_scale)
        return np.column_stack([alpha, beta])


def predict_learning_rate(params: Mapping[str, float], utd: np.ndarray | float) -> np.ndarray:
    """``eta*(σ) = (beta_eta / σ)**alpha_eta``."""
    return (params["beta_eta"] / np.asarray(utd, dtype=float)) ** params["alpha_eta"]


def fit_batch_size_law(
    utd: np.ndarray,
    critic_params: np.ndarray,
    B_star: np.ndarray,
    B_boot: np.ndarray | None = None,
    *,
    n_starts: int = 8,
    seed: int = 0,
    rules: DegeneracyRules | None = None,
) -> FitResult:
    """Fit Eq. 6.1 to best batch sizes (``[n]`` arrays; ``B_boot`` optional ``[K, n]``).

    ``rules``: when the fit is ``degenerate`` (a parameter at a bound, an exponent whose bootstrap
    interval spans too many decades; :class:`valuescale.analysis.fitting.DegeneracyRules`).
    """
    try:
        problem = BatchSizeProblem(utd, critic_params, B_star)
    except FitDataError as err:
        n = int(np.sum(np.isfinite(np.asarray(B_star, dtype=float))))
        return failed_result(BATCH_PARAMS, err.status, err.reason, n)
    return fit_scaled(problem, B_star, B_boot, n_starts=n_starts, seed=seed, rules=rules)


def fit_learning_rate_law(
    utd: np.ndarray, lr: np.ndarray, *, n_starts: int = 8, seed: int = 0
) -> FitResult:
    """Fit ``eta*(σ) = (beta_eta/σ)**alpha_eta`` to best learning rates."""
    try:
        problem = LearningRateProblem(utd, lr)
    except FitDataError as err:
        n = int(np.sum(np.isfinite(np.asarray(lr, dtype=float))))
        return failed_result(LR_PARAMS, err.status, err.reason, n)
    return fit_scaled(problem, lr, n_starts=n_starts, seed=seed)


def batch_size_bootstrap(
    rows: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT, seed: int = 0
) -> np.ndarray | None:
    """``[K, n]`` log-normal resamples of B_star with 90 % interval ``[B_star_lo, B_star_hi]``.

    Rows without a finite interval repeat B_star. ``None`` without the lo/hi columns or when no
    row has an interval.
    """
    if not {"B_star_lo", "B_star_hi"} <= set(rows.columns) or n_boot <= 0:
        return None
    B = rows["B_star"].to_numpy(float)
    with np.errstate(all="ignore"):
        sd = (
            np.log(rows["B_star_hi"].to_numpy(float)) - np.log(rows["B_star_lo"].to_numpy(float))
        ) / (2 * Z90)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 0.0)
    if not np.any(sd > 0):
        return None  # no interval information: no CI
    rng = np.random.default_rng(seed)
    return B[None, :] * np.exp(rng.standard_normal((n_boot, B.size)) * sd[None, :])


def usable_batch_rows(
    best_batch_size: pd.DataFrame,
    *,
    min_batch_sizes: int = MIN_BATCH_SIZES,
    statuses: Collection[str] | None = (*PREFERRED_STATUS, *FALLBACK_STATUS),
) -> pd.DataFrame:
    """Rows with a finite B_star, at least ``min_batch_sizes`` batch sizes compared and (when the
    table has a ``status`` and ``statuses`` is not None) a status in ``statuses``."""
    keep = np.isfinite(best_batch_size["B_star"].astype(float)) & (best_batch_size["B_star"] > 0)
    if "n_batch_sizes" in best_batch_size:
        keep &= best_batch_size["n_batch_sizes"].fillna(0) >= min_batch_sizes
    if statuses is not None and "status" in best_batch_size:
        keep &= best_batch_size["status"].isin(list(statuses))
    return best_batch_size[keep].reset_index(drop=True)


def _suite(env: str) -> str:
    spec = task_spec(env)
    return spec.suite if spec is not None else "other"


def _prefer_interior(data: pd.DataFrame, min_preferred: int) -> tuple[pd.DataFrame, int]:
    """Rows whose best batch size is inside the grid when there are ``min_preferred`` of them,
    else also the ``best_at_edge`` rows; returns (rows, number of edge rows used)."""
    if "status" not in data:
        return data, 0
    preferred = data[data["status"].isin(PREFERRED_STATUS)]
    if len(preferred) >= min_preferred:
        return preferred, 0
    return data, int(data["status"].isin(FALLBACK_STATUS).sum())


def fit_batch_size_table(
    best_batch_size: pd.DataFrame,
    *,
    levels: Collection[str] = ("env", "suite", "all"),
    min_batch_sizes: int = MIN_BATCH_SIZES,
    min_preferred: int = MIN_PREFERRED_ROWS,
    n_boot: int = DEFAULT_N_BOOT,
    n_starts: int = 8,
    seed: int = 0,
    rules: DegeneracyRules | None = None,
) -> pd.DataFrame:
    """Eq. 6.1 and the log-linear baseline per env, per suite and over all envs.

    Rows of ``best_batch_size`` are used when B_star is finite and at least ``min_batch_sizes``
    batch sizes were compared; per scope, rows whose best batch size sits on the edge of the grid
    (status ``best_at_edge``) are left out when ``min_preferred`` interior (``ok``) rows remain
    ("best not at an edge where possible"), else kept and counted in ``n_at_edge``. Groups are
    per agent (and per source when the table has one).

    Returns:
        ``fits_batch_size.csv``: scope, agent, [source,] level (env|suite|all), a_B, alpha_B,
        b_B, beta_B (with ``_lo``/``_hi``), rel_error (mean ``|B_hat - B|/B`` on the fitted
        rows), loglinear_rel_error, log_intercept, slope_utd, slope_critic_params (baseline),
        loss, status, reason, n_points, n_at_edge. Suite/all rows pool their envs into one law.
    """
    rows_in = usable_batch_rows(best_batch_size, min_batch_sizes=min_batch_sizes)
    rows_in = rows_in.assign(suite=[_suite(env) for env in rows_in["env"]], all="all")
    lead_keys = ["agent", "source"] if "source" in rows_in else ["agent"]
    out: list[dict] = []
    for level in ("env", "suite", "all"):
        if level not in levels:
            continue
        for key, data in rows_in.groupby([*lead_keys, level], sort=True):
            *lead_values, scope = key
            if level != "env" and data["env"].nunique() < 2:
                continue
            if level == "all" and data["suite"].nunique() < 2:
                continue  # identical to the single suite's row
            data, n_edge = _prefer_interior(data, min_preferred)
            row = {"scope": scope, **dict(zip(lead_keys, lead_values, strict=True))}
            row["level"] = level
            row.update(_batch_fit_columns(data, n_boot, n_starts, seed, rules))
            row["n_at_edge"] = n_edge
            out.append(row)
    if not out:
        columns = ["scope", *lead_keys, "level"]
        for name in BATCH_PARAMS:
            columns += [name, f"{name}_lo", f"{name}_hi"]
        columns += [
            "loss",
            "status",
            "reason",
            "n_points",
            "rel_error",
            "loglinear_rel_error",
            "log_intercept",
            "slope_utd",
            "slope_critic_params",
            "loglinear_status",
            "n_at_edge",
        ]
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(out)


def batch_sizes_in_use(
    crossings: pd.DataFrame, sources: Collection[str] | None = None
) -> pd.DataFrame:
    """A best_batch_size-like table of the batch size each (σ, N) config was run with.

    For data with one batch size per config chosen by a rule (the published ``fitted_bs`` runs
    use the authors' B*(σ, N)), fitting Eq. 6.1 to these recovers that rule. Rows have
    ``B_star`` = the batch size, ``n_batch_sizes`` = 1 and status ``ok``; pass
    ``min_batch_sizes=1`` to :func:`fit_batch_size_table`.
    """
    df = crossings if sources is None else crossings[crossings["source"].isin(list(sources))]
    keys = [k for k in ("env", "agent", "source", "utd", "critic_params", "width", "lr") if k in df]
    used = df.groupby(keys, dropna=False)["batch_size"].agg(["nunique", "first"]).reset_index()
    used = used[used["nunique"] == 1].rename(columns={"first": "B_star"})
    return used.drop(columns="nunique").assign(
        B_star_lo=np.nan, B_star_hi=np.nan, n_batch_sizes=1, status="ok"
    )


def _batch_fit_columns(
    data: pd.DataFrame,
    n_boot: int,
    n_starts: int,
    seed: int,
    rules: DegeneracyRules | None = None,
) -> dict:
    """Eq. 6.1 fit, baseline and relative errors of one scope's rows."""
    utd = data["utd"].to_numpy(float)
    params = data["critic_params"].to_numpy(float)
    B = data["B_star"].to_numpy(float)
    fit = fit_batch_size_law(
        utd,
        params,
        B,
        batch_size_bootstrap(data, n_boot, seed),
        n_starts=n_starts,
        seed=seed,
        rules=rules,
    )
    baseline = fit_loglinear({"utd": utd, "critic_params": params}, B)
    row = {k: v for k, v in fit.row().items() if k not in ("n_boot", "n_boot_ok")}
    with np.errstate(all="ignore"):
        row["rel_error"] = (
            float(np.mean(relative_error(predict_batch_size(fit.params, utd, params), B)))
            if fit.ok
            else np.nan
        )
        row["loglinear_rel_error"] = (
            float(np.mean(relative_error(predict_batch_size(baseline.params, utd, params), B)))
            if baseline.ok
            else np.nan
        )
    for name in ("log_intercept", "slope_utd", "slope_critic_params"):
        row[name] = baseline.params[name]
    row["loglinear_status"] = baseline.status
    return row


def fit_learning_rate_table(
    best_learning_rate: pd.DataFrame, *, n_starts: int = 8, seed: int = 0
) -> pd.DataFrame:
    """Learning-rate rules per env and over all envs (per agent, and source if present).

    Args:
        best_learning_rate: the ``best_learning_rate`` table (env, agent, utd, critic_params,
            batch_size, lr_star[, status]); rows with a finite lr_star and (if present) status
            ``ok`` or ``best_at_edge`` are used.

    Returns:
        Rows with law ``loglinear`` (log eta ~ 1 + log σ + log N + log B) and ``power_utd``
        (``eta* = (beta_eta/σ)**alpha_eta``). Columns scope, agent, [source,] law, alpha_eta,
        beta_eta, log_intercept, slope_utd, slope_critic_params, slope_batch_size, rel_error,
        loss, status, reason, n_points.
    """
    rows_in = best_learning_rate[
        np.isfinite(best_learning_rate["lr_star"].astype(float))
        & (best_learning_rate["lr_star"] > 0)
    ]
    if "status" in rows_in:
        rows_in = rows_in[rows_in["status"].isin([*PREFERRED_STATUS, *FALLBACK_STATUS])]
    lead_keys = ["agent", "source"] if "source" in rows_in else ["agent"]
    out: list[dict] = []
    groups = []
    for key, data in rows_in.groupby([*lead_keys, "env"], sort=True):
        *lead, env = key
        groups.append((dict(zip(lead_keys, lead, strict=True)), env, data))
    for key, data in rows_in.groupby(lead_keys, sort=True):
        if data["env"].nunique() > 1:
            key = key if isinstance(key, tuple) else (key,)
            groups.append((dict(zip(lead_keys, key, strict=True)), "all", data))
    for lead_values, scope, data in groups:
        utd = data["utd"].to_numpy(float)
        lr = data["lr_star"].to_numpy(float)
        inputs = {
            "utd": utd,
            "critic_params": data["critic_params"].to_numpy(float),
            "batch_size": data["batch_size"].to_numpy(float),
        }
        loglin = fit_loglinear(inputs, lr)
        power = fit_learning_rate_law(utd, lr, n_starts=n_starts, seed=seed)
        for law, fit in (("loglinear", loglin), ("power_utd", power)):
            row: dict = {"scope": scope, **lead_values, "law": law}
            row.update({k: v for k, v in fit.params.items()})
            with np.errstate(all="ignore"):
                pred = (
                    predict_loglinear(fit.params, inputs)
                    if law == "loglinear"
                    else predict_learning_rate(fit.params, utd)
                )
            row.update(
                rel_error=float(np.mean(relative_error(pred, lr))) if fit.ok else np.nan,
                loss=fit.loss,
                status=fit.status,
                reason=fit.reason,
                n_points=fit.n,
            )
            out.append(row)
    columns = [
        "scope",
        *lead_keys,
        "law",
        *LR_PARAMS,
        "log_intercept",
        "slope_utd",
        "slope_critic_params",
        "slope_batch_size",
        "rel_error",
        "loss",
        "status",
        "reason",
        "n_points",
    ]
    return pd.DataFrame(out, columns=columns)


def geomean(values: np.ndarray) -> float:
    """Geometric mean of the finite positive ``values`` (NaN when there are none)."""
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.mean(np.log(values)))) if values.size else np.nan


def add_geomean(fits: pd.DataFrame, data: pd.DataFrame, value: str) -> pd.DataFrame:
    """``B_geomean`` of each batch-size fit row: the geometric mean of its fitted batch sizes."""
    from valuescale.analysis.data_efficiency import suite_of

    out = fits.copy()
    geo = []
    for row in out.itertuples(index=False):
        sel = data[data["agent"] == row.agent]
        if row.level == "env":
            sel = sel[sel["env"] == row.scope]
        elif row.level == "suite":
            sel = sel[[suite_of(e) == row.scope for e in sel["env"]]]
        geo.append(geomean(sel[value].to_numpy(float)))
    out["B_geomean"] = geo
    return out


def batch_fits_for_source(
    source: str,
    crossings: pd.DataFrame,
    best: pd.DataFrame,
    *,
    n_boot: int,
    n_starts: int,
    seed: int,
    rules: DegeneracyRules | None = None,
) -> list[pd.DataFrame]:
    """Batch-size law rows of one curve source (a ``source`` and a ``basis`` column): fitted to
    the measured B* (``basis = B_star``), and, where every (σ, N) was run at one batch size
    chosen by a rule, to the batch sizes the runs used (``basis = run_batch_size``; one
    ``constant`` row when all runs used the same batch size)."""
    frames = []
    measured = best[best["source"] == source] if "source" in best else best
    if len(measured):
        table = fit_batch_size_table(
            measured, n_boot=n_boot, n_starts=n_starts, seed=seed, rules=rules
        )
        if len(table):
            frames.append(add_geomean(table, measured, "B_star").assign(basis="B_star"))
    design = batch_sizes_in_use(crossings, sources=[source])
    per_config = (
        crossings[crossings["source"] == source]
        .groupby(["env", "agent", "utd", "critic_params", "lr"])["batch_size"]
        .nunique()
    )
    if len(design) and (per_config == 1).all():
        for agent, runs in design.groupby("agent", sort=True):
            if runs["B_star"].nunique() == 1:
                value = float(runs["B_star"].iloc[0])
                frames.append(
                    pd.DataFrame(
                        [
                            {
                                "scope": "all",
                                "agent": agent,
                                "level": "all",
                                "basis": "run_batch_size",
                                "B_geomean": value,
                                "n_points": len(runs),
                                "status": "constant",
                                "reason": f"every run used batch size {value:g}",
                            }
                        ]
                    )
                )
                continue
            table = fit_batch_size_table(
                runs, min_batch_sizes=1, n_boot=0, n_starts=n_starts, seed=seed, rules=rules
            )
            if len(table):
                frames.append(add_geomean(table, runs, "B_star").assign(basis="run_batch_size"))
    return [f.assign(source=source) for f in frames]
