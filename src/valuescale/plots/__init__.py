"""The paper's figures, drawn from the analysis tables (issue #3, docs/pipeline-api.md).

Entry point: :func:`render_figure` (the workflow's ``figure`` stage delegates to it). Figures and
the tables each is drawn from (their home: :data:`valuescale.catalog.FIGURES`):

======================  ===================================================  ======================
name                    what it shows                                        inputs
======================  ===================================================  ======================
``fig_scaling``         iso-D_J contours of the fitted law over (σ, N),      crossings,
                        measured D_J, compute-optimal stars and line          fits_data_efficiency,
                        (paper Fig. 6)                                        compute_optimal
``fig_batch_size``      best batch size B* vs σ and vs N with Eq. 6.1        best_batch_size,
                        (Figs. 5/11)                                          fits_batch_size
``fig_data_efficiency`` D_J vs σ per N and vs N per σ with Eq. 7.1           crossings,
                        (Figs. 16-17)                                         fits_data_efficiency
``fig_budget``          budget-optimal D*, C*, σ*, N* vs F (Figs. 7-8)       budget_optimal,
                                                                              budget_fits
``fig_preprocessing``   raw seeds, mean, dropped post-reset points,          curves, thresholds
                        isotonic fit, thresholds, crossings (Fig. 10)
``fig_passive_critic``  passive critic's validation TD loss vs main and       curves,
                        passive width (Fig. 4)                                passive_critic_slopes
``fig_overfitting``     train vs validation TD loss vs σ and vs N (Fig. 2)   curves
``fig_learning_curves`` seed-mean return ± standard error per env and N,      curves, thresholds
                        coloured by σ
======================  ===================================================  ======================

``settings["figures"]`` keys (all optional): ``dpi`` (PNG resolution, 150), ``threshold_idx``
(the threshold of the law figures; None = each fit's highest threshold with status ok),
``variants`` (fit variants of ``fig_scaling``/``fig_budget``; default ``["per_env",
"averaged"]``), ``reset_dips`` (the post-reset dip rule of ``fig_preprocessing`` and
``fig_learning_curves``: ``analysis.preprocess.reset_dips``) and ``fit_exclude`` (grid points the
law figures leave out, as the fits did: ``analysis.fits.exclude``). ``fig_scaling`` and
``fig_data_efficiency`` also take an optional
``best_batch_size`` input: with it, measured D_J are those at the batch size closest to B*
(the points the fits used); without it, the smallest D_J over batch sizes at each (σ, N).

A figure with nothing to show is still written, with a panel saying ``no data: <reason>``; a
malformed table raises :class:`TableError` naming the file and the column, and nothing is written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import matplotlib as mpl
from matplotlib.figure import Figure

from valuescale import catalog
from valuescale.plots import batch_size, budget, curves, laws, losses
from valuescale.plots._common import (
    DEFAULT_DPI,
    STYLE,
    Inputs,
    NoData,
    TableError,
    TableSpec,
    no_data_figure,
    save_atomically,
)
from valuescale.plots.batch_size import fig_batch_size
from valuescale.plots.budget import fig_budget
from valuescale.plots.curves import fig_learning_curves, fig_preprocessing
from valuescale.plots.laws import fig_data_efficiency, fig_scaling
from valuescale.plots.losses import fig_overfitting, fig_passive_critic

log = logging.getLogger(__name__)
# fontTools logs every glyph subset at INFO while embedding fonts in the PDF.
logging.getLogger("fontTools").setLevel(logging.WARNING)

Builder = Callable[[Inputs, Mapping[str, object]], Figure]

FIGURES: dict[str, Builder] = {
    "fig_scaling": fig_scaling,
    "fig_batch_size": fig_batch_size,
    "fig_data_efficiency": fig_data_efficiency,
    "fig_budget": fig_budget,
    "fig_preprocessing": fig_preprocessing,
    "fig_passive_critic": fig_passive_critic,
    "fig_overfitting": fig_overfitting,
    "fig_learning_curves": fig_learning_curves,
}

# Tables each figure needs (valuescale.catalog: the figures' home; the optional ones, e.g.
# best_batch_size of the law figures, are left out); extra keys are ignored.
FIGURE_INPUTS: dict[str, tuple[str, ...]] = {
    name: catalog.FIGURES[name].required for name in FIGURES
}

# Columns each figure reads from each input (checked before drawing).
FIGURE_SPECS: dict[str, dict[str, TableSpec]] = {
    "fig_scaling": {
        "crossings": laws.CROSSINGS,
        "fits_data_efficiency": laws.FITS,
        "compute_optimal": laws.COMPUTE_OPTIMAL,
        "best_batch_size": laws.BEST_BATCH_SIZE,
    },
    "fig_batch_size": {
        "best_batch_size": batch_size.BEST_BATCH_SIZE,
        "fits_batch_size": batch_size.FITS_BATCH_SIZE,
    },
    "fig_data_efficiency": {
        "crossings": laws.CROSSINGS,
        "fits_data_efficiency": laws.FITS,
        "best_batch_size": laws.BEST_BATCH_SIZE,
    },
    "fig_budget": {"budget_optimal": budget.BUDGET_OPTIMAL, "budget_fits": budget.BUDGET_FITS},
    "fig_preprocessing": {"curves": curves.CURVES, "thresholds": curves.THRESHOLDS},
    "fig_passive_critic": {"curves": curves.CURVES, "passive_critic_slopes": losses.SLOPES},
    "fig_overfitting": {"curves": curves.CURVES},
    "fig_learning_curves": {"curves": curves.CURVES, "thresholds": curves.THRESHOLDS},
}

TITLES: dict[str, str] = {
    "fig_scaling": "Data efficiency D_J over (σ, N) and the compute-optimal allocation",
    "fig_batch_size": "Best batch size B* vs UTD ratio σ and critic size N",
    "fig_data_efficiency": "Data to reach J vs UTD ratio σ and critic size N",
    "fig_budget": "Budget-optimal allocation vs budget F",
    "fig_preprocessing": "Preprocessing of return curves",
    "fig_passive_critic": "Passive critic: validation TD loss vs main and passive critic width",
    "fig_overfitting": "TD overfitting: training vs validation critic loss",
    "fig_learning_curves": "Learning curves",
}

__all__ = ["FIGURES", "FIGURE_INPUTS", "NoData", "TableError", "build_figure", "render_figure"]


def figure_settings(settings: Mapping[str, object] | None) -> dict[str, object]:
    """``settings["figures"]`` as a dict (empty when absent)."""
    figures = (settings or {}).get("figures") or {}
    if not isinstance(figures, Mapping):
        raise ValueError(f"settings['figures'] must be a mapping, got {type(figures).__name__}")
    return dict(figures)


def build_figure(
    name: str, inputs: Mapping[str, str], settings: Mapping[str, object] | None = None
) -> Figure:
    """The named figure as a matplotlib :class:`Figure` (a "no data" figure when empty).

    Call inside ``matplotlib.rc_context(STYLE)`` for the house style (:func:`render_figure` does).

    Raises:
        ValueError: unknown ``name``.
        TableError: a malformed input table.
    """
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; expected one of {sorted(FIGURES)}")
    tables = Inputs(name, {k: str(v) for k, v in inputs.items()})
    for key, spec in FIGURE_SPECS[name].items():
        tables.check(key, spec)  # every input's columns, before anything is drawn
    try:
        return FIGURES[name](tables, figure_settings(settings))
    except NoData as empty:
        log.warning("%s: no data: %s", name, empty)
        return no_data_figure(TITLES[name], str(empty))


def render_figure(
    name: str,
    inputs: Mapping[str, str],
    out_pdf: str | os.PathLike,
    out_png: str | os.PathLike,
    settings: Mapping[str, object] | None = None,
) -> None:
    """Draw the figure ``name`` from its input tables and write it as PDF and PNG atomically.

    Args:
        name: one of :data:`FIGURES`.
        inputs: table name -> path (see :data:`FIGURE_INPUTS`); a missing or empty table gives a
            "no data" panel.
        out_pdf, out_png: output paths (parent folders are created).
        settings: ``{"figures": {"dpi": ..., ...}}`` (see the module docstring).

    Raises:
        ValueError: unknown ``name`` or bad settings.
        TableError: a malformed input table (naming the file and the column); nothing is written.
    """
    fig_settings = figure_settings(settings)
    dpi = int(fig_settings.get("dpi") or DEFAULT_DPI)
    with mpl.rc_context(STYLE):
        fig = build_figure(name, inputs, settings)
        save_atomically(fig, out_pdf, out_png, dpi)
    log.info("%s: wrote %s and %s", name, out_pdf, out_png)
