"""The stage functions the Snakemake workflow calls (contract: ``docs/pipeline-api.md``).

Each workflow script calls exactly one function here with the rule's inputs, outputs and the
``settings`` dict built by ``analysis_settings(stage)`` in ``workflow/rules/common.smk``. Every
function reads its inputs, checks the columns it needs (a missing or mistyped column is a
``ValueError`` naming the file and the column), computes all its tables in memory and only then
writes them, each atomically (temporary file + ``os.replace``); if writing one of several outputs
fails, the outputs already written by that call are removed again. Too little data never raises:
the tables carry a ``status``/``reason`` or are empty with their documented columns.

Decisions beyond the contract (all logged):

* ``crossings``: thresholds are per env over all curve sources; an env whose thresholds cannot be
  set (data-rule J_min >= J_max, e.g. ``pendulum-swingup`` of the BRO ablation, which is not in
  the paper's table) is dropped with a warning instead of failing the stage.
  ``crossings.parquet`` also holds ``D_boot_nan_frac`` and ``D_boot`` (the K bootstrap crossings
  of every row, a list column), so the fits refit real seed-bootstrap resamples.
* ``fits``: every curve source not in ``holdout_sources`` is fitted **separately** (a ``source``
  column in both fit tables): the published ``fitted_bs`` (HumanoidBench + humanoid-stand, BRO,
  at the authors' fitted batch sizes), ``dmc_bro_ablations`` (DMC, B = 1024), the SimbaV2 grid
  and our own runs are different experiments and are never pooled into one law. Batch-size laws
  are fitted to measured B* (``basis = B_star``: groups with status ``ok``), and, where every
  (σ, N) was run at one batch size chosen by a rule (``fitted_bs``), to the batch sizes the runs
  used (``basis = run_batch_size``: this recovers the authors' rule; it is not a measurement of
  B*). ``B_geomean`` (geometric mean of the fitted batch sizes) backs up proposals without a law.
  ``fits.n_bootstrap`` caps the number of bootstrap resamples refitted.
* ``allocation``: tables per fit source; ``budget_fits.csv`` adds ``budget_min``/``budget_max``
  (the range of budget-optimal F* that the lines cover). With ``batch_convention: real`` the
  compute coefficient is ``flops_per_param_sample * B(σ, N)`` from the batch-size rule of the scope
  (:func:`valuescale.analysis.proposal.batch_size_rule`): compute-optimal points by a 1-D search
  along the iso-D curve, budget-optimal points numerically.
* ``fit_errors`` / ``allocation_strategies`` / ``passive_critic_slopes``: see
  :mod:`valuescale.analysis.evaluation`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from valuescale.analysis import evaluation
from valuescale.analysis import ingest as ingest_mod
from valuescale.analysis import proposal as proposal_mod
from valuescale.analysis.allocation import (
    ComputeModel,
    annotate_budget_points,
    budget_fit_table,
    budget_optimal_numeric,
    budget_optimal_table,
    compute_optimal,
    compute_optimal_line,
    compute_optimal_table,
    delta_for,
    law_is_usable,
    skipped_rows,
)
from valuescale.analysis.batch_size_fit import (
    BATCH_PARAMS,
    batch_sizes_in_use,
    fit_batch_size_table,
)
from valuescale.analysis.best_config import best_batch_size as best_batch_size_table
from valuescale.analysis.crossings import CROSSING_COLUMNS, CrossingTables, crossing_tables
from valuescale.analysis.data_efficiency import (
    DE_PARAMS,
    attach_bootstrap_table,
    exclude_points,
    fit_data_efficiency_table,
    select_fit_points,
    suite_of,
)
from valuescale.analysis.fitting import DegeneracyRules
from valuescale.analysis.preprocess import CONFIG_KEYS, Curve, preprocess
from valuescale.analysis.thresholds import study_thresholds
from valuescale.atomic import atomic_write_text

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Minimum columns of the tables the stages read (docs/pipeline-api.md).
CURVES_REQUIRED: list[str] = ingest_mod.CURVE_COLUMNS + ["source"]
CROSSINGS_REQUIRED: list[str] = [
    "env",
    "agent",
    "utd",
    "critic_params",
    "batch_size",
    "lr",
    "source",
    "threshold_idx",
    "threshold",
    "D",
]
BEST_BATCH_REQUIRED: list[str] = ["env", "agent", "utd", "critic_params", "B_star"]
FITS_DE_REQUIRED: list[str] = [
    "scope",
    "variant",
    "threshold_idx",
    "threshold",
    *DE_PARAMS,
    "status",
]
FITS_BATCH_REQUIRED: list[str] = ["scope", *BATCH_PARAMS, "status"]
BUDGET_FITS_REQUIRED: list[str] = ["scope", "quantity", "slope", "intercept", "r2"]
COMPUTE_OPTIMAL_REQUIRED: list[str] = ["scope", "D_target", "utd_star", "critic_params_star"]

THRESHOLD_COLUMNS: list[str] = ["env", "agent", "threshold_idx", "threshold"]
BEST_BATCH_COLUMNS: list[str] = [
    "env",
    "agent",
    "source",
    "utd",
    "critic_params",
    "width",
    "lr",
    "B_star",
    "B_star_lo",
    "B_star_hi",
    "n_batch_sizes",
    "n_boot",
    "status",
]
FITS_BATCH_COLUMNS: list[str] = [
    "scope",
    "agent",
    "source",
    "basis",
    "level",
    "a_B",
    "alpha_B",
    "b_B",
    "beta_B",
    "rel_error",
    "loglinear_rel_error",
    "log_intercept",
    "slope_utd",
    "slope_critic_params",
    "B_geomean",
    "n_points",
    "status",
    "reason",
]
FITS_DE_COLUMNS: list[str] = [
    "scope",
    "agent",
    "source",
    "variant",
    "group",
    "envs",
    "threshold_idx",
    "threshold",
    *[f"{p}{s}" for p in DE_PARAMS for s in ("", "_lo", "_hi")],
    "loss",
    "n_points",
    "status",
    "reason",
]
COMPUTE_OPTIMAL_COLUMNS: list[str] = [
    "scope",
    "agent",
    "source",
    "variant",
    "threshold_idx",
    "threshold",
    "D_target",
    "utd_star",
    "critic_params_star",
    "compute_star",
    "k",
    "line_slope",
    "line_intercept",
    "status",
    "reason",
]
BUDGET_OPTIMAL_COLUMNS: list[str] = [
    "scope",
    "agent",
    "source",
    "variant",
    "threshold_idx",
    "threshold",
    "delta",
    "budget",
    "utd",
    "critic_params",
    "D",
    "compute",
    "status",
    "reason",
    "D_line",
    "compute_line",
    "utd_derived",
    "critic_params_derived",
]
BUDGET_FITS_COLUMNS: list[str] = [
    "scope",
    "agent",
    "source",
    "variant",
    "quantity",
    "slope",
    "intercept",
    "r2",
    "r2_fit",
    "r2_heldout",
    "method",
    "slope_direct",
    "intercept_direct",
    "r2_direct",
    "n_fit",
    "n_heldout",
    "budget_min",
    "budget_max",
    "status",
    "reason",
]
DEFAULT_VARIANTS: tuple[str, ...] = ("per_env", "shared", "averaged")


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def _read(path: PathLike, required: Sequence[str], what: str) -> pd.DataFrame:
    """Read a ``.parquet``/``.csv`` table and check it has the ``required`` columns.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be parsed, or a required column is missing (naming both).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found")
    try:
        df = ingest_mod.read_table(p)
    except Exception as exc:
        raise ValueError(f"{p}: cannot read the {what}: {type(exc).__name__}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: the {what} lacks column(s) {missing}")
    return df


def _numeric(df: pd.DataFrame, columns: Sequence[str], path: PathLike) -> pd.DataFrame:
    """Cast ``columns`` to float64, naming the file and column when one is not numeric."""
    out = df.copy()
    for column in columns:
        if column not in out:
            continue
        try:
            out[column] = pd.to_numeric(out[column], errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: column {column!r} is not numeric: {exc}") from exc
    return out


def _write_outputs(outputs: Mapping[PathLike, pd.DataFrame | str]) -> None:
    """Write every output atomically; on failure remove the ones this call already wrote."""
    written: list[Path] = []
    try:
        for path, content in outputs.items():
            p = Path(path)
            if isinstance(content, str):
                atomic_write_text(p, content)
            else:
                ingest_mod.write_table(content, p)
            written.append(p)
            log.info("wrote %s", p)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype="object") for c in columns})


def _ordered(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``df`` with ``columns`` first (missing ones added as NaN), other columns after."""
    if df.empty and not len(df.columns):
        return _empty(columns)
    out = df.copy()
    for column in columns:
        if column not in out:
            out[column] = np.nan
    rest = [c for c in out.columns if c not in columns]
    return out[list(columns) + rest]


@contextmanager
def _quiet_numerics() -> Iterator[None]:
    """Silence floating-point RuntimeWarnings of the optimisers (their outcomes carry a status)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _settings(settings: Mapping[str, Any] | None, key: str) -> Mapping[str, Any]:
    value = (settings or {}).get(key) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"settings[{key!r}] must be a mapping, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# Curves: aggregate, import, merge
# --------------------------------------------------------------------------------------------


def _run_info(curves_path: Path) -> dict[str, Any]:
    """``run.json`` next to a run's ``curves.parquet``; ValueError naming the run when it is
    missing or says the run is not complete (a partial run is never aggregated)."""
    path = curves_path.with_name("run.json")
    if not path.is_file():
        raise ValueError(f"{curves_path}: no run.json beside it; is the run finished?")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not info.get("complete"):
        raise ValueError(
            f"{path} says the run is not complete (env step {info.get('env_steps')}); "
            "a partial run is not aggregated: finish it (rerun its train job) first"
        )
    return info


def aggregate_runs(runs: Sequence[PathLike], out: PathLike) -> None:
    """Rule ``aggregate``: every train job's ``curves.parquet`` -> ``tables/curves_own.parquet``.

    Rows get ``source = "own"``. Each run's ``run.json`` is read: a run that is not complete (or
    has none) stops the rule with its name before anything is written, seeds marked ``diverged``
    are logged (their rows up to the divergence stay), and runs with a passive critic get
    ``passive_width`` / ``passive_critic_params`` from it.
    """
    frames = []
    for run in runs:
        path = Path(run)
        table = ingest_mod.import_runs([path])
        info = _run_info(path)
        for seed, status in (info.get("seeds") or {}).items():
            if status.get("status") != "ok":
                log.warning(
                    "%s: seed %s is %s (at env step %s); its rows before that stay",
                    path,
                    seed,
                    status.get("status"),
                    status.get("diverged_at_step"),
                )
        config = info.get("config") or {}
        if config.get("passive_critic"):
            width = config.get("passive_critic_width")
            params = info.get("passive_critic_params")
            table["passive_width"] = pd.array([width] * len(table), dtype="Int64")
            table["passive_critic_params"] = pd.array([params] * len(table), dtype="Int64")
        frames.append(table)
    df = pd.concat(frames, ignore_index=True) if frames else ingest_mod.import_runs([])
    log.info("aggregated %d runs, %d rows", len(frames), len(df))
    _write_outputs({out: df})


def import_published(archive: PathLike, name: str, out: PathLike) -> None:
    """Rule ``published_import``: one published zip -> ``tables/published/<name>.parquet``."""
    df = ingest_mod.import_published(archive, name=name)
    log.info("%s: %d rows, %d envs", name, len(df), df["env"].nunique())
    _write_outputs({out: df})


def merge_curves(tables: Sequence[PathLike], out: PathLike) -> None:
    """Rule ``merge_curves``: own runs + imported archives -> ``tables/curves.parquet``."""
    frames = [
        ingest_mod.coerce_table(_read(t, CURVES_REQUIRED, "curve table"), str(t)) for t in tables
    ]
    if frames:
        df = pd.concat(frames, ignore_index=True)
        df = ingest_mod.coerce_table(df, "merged curves")
    else:
        df = ingest_mod.import_runs([])
    log.info("merged %d tables: %d rows", len(frames), len(df))
    _write_outputs({out: df})


def _read_curves(path: PathLike) -> pd.DataFrame:
    df = _read(path, CURVES_REQUIRED, "curve table")
    return ingest_mod.coerce_table(df, str(path))


# --------------------------------------------------------------------------------------------
# Crossings
# --------------------------------------------------------------------------------------------


def _thresholds_per_env(
    curves: list[Curve], envs: Mapping[str, Mapping[str, Any]], spec: Mapping[str, Any]
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Thresholds of every (env, agent) that can have them, and the pairs dropped (with a
    warning): :func:`valuescale.analysis.thresholds.study_thresholds`."""
    j_min = {e: v["j_min"] for e, v in envs.items() if v.get("j_min") is not None}
    j_max = {e: v["j_max"] for e, v in envs.items() if v.get("j_max") is not None}
    table, dropped, messages = study_thresholds(curves, spec, j_min=j_min, j_max=j_max)
    for message in messages:
        log.warning("%s; its curves are left out", message)
    return (table if len(table) else _empty(THRESHOLD_COLUMNS)), dropped


def _with_bootstrap(tables: CrossingTables, n_boot: int) -> pd.DataFrame:
    """The crossings table with a ``D_boot`` column (the K resamples of each row).

    Uses the row layout of :func:`valuescale.analysis.crossings.crossing_tables` (per
    configuration a [K, J] block) when it verifies, else a keyed merge.
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
        return attach_bootstrap_table(cr, boot)
    D = boot["D"].to_numpy(float).reshape(n_cfg, n_boot, n_thr).transpose(0, 2, 1)
    out = cr.copy()
    out["D_boot"] = list(D.reshape(n_rows, n_boot))
    return out


def crossings(
    curves: PathLike,
    *,
    out_crossings: PathLike,
    out_thresholds: PathLike,
    out_best_batch_size: PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Rule ``crossings``: preprocess, thresholds, bootstrap crossings D_J, best batch sizes.

    Settings: ``envs`` ({env: j_min, j_max, max_step}), ``reset_interval`` ({agent: gradient
    steps or None}), ``preprocess`` (reset_dips), ``thresholds`` (n, j_max_percentile,
    j_max_factor, round_to, per_agent), ``bootstrap`` (n, seed), ``batch_size``
    (min_batch_sizes). The crossings table records the reset-dip rule (``reset_dips``).
    """
    df = _read_curves(curves)
    envs = _settings(settings, "envs")
    spec = _settings(settings, "thresholds")
    boot_spec = _settings(settings, "bootstrap")
    n_boot = int(boot_spec.get("n", 100))
    seed = int(boot_spec.get("seed", 0))
    min_batch = int(_settings(settings, "batch_size").get("min_batch_sizes", 3))
    max_step = {e: float(v["max_step"]) for e, v in envs.items() if v.get("max_step")}
    reset = dict((settings or {}).get("reset_interval") or {"bro": 2_500_000, "simbav2": None})
    reset = {a: (None if v in (None, 0) else float(v)) for a, v in reset.items()}

    reset_rule = str(_settings(settings, "preprocess").get("reset_dips", "ours"))

    curve_list = preprocess(df, max_step=max_step, reset_interval=reset, reset_rule=reset_rule)
    log.info("%d configurations after preprocessing (%s reset rule)", len(curve_list), reset_rule)
    thresholds, dropped = _thresholds_per_env(curve_list, envs, spec)
    left_out = set(dropped)
    curve_list = [c for c in curve_list if (str(c.key["env"]), str(c.key["agent"])) not in left_out]
    if curve_list:
        tables = crossing_tables(curve_list, thresholds, n_boot=n_boot, seed=seed)
        cr = _with_bootstrap(tables, n_boot).assign(reset_dips=reset_rule)
        best = best_batch_size_table(tables.bootstrap, min_batch_sizes=min_batch)
    else:
        log.warning("no configuration has thresholds: writing empty tables")
        cr = _empty(CROSSING_COLUMNS + ["D_boot"])
        best = _empty(BEST_BATCH_COLUMNS)
    if len(best):
        log.info("best batch size statuses: %s", best["status"].value_counts().to_dict())
    _write_outputs(
        {
            out_crossings: cr,
            out_thresholds: _ordered(thresholds, THRESHOLD_COLUMNS),
            out_best_batch_size: _ordered(best, BEST_BATCH_COLUMNS),
        }
    )


def _read_crossings(path: PathLike) -> pd.DataFrame:
    cr = _read(path, CROSSINGS_REQUIRED, "crossings table")
    cr = _numeric(cr, ["utd", "critic_params", "batch_size", "lr", "threshold", "D", "D_std"], path)
    cr["source"] = cr["source"].astype(str)
    if "width" in cr:
        cr["width"] = cr["width"].astype("Int64")
    if "D_boot" in cr:
        cr["D_boot"] = [
            None if v is None else np.asarray(v, dtype=float) for v in cr["D_boot"].to_numpy()
        ]
    return cr


def _read_best_batch(path: PathLike) -> pd.DataFrame:
    best = _read(path, BEST_BATCH_REQUIRED, "best batch size table")
    best = _numeric(best, ["utd", "critic_params", "B_star", "B_star_lo", "B_star_hi", "lr"], path)
    if "source" in best:
        best["source"] = best["source"].astype(str)
    return best


# --------------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------------


def fit_sources(crossings_table: pd.DataFrame, holdout: Sequence[str]) -> list[str]:
    """Curve sources the laws are fitted on: every source not held out, sorted."""
    return sorted(set(crossings_table["source"].astype(str)) - set(holdout))


def _cap_bootstrap(points: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Keep the first ``n_boot`` resamples of every ``D_boot`` array."""
    if "D_boot" not in points:
        return points
    out = points.copy()
    out["D_boot"] = [None if v is None else np.asarray(v)[:n_boot] for v in out["D_boot"]]
    return out


def _geomean(values: np.ndarray) -> float:
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.mean(np.log(values)))) if values.size else np.nan


def _add_geomean(fits: pd.DataFrame, data: pd.DataFrame, value: str) -> pd.DataFrame:
    """``B_geomean`` of each batch-size fit row: the geometric mean of its fitted batch sizes."""
    out = fits.copy()
    geo = []
    for row in out.itertuples(index=False):
        sel = data[data["agent"] == row.agent]
        if row.level == "env":
            sel = sel[sel["env"] == row.scope]
        elif row.level == "suite":
            sel = sel[[suite_of(e) == row.scope for e in sel["env"]]]
        geo.append(_geomean(sel[value].to_numpy(float)))
    out["B_geomean"] = geo
    return out


def _batch_fits_for_source(
    source: str,
    cr: pd.DataFrame,
    best: pd.DataFrame,
    n_boot: int,
    n_starts: int,
    seed: int,
    rules: DegeneracyRules | None = None,
) -> list[pd.DataFrame]:
    """Batch-size law rows of one source: on measured B*, and on the run batch sizes."""
    frames = []
    measured = best[best["source"] == source] if "source" in best else best
    if len(measured):
        table = fit_batch_size_table(
            measured, n_boot=n_boot, n_starts=n_starts, seed=seed, rules=rules
        )
        if len(table):
            frames.append(_add_geomean(table, measured, "B_star").assign(basis="B_star"))
    design = batch_sizes_in_use(cr, sources=[source])
    per_config = (
        cr[cr["source"] == source]
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
                frames.append(_add_geomean(table, runs, "B_star").assign(basis="run_batch_size"))
    return [f.assign(source=source) for f in frames]


def fits(
    crossings: PathLike,
    best_batch_size: PathLike,
    *,
    out_batch_size: PathLike,
    out_data_efficiency: PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Rule ``fits``: batch-size law (Eq. 6.1) + log-linear baseline, D_J(σ, N) (Eq. 7.1).

    Settings ``fits``: ``n_starts``, ``seed``, ``n_bootstrap``, ``variants``, ``holdout_sources``,
    ``task_average``, ``exclude``, ``batch_choice``, ``degenerate``
    (:class:`valuescale.analysis.fitting.DegeneracyRules`); ``batch_size``: ``min_batch_sizes``.
    The data-efficiency table records each row's batch-size rule (``batch_choice``). Every
    degenerate fit is logged as a warning with its reason.
    """
    spec = _settings(settings, "fits")
    n_starts = int(spec.get("n_starts", 8))
    seed = int(spec.get("seed", 0))
    n_boot = int(spec.get("n_bootstrap", 100))
    variants = tuple(spec.get("variants") or DEFAULT_VARIANTS)
    holdout = list(spec.get("holdout_sources") or [])
    task_average = str(spec.get("task_average", "per_threshold"))
    batch_choice = dict(spec.get("batch_choice") or {})
    min_batch = int(_settings(settings, "batch_size").get("min_batch_sizes", 3))
    rules = DegeneracyRules.from_settings(spec.get("degenerate"))
    cr_all = _read_crossings(crossings)
    best = _read_best_batch(best_batch_size)
    cr = exclude_points(cr_all, spec.get("exclude"))  # the D_J fits' grid; B* laws use all
    if len(cr) < len(cr_all):
        log.info(
            "analysis.fits.exclude leaves %d of %d crossing rows out of the D_J fits",
            len(cr_all) - len(cr),
            len(cr_all),
        )

    de_frames, bs_frames = [], []
    for source in fit_sources(cr, holdout):
        points = select_fit_points(
            cr, best, sources=[source], batch_choice=batch_choice, min_batch_sizes=min_batch
        )
        if points.empty:
            continue
        points = _cap_bootstrap(points, n_boot)
        with _quiet_numerics():
            table = fit_data_efficiency_table(
                points,
                variants=variants,
                n_boot=n_boot,
                n_starts=n_starts,
                seed=seed,
                task_average=task_average,
                rules=rules,
            )
            bs_frames.extend(
                _batch_fits_for_source(source, cr_all, best, n_boot, n_starts, seed, rules)
            )
        if len(table):
            choices = [batch_choice.get(str(a), "B_star") for a in table["agent"]]
            de_frames.append(table.assign(source=source, batch_choice=choices))
            log.info(
                "%s: data-efficiency fits %s",
                source,
                table.groupby(["variant", "status"]).size().to_dict(),
            )
    de = pd.concat(de_frames, ignore_index=True) if de_frames else _empty(FITS_DE_COLUMNS)
    bs = pd.concat(bs_frames, ignore_index=True) if bs_frames else _empty(FITS_BATCH_COLUMNS)
    _warn_degenerate(de, "data-efficiency", ["source", "variant", "scope", "threshold_idx"])
    _warn_degenerate(bs, "batch-size", ["source", "basis", "scope"])
    if len(bs):
        log.info("batch-size fits %s", bs.groupby(["basis", "status"]).size().to_dict())
    _write_outputs(
        {
            out_batch_size: _ordered(bs, FITS_BATCH_COLUMNS),
            out_data_efficiency: _ordered(de, FITS_DE_COLUMNS),
        }
    )


def _warn_degenerate(table: pd.DataFrame, what: str, keys: Sequence[str]) -> None:
    """One warning per degenerate fit (what it is and why): later stages skip these fits."""
    if not len(table) or "status" not in table:
        return
    for _, row in table[table["status"] == "degenerate"].iterrows():
        where = ", ".join(f"{k} {row[k]}" for k in keys if k in row)
        log.warning("%s fit degenerate (%s): %s", what, where, row.get("reason", ""))


def _read_fits_de(path: PathLike) -> pd.DataFrame:
    fits_de = _read(path, FITS_DE_REQUIRED, "data-efficiency fits table")
    fits_de = _numeric(fits_de, ["threshold_idx", "threshold", *DE_PARAMS], path)
    if "source" in fits_de:
        fits_de["source"] = fits_de["source"].fillna("").astype(str)
    else:
        fits_de["source"] = ""
    if "agent" not in fits_de:
        fits_de["agent"] = ""
    fits_de["threshold_idx"] = fits_de["threshold_idx"].astype("int64")
    return fits_de


def _read_fits_batch(path: PathLike) -> pd.DataFrame:
    fits_bs = _read(path, FITS_BATCH_REQUIRED, "batch-size fits table")
    return _numeric(fits_bs, [*BATCH_PARAMS, "rel_error", "loglinear_rel_error"], path)


# --------------------------------------------------------------------------------------------
# Allocation
# --------------------------------------------------------------------------------------------


def _compute_model(settings: Mapping[str, Any]) -> ComputeModel:
    spec = _settings(settings, "compute")
    return ComputeModel(
        batch_convention=str(spec.get("batch_convention", "accounting")),
        flops_per_param_sample=float(spec.get("flops_per_param_sample", 10.0)),
        accounting_batch=float(spec.get("accounting_batch", 256)),
    )


def _deltas(settings: Mapping[str, Any]) -> dict[str, float]:
    return {
        env: float(v["delta"])
        for env, v in _settings(settings, "envs").items()
        if isinstance(v, Mapping) and v.get("delta") is not None
    }


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


def _real_coefficient(
    fits_bs: pd.DataFrame | None, row: pd.Series, flops: float
) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray] | None, str]:
    """``flops * B(σ, N)`` with the batch-size rule of a fit row's scope (an env, or the suite of
    an averaged fit: :func:`valuescale.analysis.proposal.batch_size_rule` looks for the scope,
    its suite, then ``all``)."""
    rule, text = proposal_mod.batch_size_rule(
        fits_bs, str(row["agent"]), str(row["source"]), str(row["scope"])
    )
    if rule is None:
        return None, text

    def coefficient(u: np.ndarray, n: np.ndarray) -> np.ndarray:
        return flops * np.asarray(rule(u, n), dtype=float)

    return coefficient, text


def _real_tables(
    usable: pd.DataFrame, fits_bs: pd.DataFrame | None, model: ComputeModel, deltas: Mapping
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute- and budget-optimal tables under the real-batch convention (numerical)."""
    co_rows, bo_rows = [], []
    ids = ("scope", "agent", "source", "variant", "threshold_idx", "threshold")
    base_co = compute_optimal_table(usable, k=model.k)
    for _, row in usable.iterrows():
        params = {k: float(row[k]) for k in DE_PARAMS}
        meta = {c: row[c] for c in ids if c in row}
        coefficient, text = _real_coefficient(fits_bs, row, model.flops_per_param_sample)
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


def allocation(
    crossings: PathLike,
    fits_data_efficiency: PathLike,
    fits_batch_size: PathLike,
    *,
    out_compute_optimal: PathLike,
    out_budget_optimal: PathLike,
    out_budget_fits: PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Rule ``allocation``: compute-optimal (σ*, N*), budget-optimal points, budget lines.

    Settings: ``envs`` ({env: delta}), ``compute`` (flops_per_param_sample, batch_convention,
    accounting_batch), ``budget`` (n_heldout), ``fits`` (variants).
    """
    cr = _read_crossings(crossings)
    fits_de = _read_fits_de(fits_data_efficiency)
    fits_bs = _read_fits_batch(fits_batch_size)
    model = _compute_model(settings)
    deltas = _deltas(settings)
    n_heldout = int(_settings(settings, "budget").get("n_heldout", 5))
    variants = tuple(_settings(settings, "fits").get("variants") or DEFAULT_VARIANTS)
    log.info(
        "compute: %s convention, C = %g x batch x sigma x N x D; %d crossing rows",
        model.batch_convention,
        model.flops_per_param_sample,
        len(cr),
    )
    selected = fits_de[fits_de["variant"].isin(variants)]
    selected = selected[selected["status"].isin(["ok", "degenerate"])]
    co_frames, bo_frames, bf_frames = [], [], []
    for source, group in selected.groupby("source", sort=True):
        usable = group[group["status"] == "ok"]
        skipped = skipped_rows(group, variants)
        _warn_skipped(skipped, source)
        with _quiet_numerics():
            if model.batch_convention == "accounting":
                co = compute_optimal_table(group, variants=variants, k=model.k)
                bo = budget_optimal_table(group, variants=variants, k=model.k, delta=deltas)
            else:
                co, bo = _real_tables(usable, fits_bs, model, deltas)
                co = _concat([co, skipped], COMPUTE_OPTIMAL_COLUMNS)
                bo = _concat([bo, skipped], BUDGET_OPTIMAL_COLUMNS)
            if len(bo):
                bf = budget_fit_table(bo, n_heldout=n_heldout, fits=usable)
                bo = annotate_budget_points(bo, usable, n_heldout=n_heldout)
        co = co.assign(source=source) if len(co) else co
        bo = bo.assign(source=source) if len(bo) else bo
        co_frames.append(co)
        bo_frames.append(bo)
        if len(bo):
            bf_frames.append(_budget_ranges(bf.assign(source=source), bo))
    co = _concat(co_frames, COMPUTE_OPTIMAL_COLUMNS)
    bo = _concat(bo_frames, BUDGET_OPTIMAL_COLUMNS)
    bf = _concat(bf_frames, BUDGET_FITS_COLUMNS)
    if len(bf):
        ok = bf[bf["status"] == "ok"]
        log.info("budget lines: %d ok of %d, median r2 %.3f", len(ok), len(bf), ok["r2"].median())
    _write_outputs(
        {
            out_compute_optimal: _ordered(co, COMPUTE_OPTIMAL_COLUMNS),
            out_budget_optimal: _ordered(bo, BUDGET_OPTIMAL_COLUMNS),
            out_budget_fits: _ordered(bf, BUDGET_FITS_COLUMNS),
        }
    )


def _concat(frames: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else _empty(columns)


def _warn_skipped(skipped: pd.DataFrame, source: str) -> None:
    """One warning per fit scope whose degenerate fits are left out of the allocation."""
    if not len(skipped):
        return
    keys = [c for c in ("agent", "variant", "scope") if c in skipped]
    for key, rows in skipped.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        thresholds = ", ".join(f"#{int(i)}" for i in sorted(rows["threshold_idx"]))
        log.warning(
            "allocation (%s, %s): %d degenerate fit(s) skipped, threshold(s) %s: %s",
            source,
            " ".join(str(k) for k in key),
            len(rows),
            thresholds,
            "; ".join(sorted(set(rows["reason"].astype(str))))[:400],
        )


def _budget_ranges(budget_fits: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Add ``budget_min`` / ``budget_max`` (range of the usable F*) to budget-fit rows."""
    keys = [c for c in ("scope", "agent", "source", "variant") if c in budget_fits and c in points]
    ok = points[(points["status"] == "ok") & np.isfinite(points["budget"].astype(float))]
    ranges = ok.groupby(keys)["budget"].agg(budget_min="min", budget_max="max").reset_index()
    return budget_fits.merge(ranges, on=keys, how="left")


# --------------------------------------------------------------------------------------------
# Evaluation tables
# --------------------------------------------------------------------------------------------


def fit_errors(
    crossings: PathLike,
    fits_data_efficiency: PathLike,
    best_batch_size: PathLike,
    fits_batch_size: PathLike,
    *,
    out: PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Rule ``fit_errors``: relative errors of the fits on fitted / interpolated / extrapolated
    configurations and of the batch-size rule vs its log-linear baseline
    (:func:`valuescale.analysis.evaluation.fit_error_table`); the grid points that
    ``fits.exclude`` leaves out of the D_J fits are left out of their errors too."""
    spec = _settings(settings, "fits")
    cr = exclude_points(_read_crossings(crossings), spec.get("exclude"))
    fits_de = _read_fits_de(fits_data_efficiency)
    best = _read_best_batch(best_batch_size)
    fits_bs = _read_fits_batch(fits_batch_size)
    eval_sets = _settings(settings, "evaluation").get("eval_sets")
    eval_sets = evaluation.EVAL_SETS if eval_sets is None else eval_sets
    with _quiet_numerics():
        table = evaluation.fit_error_table(
            cr.drop(columns="D_boot", errors="ignore"),
            fits_de,
            best,
            fits_bs,
            eval_sets=eval_sets,
            variants=tuple(spec.get("variants") or DEFAULT_VARIANTS),
            n_starts=int(spec.get("n_starts", 8)),
            seed=int(spec.get("seed", 0)),
        )
    avg = table[(table["scope"] == "average") & (table["variant"] == "per_env")]
    for row in avg.itertuples(index=False):
        log.info(
            "%s %s %s (fits on %s): mean relative error %.3f over %d points",
            row.quantity,
            row.variant,
            row.set,
            row.fit_source,
            row.mean_rel_error,
            row.n,
        )
    _write_outputs({out: table})


def allocation_strategies(
    crossings: PathLike,
    design: Sequence[PathLike],
    *,
    out: PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Rule ``allocation_strategies``: data needed by σ-only and N-only scaling relative to
    compute-optimal runs at equal budgets (paper Table 1;
    :func:`valuescale.analysis.evaluation.allocation_strategy_table`)."""
    del settings  # no setting changes this table
    if not design:
        raise ValueError("allocation_strategies: no design tables given")
    cr = _read_crossings(crossings)
    designs = {}
    for path in design:
        table = _read(path, evaluation.DESIGN_COLUMNS, "allocation design table")
        designs[Path(path).stem] = _numeric(
            table, ["utd", "critic_width", "compute_budget", "batch_size_rounded"], path
        )
    table = evaluation.allocation_strategy_table(
        cr.drop(columns="D_boot", errors="ignore"), designs
    )
    for row in table[table["scope"] == "all"].itertuples(index=False):
        log.info(
            "%s: mean ratio %.3f, median %.3f, n %d",
            row.strategy,
            row.mean_ratio,
            row.median_ratio,
            row.n,
        )
    _write_outputs({out: table})


def passive_critic_slopes(curves: PathLike, *, out: PathLike, settings: Mapping[str, Any]) -> None:
    """Rule ``passive_critic_slopes``: log-log slopes of validation TD loss vs main and passive
    critic width (:func:`valuescale.analysis.evaluation.passive_critic_slope_table`)."""
    del settings
    df = _read_curves(curves)
    table = evaluation.passive_critic_slope_table(df)
    if table.empty:
        log.warning("%s: no runs with a passive critic and validation losses", curves)
    _write_outputs({out: table})


# --------------------------------------------------------------------------------------------
# Proposal
# --------------------------------------------------------------------------------------------


def proposal(
    fits_data_efficiency: PathLike,
    fits_batch_size: PathLike,
    compute_optimal: PathLike,
    budget_fits: PathLike,
    *,
    out: PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Rule ``proposal``: the compute-optimal (σ, width, B) to run next per env and budget, as a
    config fragment with a ``grid:`` list (:mod:`valuescale.analysis.proposal`).

    Settings: ``envs`` ({env: delta}), ``compute``, ``proposal`` (budgets, threshold_idx),
    ``train`` (critic_depth, n_quantiles).
    """
    fits_de = _read_fits_de(fits_data_efficiency)
    fits_bs = _read_fits_batch(fits_batch_size)
    _read(compute_optimal, COMPUTE_OPTIMAL_REQUIRED, "compute-optimal table")
    lines = _read(budget_fits, BUDGET_FITS_REQUIRED, "budget fits table")
    model = _compute_model(settings)
    deltas = _deltas(settings)
    spec = _settings(settings, "proposal")
    train = _settings(settings, "train")
    budgets = [float(b) for b in spec.get("budgets") or []]
    threshold_idx = spec.get("threshold_idx")
    k = model.k
    if model.batch_convention == "real":
        log.warning(
            "proposal: real batch convention approximated with k = %g x B of the rule",
            model.flops_per_param_sample,
        )
    with _quiet_numerics():
        table = proposal_mod.propose_runs(
            fits_de,
            fits_bs,
            lines,
            budgets=budgets,
            threshold_idx=None if threshold_idx is None else int(threshold_idx),
            delta=lambda env: delta_for(env, deltas),
            k=k,
            critic_depth=int(train.get("critic_depth", 2)),
            n_quantiles=int(train.get("n_quantiles", 100)),
        )
        if model.batch_convention == "real":
            table = _real_batch_proposals(
                table, fits_de, fits_bs, lines, budgets, threshold_idx, deltas, model, train
            )
    header = [
        "Compute-optimal runs proposed by the fitted laws (valuescale.pipeline.proposal).",
        "Paste the grid blocks into a study config (format: workflow/schemas/config.schema.yaml).",
        f"Budget F = C_J + delta * D_J in FLOPs, C_J = {model.flops_per_param_sample:g} x "
        f"{'B' if model.batch_convention == 'real' else f'{model.accounting_batch:g}'}"
        " x sigma x N x D_J.",
        "Each comment: the unrounded allocation (sigma, N, W, B, D, C) and how it was found.",
        "",
    ]
    ok = table[table["status"] == "ok"] if len(table) else table
    log.info("proposal: %d of %d proposals usable", len(ok), len(table))
    _write_outputs({out: proposal_mod.proposal_yaml(table, header)})


def _real_batch_proposals(
    table: pd.DataFrame,
    fits_de: pd.DataFrame,
    fits_bs: pd.DataFrame,
    lines: pd.DataFrame,
    budgets: Sequence[float],
    threshold_idx: Any,
    deltas: Mapping[str, float],
    model: ComputeModel,
    train: Mapping[str, Any],
) -> pd.DataFrame:
    """Real-batch convention: redo each env's proposals with ``k = flops x B`` at the proposed
    (σ, N), a few fixed-point rounds (B changes slowly with σ and N)."""
    for _ in range(4):
        frames = []
        for (agent, source, env), group in table.groupby(["agent", "source", "env"], sort=False):
            batch = float(np.nanmedian(group["batch_size"].to_numpy(float)))
            k = model.flops_per_param_sample * batch if np.isfinite(batch) else model.k
            sel = fits_de[
                (fits_de["agent"] == agent)
                & (fits_de["source"] == source)
                & (fits_de["scope"] == env)
            ]
            frames.append(
                proposal_mod.propose_runs(
                    sel,
                    fits_bs,
                    lines,
                    budgets=budgets,
                    threshold_idx=None if threshold_idx is None else int(threshold_idx),
                    delta=lambda e: delta_for(e, deltas),
                    k=k,
                    critic_depth=int(train.get("critic_depth", 2)),
                    n_quantiles=int(train.get("n_quantiles", 100)),
                )
            )
        table = pd.concat(frames, ignore_index=True) if frames else table
    return table


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def figure(
    name: str,
    inputs: Mapping[str, PathLike],
    *,
    out_pdf: PathLike,
    out_png: PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Rule ``figure``: delegates to :func:`valuescale.plots.render_figure` (imported lazily, so
    the analysis stages never import matplotlib)."""
    from valuescale.plots import render_figure

    render_figure(name, dict(inputs), out_pdf, out_png, settings)
