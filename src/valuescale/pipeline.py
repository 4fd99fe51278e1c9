"""The stage functions the Snakemake workflow calls (contract: ``docs/pipeline-api.md``).

Each workflow script calls exactly one function here with the rule's inputs, outputs and the
``settings`` dict built by ``analysis_settings(stage)`` in ``workflow/rules/common.smk``. This
module is stage wiring only: each function reads its inputs, turns the settings into arguments,
calls one analysis function (:mod:`valuescale.analysis.stages`,
:func:`valuescale.analysis.allocation.allocation_tables`, :mod:`valuescale.analysis.evaluation`,
:func:`valuescale.analysis.proposal.study_proposals`, :func:`valuescale.plots.render_figure`) and
writes its outputs; the tables' file names and columns come from :mod:`valuescale.catalog`. Every
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
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from valuescale import catalog
from valuescale.analysis import evaluation
from valuescale.analysis import ingest as ingest_mod
from valuescale.analysis.allocation import ComputeModel, allocation_tables
from valuescale.analysis.data_efficiency import exclude_points
from valuescale.analysis.fitting import DegeneracyRules
from valuescale.analysis.proposal import proposal_header, proposal_yaml, study_proposals
from valuescale.analysis.stages import crossing_stage_tables, law_fit_tables
from valuescale.atomic import atomic_write_text
from valuescale.catalog import BATCH_PARAMS, DE_PARAMS

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

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
        ingest_mod.coerce_table(_read(t, catalog.required("curves"), "curve table"), str(t))
        for t in tables
    ]
    if frames:
        df = pd.concat(frames, ignore_index=True)
        df = ingest_mod.coerce_table(df, "merged curves")
    else:
        df = ingest_mod.import_runs([])
    log.info("merged %d tables: %d rows", len(frames), len(df))
    _write_outputs({out: df})


def _read_curves(path: PathLike) -> pd.DataFrame:
    df = _read(path, catalog.required("curves"), "curve table")
    return ingest_mod.coerce_table(df, str(path))


# --------------------------------------------------------------------------------------------
# Crossings
# --------------------------------------------------------------------------------------------


def crossings(
    curves: PathLike,
    *,
    out_crossings: PathLike,
    out_thresholds: PathLike,
    out_best_batch_size: PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Rule ``crossings``: preprocess, thresholds, bootstrap crossings D_J, best batch sizes
    (:func:`valuescale.analysis.stages.crossing_stage_tables`).

    Settings: ``envs`` ({env: j_min, j_max, max_step}), ``reset_interval`` ({agent: gradient
    steps or None}), ``preprocess`` (reset_dips), ``thresholds`` (n, j_max_percentile,
    j_max_factor, round_to, per_agent), ``bootstrap`` (n, seed), ``batch_size``
    (min_batch_sizes). The crossings table records the reset-dip rule (``reset_dips``).
    """
    df = _read_curves(curves)
    envs = _settings(settings, "envs")
    boot_spec = _settings(settings, "bootstrap")
    reset = dict((settings or {}).get("reset_interval") or {"bro": 2_500_000, "simbav2": None})
    tables = crossing_stage_tables(
        df,
        j_min={e: v["j_min"] for e, v in envs.items() if v.get("j_min") is not None},
        j_max={e: v["j_max"] for e, v in envs.items() if v.get("j_max") is not None},
        thresholds=_settings(settings, "thresholds"),
        max_step={e: float(v["max_step"]) for e, v in envs.items() if v.get("max_step")},
        reset_interval={a: (None if v in (None, 0) else float(v)) for a, v in reset.items()},
        reset_rule=str(_settings(settings, "preprocess").get("reset_dips", "ours")),
        n_boot=int(boot_spec.get("n", 100)),
        seed=int(boot_spec.get("seed", 0)),
        min_batch_sizes=int(_settings(settings, "batch_size").get("min_batch_sizes", 3)),
    )
    cr = tables.crossings
    if cr is None:
        cr = _empty(catalog.columns("crossings"))
    best = tables.best_batch_size
    best = _empty(catalog.columns("best_batch_size")) if best is None else best
    if len(best):
        log.info("best batch size statuses: %s", best["status"].value_counts().to_dict())
    thresholds = tables.thresholds if len(tables.thresholds) else _empty([])
    _write_outputs(
        {
            out_crossings: cr,
            out_thresholds: _ordered(thresholds, catalog.columns("thresholds")),
            out_best_batch_size: _ordered(best, catalog.columns("best_batch_size")),
        }
    )


def _read_crossings(path: PathLike) -> pd.DataFrame:
    cr = _read(path, catalog.required("crossings"), "crossings table")
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
    best = _read(path, catalog.required("best_batch_size"), "best batch size table")
    best = _numeric(best, ["utd", "critic_params", "B_star", "B_star_lo", "B_star_hi", "lr"], path)
    if "source" in best:
        best["source"] = best["source"].astype(str)
    return best


# --------------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------------


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

    with _quiet_numerics():
        bs_frames, de_frames = law_fit_tables(
            cr_all,
            cr,
            best,
            holdout=holdout,
            variants=variants,
            n_boot=n_boot,
            n_starts=n_starts,
            seed=seed,
            task_average=task_average,
            batch_choice=batch_choice,
            min_batch_sizes=min_batch,
            rules=rules,
        )
    de_columns = catalog.columns("fits_data_efficiency")
    bs_columns = catalog.columns("fits_batch_size")
    de = pd.concat(de_frames, ignore_index=True) if de_frames else _empty(de_columns)
    bs = pd.concat(bs_frames, ignore_index=True) if bs_frames else _empty(bs_columns)
    _warn_degenerate(de, "data-efficiency", ["source", "variant", "scope", "threshold_idx"])
    _warn_degenerate(bs, "batch-size", ["source", "basis", "scope"])
    if len(bs):
        log.info("batch-size fits %s", bs.groupby(["basis", "status"]).size().to_dict())
    _write_outputs(
        {
            out_batch_size: _ordered(bs, bs_columns),
            out_data_efficiency: _ordered(de, de_columns),
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
    fits_de = _read(path, catalog.required("fits_data_efficiency"), "data-efficiency fits table")
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
    fits_bs = _read(path, catalog.required("fits_batch_size"), "batch-size fits table")
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
    with _quiet_numerics():
        co, bo, bf = allocation_tables(
            fits_de,
            fits_bs,
            model=model,
            deltas=deltas,
            n_heldout=n_heldout,
            variants=variants,
            on_skipped=_warn_skipped,
        )
    if len(bf):
        ok = bf[bf["status"] == "ok"]
        log.info("budget lines: %d ok of %d, median r2 %.3f", len(ok), len(bf), ok["r2"].median())
    _write_outputs(
        {
            out_compute_optimal: _ordered(co, catalog.columns("compute_optimal")),
            out_budget_optimal: _ordered(bo, catalog.columns("budget_optimal")),
            out_budget_fits: _ordered(bf, catalog.columns("budget_fits")),
        }
    )


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
    _read(compute_optimal, catalog.required("compute_optimal"), "compute-optimal table")
    lines = _read(budget_fits, catalog.required("budget_fits"), "budget fits table")
    model = _compute_model(settings)
    deltas = _deltas(settings)
    spec = _settings(settings, "proposal")
    train = _settings(settings, "train")
    budgets = [float(b) for b in spec.get("budgets") or []]
    threshold_idx = spec.get("threshold_idx")
    if model.batch_convention == "real":
        log.warning(
            "proposal: real batch convention approximated with k = %g x B of the rule",
            model.flops_per_param_sample,
        )
    with _quiet_numerics():
        table = study_proposals(
            fits_de,
            fits_bs,
            lines,
            budgets=budgets,
            threshold_idx=None if threshold_idx is None else int(threshold_idx),
            deltas=deltas,
            model=model,
            critic_depth=int(train.get("critic_depth", 2)),
            n_quantiles=int(train.get("n_quantiles", 100)),
        )
    ok = table[table["status"] == "ok"] if len(table) else table
    log.info("proposal: %d of %d proposals usable", len(ok), len(table))
    _write_outputs({out: proposal_yaml(table, proposal_header(model))})


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
