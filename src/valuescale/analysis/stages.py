"""The analysis of each workflow stage that combines several analysis modules: tables in, tables
out, no files (:mod:`valuescale.pipeline` reads the inputs, calls one function here or in the
module that owns the maths, and writes the outputs; the tables' columns:
:mod:`valuescale.catalog`).

* :func:`crossing_stage_tables` -- curves -> thresholds, crossings D_J with their bootstrap
  resamples, best batch sizes (:mod:`~valuescale.analysis.preprocess`,
  :mod:`~valuescale.analysis.thresholds`, :mod:`~valuescale.analysis.crossings`,
  :mod:`~valuescale.analysis.best_config`).
* :func:`law_fit_tables` -- crossings and best batch sizes -> both laws, fitted separately to
  every curve source (:mod:`~valuescale.analysis.data_efficiency`,
  :mod:`~valuescale.analysis.batch_size_fit`).

The allocation, evaluation and proposal stages call :func:`valuescale.analysis.allocation.
allocation_tables`, :mod:`valuescale.analysis.evaluation` and
:func:`valuescale.analysis.proposal.study_proposals` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from valuescale.analysis.batch_size_fit import batch_fits_for_source
from valuescale.analysis.best_config import best_batch_size
from valuescale.analysis.crossings import crossing_tables, with_bootstrap_column
from valuescale.analysis.data_efficiency import (
    cap_bootstrap,
    fit_data_efficiency_table,
    fit_sources,
    select_fit_points,
)
from valuescale.analysis.fitting import DegeneracyRules
from valuescale.analysis.preprocess import preprocess
from valuescale.analysis.thresholds import study_thresholds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossingStageTables:
    """Outputs of the crossings stage (``None``: no configuration has thresholds)."""

    crossings: pd.DataFrame | None
    thresholds: pd.DataFrame
    best_batch_size: pd.DataFrame | None


def crossing_stage_tables(
    curves: pd.DataFrame,
    *,
    j_min: Mapping[str, float],
    j_max: Mapping[str, float],
    thresholds: Mapping[str, Any],
    max_step: Mapping[str, float],
    reset_interval: Mapping[str, float | None],
    reset_rule: str,
    n_boot: int,
    seed: int,
    min_batch_sizes: int,
) -> CrossingStageTables:
    """Preprocess the curves, set each (env, agent)'s thresholds (pairs whose thresholds cannot
    be set are left out with a warning), cross them with a seed bootstrap (``D_boot``: the
    resamples of each row; ``reset_dips``: the reset-dip rule) and pick the best batch sizes."""
    curve_list = preprocess(
        curves, max_step=max_step, reset_interval=reset_interval, reset_rule=reset_rule
    )
    log.info("%d configurations after preprocessing (%s reset rule)", len(curve_list), reset_rule)
    table, dropped, messages = study_thresholds(curve_list, thresholds, j_min=j_min, j_max=j_max)
    for message in messages:
        log.warning("%s; its curves are left out", message)
    left_out = set(dropped)
    curve_list = [c for c in curve_list if (str(c.key["env"]), str(c.key["agent"])) not in left_out]
    if not curve_list:
        log.warning("no configuration has thresholds: writing empty tables")
        return CrossingStageTables(None, table, None)
    tables = crossing_tables(curve_list, table, n_boot=n_boot, seed=seed)
    cr = with_bootstrap_column(tables, n_boot).assign(reset_dips=reset_rule)
    best = best_batch_size(tables.bootstrap, min_batch_sizes=min_batch_sizes)
    return CrossingStageTables(cr, table, best)


def law_fit_tables(
    crossings: pd.DataFrame,
    fit_crossings: pd.DataFrame,
    best: pd.DataFrame,
    *,
    holdout: Sequence[str],
    variants: tuple[str, ...],
    n_boot: int,
    n_starts: int,
    seed: int,
    task_average: str,
    batch_choice: Mapping[str, str],
    min_batch_sizes: int,
    rules: DegeneracyRules | None,
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Batch-size and data-efficiency law fits of every curve source not in ``holdout``, each
    source fitted separately (a ``source`` column; never pooled into one law).

    ``crossings``: all crossings (the batch-size laws use them all); ``fit_crossings``: those
    the D_J fits use (after ``analysis.fits.exclude``). Returns the frames of both tables (batch
    size, data efficiency), one or more per source; the data-efficiency rows record the
    batch-size rule of their points (``batch_choice``).
    """
    de_frames, bs_frames = [], []
    for source in fit_sources(fit_crossings, holdout):
        points = select_fit_points(
            fit_crossings,
            best,
            sources=[source],
            batch_choice=batch_choice,
            min_batch_sizes=min_batch_sizes,
        )
        if points.empty:
            continue
        points = cap_bootstrap(points, n_boot)
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
            batch_fits_for_source(
                source, crossings, best, n_boot=n_boot, n_starts=n_starts, seed=seed, rules=rules
            )
        )
        if len(table):
            choices = [batch_choice.get(str(a), "B_star") for a in table["agent"]]
            de_frames.append(table.assign(source=source, batch_choice=choices))
            log.info(
                "%s: data-efficiency fits %s",
                source,
                table.groupby(["variant", "status"]).size().to_dict(),
            )
    return bs_frames, de_frames
