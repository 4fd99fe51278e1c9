"""Evaluation tables of the fitted laws (method.md §3.9-3.10, paper Sec. 5.3, Table 1, Fig. 4).

Three tables, each a pure function of analysis tables (the workflow stages in
:mod:`valuescale.pipeline` read and write the files):

* :func:`fit_error_table` -- ``fit_errors.csv``. Relative error ``|D_hat - D| / D`` of the D_J fits
  (Eq. 7.1) on the configurations they were fitted to (set ``fitted``, in-sample) and on held-out
  configurations (sets ``interpolated`` / ``extrapolated``), plus the batch-size rule (Eq. 6.1)
  against its log-linear baseline. A law is scored on held-out runs only where they share its
  agent, grid convention and batch-size rule (:data:`EVAL_SETS`, config
  ``analysis.evaluation.eval_sets``): the published ``fitted_bs`` laws on the ``interpolated_bs``
  / ``extrapolated_bs`` runs, which extend that grid at the same batch-size rule. The BRO ablation
  (``dmc_bro_ablations``: another size ladder, B = 1024) and the SimbaV2 grid have no held-out runs
  and are scored in-sample only.
* :func:`allocation_strategy_table` -- ``allocation_strategies.csv``. Data needed to reach each
  threshold by σ-only and N-only scaling, relative to compute-optimal (σ*, N*, B*) runs at the
  same compute budget (the authors' design tables pair the runs by budget).
* :func:`passive_critic_slope_table` -- ``passive_critic_slopes.csv``. Log-log slope of the
  validation TD loss against main-critic width (passive width fixed) and against passive-critic
  width (main width fixed).

``fit_errors.csv`` columns (one row per group; ``scope = "average"`` rows are the mean of the
per-env means of their group, i.e. every env weighs the same, as in the paper's "averaged over 4
tasks"):

==================  =========================================================================
``quantity``        ``D`` (data-efficiency fits) or ``batch_size`` (batch-size rule)
``variant``         D: the fit variant (``per_env``, ``shared``, ``averaged``) or ``loglinear``
                    (the baseline ``log D ~ 1 + log σ + log N``, fitted here on the same
                    points); batch size: ``eq6_1`` (Eq. 6.1) or ``loglinear``
``set``             D: ``fitted`` | ``interpolated`` | ``extrapolated``; batch size: ``fitted``
                    (in-sample) or ``loo`` (leave-one-out: each B* predicted by the rule fitted
                    to the other points of its scope)
``agent``           agent of the runs
``fit_source``      curve source the laws were fitted on (``fitted_bs``, ``own``, ...)
``eval_source``     curve source of the evaluated configurations
``scope``           env (suite for ``averaged``; batch size: env, suite or ``all``) or ``average``
``mean_rel_error``  mean of ``|pred - obs| / obs`` over configurations and thresholds
``median_rel_error``, ``n`` (points), ``n_envs`` (for ``average`` rows)
==================  =========================================================================

A configuration enters the D errors at every threshold it reaches (finite D) whose fit is usable
(status ``ok``); its D is taken at its best batch size (the batch size closest to B*, or the run's
batch size when it was run at one), exactly as the fits choose their points
(:func:`valuescale.analysis.data_efficiency.select_fit_points`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from valuescale.analysis.batch_size_fit import (
    fit_batch_size_law,
    predict_batch_size,
    usable_batch_rows,
)
from valuescale.analysis.data_efficiency import (
    averaged_fit_points,
    batch_choice_of,
    fit_data_efficiency_table,
    prediction_errors,
    select_fit_points,
    suite_of,
)
from valuescale.analysis.fitting import fit_loglinear, relative_error
from valuescale.catalog import columns

log = logging.getLogger(__name__)

#: Held-out evaluation sets per fit source: {fit source: {set name: curve source}}. Only runs of
#: the same agent, grid convention and batch-size rule as the fitted runs belong here.
EVAL_SETS: dict[str, dict[str, str]] = {
    "fitted_bs": {
        "interpolated": "interpolated_bs",
        "extrapolated": "extrapolated_bs",
    },
}
#: Columns of the evaluation tables (their home: :mod:`valuescale.catalog`).
FIT_ERROR_COLUMNS: list[str] = columns("fit_errors")
ALLOCATION_COLUMNS: list[str] = columns("allocation_strategies")
PASSIVE_COLUMNS: list[str] = columns("passive_critic_slopes")
#: Validation TD losses summarised by :func:`passive_critic_slope_table`; the first is the
#: passive critic's own (the quantity of paper Fig. 4).
PASSIVE_METRICS: tuple[str, ...] = ("passive_validation_critic_loss", "validation_critic_loss")
#: Fraction of training at the end over which a loss is averaged (method.md §2).
LAST_FRACTION = 0.1


# --------------------------------------------------------------------------------------------
# Fit errors
# --------------------------------------------------------------------------------------------


def _summarise(errors: pd.DataFrame, meta: Mapping[str, object], by_env: str = "env") -> list[dict]:
    """Per-env rows (mean/median relative error) and one ``average`` row over the envs."""
    finite = errors[np.isfinite(errors["rel_error"].to_numpy(float))]
    rows: list[dict] = []
    for env, group in finite.groupby(by_env, sort=True):
        rel = group["rel_error"].to_numpy(float)
        rows.append(
            {
                **meta,
                "scope": env,
                "mean_rel_error": float(rel.mean()),
                "median_rel_error": float(np.median(rel)),
                "n": int(rel.size),
                "n_envs": 1,
            }
        )
    if rows:
        means = np.array([r["mean_rel_error"] for r in rows])
        medians = np.array([r["median_rel_error"] for r in rows])
        rows.append(
            {
                **meta,
                "scope": "average",
                "mean_rel_error": float(means.mean()),
                "median_rel_error": float(medians.mean()),
                "n": int(sum(r["n"] for r in rows)),
                "n_envs": len(means),
            }
        )
    return rows


def _averaged_points(fits: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Task-averaged evaluation points, one set per (agent, suite, threshold) of the averaged fits.

    The envs averaged are those the fit used (its ``envs`` column); a point enters only where
    every one of them has a finite D, or normalised by the fit's own per-env medians when it used
    the authors' convention (:func:`valuescale.analysis.data_efficiency.averaged_fit_points`).
    """
    frames = []
    sel = fits[(fits["variant"] == "averaged") & (fits["status"] == "ok")]
    for _, fit in sel.iterrows():
        sub = points[
            (points["agent"] == fit["agent"]) & (points["threshold_idx"] == fit["threshold_idx"])
        ]
        avg = averaged_fit_points(fit, sub)
        if len(avg):
            frames.append(avg.assign(agent=fit["agent"], threshold_idx=int(fit["threshold_idx"])))
    if not frames:
        return pd.DataFrame(columns=["env", "agent", "utd", "critic_params", "threshold_idx", "D"])
    return pd.concat(frames, ignore_index=True)


def d_fit_errors(
    fits: pd.DataFrame,
    fit_points: pd.DataFrame,
    eval_points: pd.DataFrame,
    *,
    variants: Sequence[str],
    baseline: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per-point predictions and relative errors of the D_J fits of one fit source.

    Args:
        fits: ``fits_data_efficiency`` rows of one fit source.
        fit_points: the points those fits used (in-sample set).
        eval_points: held-out points with a ``set`` column (may be empty).
        variants: fit variants to evaluate (``per_env``, ``shared``, ``averaged``).
        baseline: optional ``loglinear`` fit rows on the same points.

    Returns:
        Points with columns set, variant, env (the scope), agent, threshold_idx, utd,
        critic_params, D, D_pred, rel_error, eval_source.
    """
    sets = [("fitted", fit_points)]
    for name, group in eval_points.groupby("set", sort=False) if len(eval_points) else []:
        sets.append((str(name), group))
    tables = []
    all_fits = fits if baseline is None else pd.concat([fits, baseline], ignore_index=True)
    chosen = [*variants] + (["loglinear"] if baseline is not None else [])
    for set_name, pts in sets:
        if pts.empty:
            continue
        source = str(pts["source"].iloc[0]) if "source" in pts else ""
        for variant in chosen:
            if variant not in set(all_fits["variant"]):
                continue
            pts_v = _averaged_points(all_fits, pts) if variant == "averaged" else pts
            if pts_v.empty:
                continue
            with np.errstate(all="ignore"):
                err = prediction_errors(all_fits, pts_v, variant=variant)
            err = err.assign(set=set_name, variant=variant, eval_source=source)
            tables.append(err)
    if not tables:
        return pd.DataFrame(columns=["set", "variant", "env", "rel_error"])
    return pd.concat(tables, ignore_index=True)


def fit_error_table(
    crossings: pd.DataFrame,
    fits: pd.DataFrame,
    best_batch_size: pd.DataFrame | None,
    fits_batch_size: pd.DataFrame | None = None,
    *,
    eval_sets: Mapping[str, Mapping[str, str]] = EVAL_SETS,
    variants: Collection[str] = ("per_env", "shared", "averaged"),
    loglinear_baseline: bool = True,
    batch_loo: bool = True,
    n_starts: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """``fit_errors.csv`` (module docstring).

    Args:
        crossings: the ``crossings`` table (all sources).
        fits: ``fits_data_efficiency`` with a ``source`` column (the fit source of each row;
            without it, the fits are taken as fitted on every non-evaluation source).
        best_batch_size: the ``best_batch_size`` table (picks each configuration's batch size).
        fits_batch_size: ``fits_batch_size`` (its in-sample ``rel_error`` /
            ``loglinear_rel_error`` become the batch-size ``fitted`` rows).
        eval_sets: fit source -> {set name -> curve source} of its held-out sets (a fit source
            not listed is scored in-sample only; a set never pairs laws and runs of different
            agents, grids or batch-size rules).
        variants: D_J fit variants to evaluate.
        loglinear_baseline: also evaluate the log-linear D baseline fitted on the same points.
        batch_loo: add leave-one-out errors of Eq. 6.1 and the log-linear rule on B*.
        n_starts, seed: optimiser settings of the refits (baseline, leave-one-out).
    """
    rows: list[dict] = []
    eval_sources = {source for sets in eval_sets.values() for source in sets.values()}
    fits = fits.copy()
    if "source" not in fits:
        fits["source"] = "+".join(sorted(set(crossings["source"]) - eval_sources))
    for fit_source, src_fits in fits.groupby("source", sort=True):
        if fit_source in eval_sources:
            continue
        fit_points = select_fit_points(
            crossings,
            best_batch_size,
            sources=str(fit_source).split("+"),
            batch_choice=batch_choice_of(src_fits),
        )
        envs = set(zip(src_fits["agent"], src_fits["scope"], strict=True))
        if "envs" in src_fits:  # shared / averaged rows list the envs they pooled
            for agent, listed in zip(src_fits["agent"], src_fits["envs"], strict=True):
                envs |= {(agent, e) for e in str(listed).split(",") if e and listed == listed}
        eval_frames = []
        for set_name, source in (eval_sets.get(str(fit_source)) or {}).items():
            pts = select_fit_points(crossings, best_batch_size, sources=[source])
            if pts.empty:
                continue
            pts = pts[[(a, e) in envs for a, e in zip(pts["agent"], pts["env"], strict=True)]]
            if len(pts):
                eval_frames.append(pts.assign(set=set_name))
        eval_points = pd.concat(eval_frames, ignore_index=True) if eval_frames else pd.DataFrame()
        baseline = None
        if loglinear_baseline and len(fit_points):
            baseline = fit_data_efficiency_table(
                fit_points, variants=("loglinear",), n_boot=0, n_starts=n_starts, seed=seed
            )
        errors = d_fit_errors(
            src_fits,
            fit_points,
            eval_points,
            variants=[v for v in ("per_env", "shared", "averaged") if v in variants],
            baseline=baseline,
        )
        if errors.empty:
            continue
        for (set_name, variant, agent, eval_source), group in errors.groupby(
            ["set", "variant", "agent", "eval_source"], sort=False
        ):
            meta = {
                "quantity": "D",
                "variant": variant,
                "set": set_name,
                "agent": agent,
                "fit_source": fit_source,
                "eval_source": eval_source,
            }
            rows.extend(_summarise(group, meta))
    rows.extend(_batch_size_rows(fits_batch_size, best_batch_size, batch_loo, n_starts, seed))
    out = pd.DataFrame(rows, columns=FIT_ERROR_COLUMNS)
    order = {"fitted": 0, "loo": 1, "interpolated": 2, "extrapolated": 3}
    if len(out):
        out = out.assign(_o=out["set"].map(order).fillna(9)).sort_values(
            ["quantity", "agent", "fit_source", "variant", "_o", "scope"], kind="stable"
        )
        out = out.drop(columns="_o").reset_index(drop=True)
    return out


def _batch_size_rows(
    fits_batch_size: pd.DataFrame | None,
    best_batch_size: pd.DataFrame | None,
    loo: bool,
    n_starts: int,
    seed: int,
) -> list[dict]:
    """Batch-size rule rows: in-sample errors from the fits table, leave-one-out errors refitted."""
    rows: list[dict] = []
    if fits_batch_size is not None and len(fits_batch_size):
        sel = fits_batch_size
        if "basis" in sel:
            sel = sel[sel["basis"] == "B_star"]
        for fit in sel.itertuples(index=False):
            for variant, column in (("eq6_1", "rel_error"), ("loglinear", "loglinear_rel_error")):
                value = float(getattr(fit, column))
                if not np.isfinite(value):
                    continue
                rows.append(
                    {
                        "quantity": "batch_size",
                        "variant": variant,
                        "set": "fitted",
                        "agent": getattr(fit, "agent", ""),
                        "fit_source": getattr(fit, "source", ""),
                        "eval_source": getattr(fit, "source", ""),
                        "scope": fit.scope,
                        "mean_rel_error": value,
                        "median_rel_error": np.nan,
                        "n": int(getattr(fit, "n_points", 0) or 0),
                        "n_envs": np.nan,
                    }
                )
    if loo and best_batch_size is not None and len(best_batch_size):
        rows.extend(batch_size_loo_rows(best_batch_size, n_starts=n_starts, seed=seed))
    return rows


def batch_size_loo_rows(
    best_batch_size: pd.DataFrame,
    *,
    usable_status: Collection[str] = ("ok",),
    min_points: int = 6,
    n_starts: int = 8,
    seed: int = 0,
) -> list[dict]:
    """Leave-one-out relative errors of Eq. 6.1 and of the log-linear rule on B*.

    Per (agent, source) and scope (each env, each suite with >= 2 envs, all envs when they span
    >= 2 suites): every usable B* is predicted by both rules fitted to the scope's other points.
    Scopes with fewer than ``min_points`` usable rows are skipped.
    """
    rows_in = usable_batch_rows(best_batch_size, statuses=usable_status)
    if rows_in.empty:
        return []
    if "source" not in rows_in:
        rows_in = rows_in.assign(source="")
    rows_in = rows_in.assign(suite=[suite_of(e) for e in rows_in["env"]], all="all")
    out: list[dict] = []
    for level in ("env", "suite", "all"):
        for (agent, source, scope), data in rows_in.groupby(["agent", "source", level]):
            if level != "env" and data["env"].nunique() < 2:
                continue
            if level == "all" and data["suite"].nunique() < 2:
                continue
            if len(data) < min_points:
                continue
            utd = data["utd"].to_numpy(float)
            n = data["critic_params"].to_numpy(float)
            B = data["B_star"].to_numpy(float)
            pred_law = np.full(B.size, np.nan)
            pred_lin = np.full(B.size, np.nan)
            for i in range(B.size):
                keep = np.arange(B.size) != i
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    law = fit_batch_size_law(
                        utd[keep], n[keep], B[keep], n_starts=n_starts, seed=seed
                    )
                    lin = fit_loglinear({"utd": utd[keep], "critic_params": n[keep]}, B[keep])
                    if law.ok:
                        pred_law[i] = predict_batch_size(law.params, utd[i], n[i])
                    if lin.ok:
                        pred_lin[i] = predict_batch_size(lin.params, utd[i], n[i])
            for variant, pred in (("eq6_1", pred_law), ("loglinear", pred_lin)):
                rel = relative_error(pred, B)
                rel = rel[np.isfinite(rel)]
                if rel.size == 0:
                    continue
                out.append(
                    {
                        "quantity": "batch_size",
                        "variant": variant,
                        "set": "loo",
                        "agent": agent,
                        "fit_source": source,
                        "eval_source": source,
                        "scope": scope,
                        "mean_rel_error": float(rel.mean()),
                        "median_rel_error": float(np.median(rel)),
                        "n": int(rel.size),
                        "n_envs": int(data["env"].nunique()),
                    }
                )
    return out


# --------------------------------------------------------------------------------------------
# Allocation strategies (Table 1)
# --------------------------------------------------------------------------------------------

#: Design-table columns (the authors' ``hb_*.csv``) needed to pair runs by budget.
DESIGN_COLUMNS: tuple[str, ...] = (
    "env_name",
    "utd",
    "critic_width",
    "compute_budget",
    "batch_size_rounded",
)
#: Strategy -> (substring of the design file name, curve source of its runs).
STRATEGIES: dict[str, tuple[str, str]] = {
    "compute_optimal": ("compute_optimal", "compute_optimal"),
    "utd_only": ("utd_scaling", "utd_scaling_bl"),
    "model_only": ("n_scaling", "n_scaling_bl"),
}


def strategy_of_design(name: str) -> str | None:
    """The strategy a design table describes, from its file name (None if unknown)."""
    for strategy, (marker, _) in STRATEGIES.items():
        if marker in name:
            return strategy
    return None


def design_runs(
    crossings: pd.DataFrame, design: pd.DataFrame, strategy: str, where: str = "design"
) -> pd.DataFrame:
    """D_J of the runs of one design table: one row per (env, budget, threshold).

    Runs are matched on (env, σ, width, batch size) within the strategy's curve source. Design
    rows without a run are logged and left out.

    Raises:
        ValueError: a design column is missing (naming ``where`` and the column).
    """
    missing = [c for c in DESIGN_COLUMNS if c not in design.columns]
    if missing:
        raise ValueError(f"{where}: missing design column(s) {missing}")
    source = STRATEGIES[strategy][1]
    runs = crossings[crossings["source"] == source]
    keys = ["env", "utd", "width", "batch_size"]
    plan = pd.DataFrame(
        {
            "env": design["env_name"].astype(str),
            "utd": design["utd"].astype(float),
            "width": design["critic_width"].astype("int64"),
            "batch_size": design["batch_size_rounded"].astype("int64"),
            "budget": design["compute_budget"].astype(float),
        }
    )
    run_keys = runs[keys].drop_duplicates()
    run_keys = run_keys.astype({"width": "int64"}) if len(run_keys) else run_keys
    merged = plan.merge(run_keys.assign(_has=True), on=keys, how="left")
    lacking = merged[merged["_has"].isna()]
    if len(lacking):
        log.warning(
            "%s: %d of %d design rows have no %s run: %s",
            where,
            len(lacking),
            len(plan),
            source,
            lacking[keys + ["budget"]].to_dict("records"),
        )
    found = plan.merge(
        runs[keys + ["threshold_idx", "threshold", "D"]].astype({"width": "int64"}),
        on=keys,
        how="inner",
    )
    return found.assign(strategy=strategy)


def allocation_strategy_table(
    crossings: pd.DataFrame, designs: Mapping[str, pd.DataFrame]
) -> pd.DataFrame:
    """``allocation_strategies.csv``: data needed relative to compute-optimal runs, equal budget.

    For every (env, budget) of the compute-optimal design and every threshold the compute-optimal
    run reaches, ``ratio = D_strategy / D_compute_optimal`` for each other strategy's run at the
    same budget. Thresholds the strategy's run never reaches are counted in ``n_not_reached``
    (its ratio is unbounded) and left out of the mean and median.

    Args:
        crossings: the ``crossings`` table.
        designs: design file name -> design table; the strategy comes from the name
            (:func:`strategy_of_design`).

    Returns:
        Columns strategy, scope (env or ``all``), mean_ratio, median_ratio, n (thresholds x
        budgets compared), n_budgets, n_not_reached, source. The ``compute_optimal`` rows have
        ratio 1 and count its reached thresholds.

    Raises:
        ValueError: a design table lacks a column, no design table is the compute-optimal one,
            or a design name matches no strategy.
    """
    per_strategy: dict[str, list[pd.DataFrame]] = {}
    for name, design in designs.items():
        strategy = strategy_of_design(name)
        if strategy is None:
            raise ValueError(
                f"{name}: design table of unknown strategy (expected a name containing one of "
                f"{[m for m, _ in STRATEGIES.values()]})"
            )
        per_strategy.setdefault(strategy, []).append(design_runs(crossings, design, strategy, name))
    if "compute_optimal" not in per_strategy:
        raise ValueError(
            f"no compute-optimal design table among {sorted(designs)} (a name containing "
            "'compute_optimal')"
        )
    base = pd.concat(per_strategy["compute_optimal"], ignore_index=True)
    base = base.groupby(["env", "budget", "threshold_idx"], as_index=False)["D"].min()
    base = base.rename(columns={"D": "D_co"})
    rows: list[dict] = []
    reached = base[np.isfinite(base["D_co"])]
    for scope, data in [("all", reached), *reached.groupby("env", sort=True)]:
        rows.append(
            {
                "strategy": "compute_optimal",
                "scope": scope,
                "mean_ratio": 1.0 if len(data) else np.nan,
                "median_ratio": 1.0 if len(data) else np.nan,
                "n": len(data),
                "n_budgets": data[["env", "budget"]].drop_duplicates().shape[0],
                "n_not_reached": 0,
                "source": STRATEGIES["compute_optimal"][1],
            }
        )
    for strategy in ("utd_only", "model_only", *sorted(set(per_strategy) - set(STRATEGIES))):
        if strategy not in per_strategy:
            continue
        runs = pd.concat(per_strategy[strategy], ignore_index=True)
        runs = runs.groupby(["env", "budget", "threshold_idx"], as_index=False)["D"].min()
        paired = reached.merge(runs, on=["env", "budget", "threshold_idx"], how="inner")
        paired["ratio"] = paired["D"] / paired["D_co"]
        for scope, data in [("all", paired), *paired.groupby("env", sort=True)]:
            ratio = data["ratio"].to_numpy(float)
            finite = ratio[np.isfinite(ratio)]
            rows.append(
                {
                    "strategy": strategy,
                    "scope": scope,
                    "mean_ratio": float(finite.mean()) if finite.size else np.nan,
                    "median_ratio": float(np.median(finite)) if finite.size else np.nan,
                    "n": int(finite.size),
                    "n_budgets": data[["env", "budget"]].drop_duplicates().shape[0],
                    "n_not_reached": int(np.sum(~np.isfinite(ratio))),
                    "source": STRATEGIES[strategy][1],
                }
            )
    return pd.DataFrame(rows, columns=ALLOCATION_COLUMNS)


# --------------------------------------------------------------------------------------------
# Passive critic (Sec. 5.3, Fig. 4)
# --------------------------------------------------------------------------------------------


def summarise_losses(
    curves: pd.DataFrame, metrics: Sequence[str] = PASSIVE_METRICS, last: float = LAST_FRACTION
) -> pd.DataFrame:
    """Mean of each loss over the last ``last`` fraction of training, per run, averaged over seeds.

    A run's training length is its largest logged step of that metric (over seeds); its summary
    is the mean over steps ``>= (1 - last) * length`` of each seed, then the mean over seeds.
    Only runs with a passive critic (``passive_width`` set) are summarised.

    Returns:
        Columns env, agent, source, utd, batch_size, lr, width, critic_params, passive_width,
        metric, loss, n_seeds.
    """
    keys = ["env", "agent", "source", "utd", "batch_size", "lr", "width", "critic_params"]
    keys += ["passive_width", "metric"]
    sub = curves[curves["metric"].isin(list(metrics)) & curves["passive_width"].notna()]
    sub = sub[np.isfinite(sub["value"].to_numpy(float))]
    if sub.empty:
        return pd.DataFrame(columns=[*keys, "loss", "n_seeds"])
    sub = sub.astype({"width": "float64", "passive_width": "float64"})
    length = sub.groupby(keys, dropna=False)["step"].transform("max")
    tail = sub[sub["step"] >= (1.0 - last) * length]
    per_seed = tail.groupby([*keys, "seed"], dropna=False)["value"].mean().reset_index()
    out = per_seed.groupby(keys, dropna=False)["value"].agg(loss="mean", n_seeds="size")
    return out.reset_index()


def _slopes(summary: pd.DataFrame, x: str, fixed: list[str]) -> list[float]:
    """Log-log slopes of loss vs ``x`` within each group of ``fixed`` with >= 2 distinct x."""
    slopes = []
    for _, group in summary.groupby(fixed, dropna=False, sort=True):
        g = group[(group["loss"] > 0) & (group[x] > 0)]
        if g[x].nunique() < 2:
            continue
        slope, _ = np.polyfit(np.log(g[x].to_numpy(float)), np.log(g["loss"].to_numpy(float)), 1)
        slopes.append(float(slope))
    return slopes


def passive_critic_slope_table(
    curves: pd.DataFrame, metrics: Sequence[str] = PASSIVE_METRICS, last: float = LAST_FRACTION
) -> pd.DataFrame:
    """``passive_critic_slopes.csv``: average log-log slopes of validation TD loss vs width.

    For each agent, env and loss metric (:data:`PASSIVE_METRICS`; the passive critic's
    validation loss is the quantity of paper Fig. 4), the slope of ``log loss`` against ``log main width`` is
    fitted within every group of runs that share everything but the main width (the passive
    width fixed), and against ``log passive width`` with the main width fixed; an env's slope is
    the mean over its groups (``slope_min`` / ``slope_max`` their range). Rows with env
    ``average`` hold the mean over an agent's envs per (metric, against); slopes of different
    agents are never averaged together. Main width is the critic width (the critic parameter
    count where no width is known).

    Returns:
        Columns metric, env, agent, against (``main_width`` | ``passive_width``), slope, slope_min,
        slope_max, n_groups, n_points.
    """
    summary = summarise_losses(curves, metrics, last)
    if summary.empty:
        return pd.DataFrame(columns=PASSIVE_COLUMNS)
    summary = summary.assign(
        main_width=summary["width"].where(summary["width"].notna(), summary["critic_params"])
    )
    base = ["source", "utd", "batch_size", "lr"]
    rows: list[dict] = []
    for metric in metrics:
        per_metric = summary[summary["metric"] == metric]
        for agent, per_agent in per_metric.groupby("agent", sort=True):
            env_rows = []
            for env, data in per_agent.groupby("env", sort=True):
                for against, fixed in (
                    ("main_width", [*base, "passive_width"]),
                    ("passive_width", [*base, "main_width"]),
                ):
                    slopes = _slopes(data, against, fixed)
                    if not slopes:
                        continue
                    env_rows.append(
                        {
                            "metric": metric,
                            "env": env,
                            "agent": agent,
                            "against": against,
                            "slope": float(np.mean(slopes)),
                            "slope_min": float(np.min(slopes)),
                            "slope_max": float(np.max(slopes)),
                            "n_groups": len(slopes),
                            "n_points": len(data),
                        }
                    )
            rows.extend(env_rows)
            for against in ("main_width", "passive_width"):
                sel = [r for r in env_rows if r["against"] == against]
                if not sel:
                    continue
                values = np.array([r["slope"] for r in sel])
                rows.append(
                    {
                        "metric": metric,
                        "env": "average",
                        "agent": agent,
                        "against": against,
                        "slope": float(values.mean()),
                        "slope_min": float(values.min()),
                        "slope_max": float(values.max()),
                        "n_groups": int(sum(r["n_groups"] for r in sel)),
                        "n_points": int(sum(r["n_points"] for r in sel)),
                    }
                )
    return pd.DataFrame(rows, columns=PASSIVE_COLUMNS)
