"""Figures of critic losses: ``fig_overfitting`` (paper Fig. 2), ``fig_passive_critic`` (Fig. 4).

Every loss is summarised per run as in :mod:`valuescale.analysis.evaluation`: a run's training
length is its largest logged step of the metric (over seeds), each seed's summary is its mean over
the steps at or after 90 % of that length, and points show the mean over seeds (± one standard
error).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from valuescale.plots._common import (
    ColourScale,
    Inputs,
    NoData,
    TableSpec,
    agent_label,
    figure_title,
    fill_optional,
    human,
    log_ticks,
    main_source,
    padded_log_range,
    panel_grid,
    panel_title,
    params_scale,
    plain,
    utd_scale,
)
from valuescale.plots.curves import CURVES

LAST_FRACTION = 0.1
TRAIN_METRIC = "critic_loss"
VALIDATION_METRIC = "validation_critic_loss"
PASSIVE_METRIC = "passive_validation_critic_loss"
SLOPES = TableSpec(
    required=("env", "against", "slope"),
    optional=("metric", "agent"),
    numeric=("slope",),
)
RUN_KEYS = ["agent", "env", "source", "utd", "batch_size", "lr", "width", "critic_params"]


def load_losses(tables: Inputs, metrics: Sequence[str]) -> pd.DataFrame | None:
    """Rows of ``metrics`` from the curves table (optional columns filled), or None."""
    curves = tables.get("curves", CURVES, filters=[("metric", "in", list(metrics))])
    if curves is None:
        return None
    curves = fill_optional(
        curves, {"lr": np.nan, "source": "own", "width": np.nan, "passive_width": np.nan}
    )
    curves = curves.astype({"width": "float64", "passive_width": "float64"})
    return curves[np.isfinite(curves["value"].to_numpy(float))]


def summarise(
    curves: pd.DataFrame, keys: Sequence[str], last: float = LAST_FRACTION
) -> pd.DataFrame:
    """Mean of each metric over the last ``last`` of training, per run and seed, then over seeds.

    Args:
        curves: long rows (``keys`` + seed, step, metric, value).
        keys: columns of a run (besides ``metric``); runs differing in other columns (e.g. the
            passive width for the main critic's losses) are pooled as further samples.

    Returns:
        ``keys``, metric, loss (mean over samples), loss_se (standard error), n_samples.
    """
    keys = [*keys, "metric"]
    run = [*keys, *(c for c in ("passive_width",) if c not in keys)]
    length = curves.groupby(run, dropna=False)["step"].transform("max")
    tail = curves[curves["step"] >= (1.0 - last) * length]
    per_sample = tail.groupby([*run, "seed"], dropna=False)["value"].mean().reset_index()
    grouped = per_sample.groupby(keys, dropna=False)["value"]
    out = grouped.agg(loss="mean", sd="std", n_samples="size").reset_index()
    out["loss_se"] = np.where(
        out["n_samples"] > 1, out["sd"] / np.sqrt(out["n_samples"].clip(lower=1)), 0.0
    )
    return out.drop(columns="sd")


def _most_sampled(summary: pd.DataFrame, slot: Sequence[str]) -> pd.DataFrame:
    """Per ``slot``, only the rows of the (source, batch size, lr) with the most samples."""
    variant = ["source", "batch_size", "lr"]
    totals = summary.groupby([*slot, *variant], dropna=False)["n_samples"].sum().reset_index()
    totals = totals.sort_values(["n_samples", "batch_size"], ascending=[False, True])
    chosen = totals.drop_duplicates(list(slot))[[*slot, *variant]]
    return summary.merge(chosen, on=[*slot, *variant], how="inner")


def _size(df: pd.DataFrame, column: str, fallback: str) -> pd.Series:
    return df[column].where(df[column].notna(), df[fallback])


def _errorbar(ax: Axes, x: np.ndarray, y: np.ndarray, se: np.ndarray, **kwargs: object) -> None:
    lower = np.minimum(se, 0.9 * y)
    ax.errorbar(x, y, yerr=np.vstack([lower, se]), capsize=1.5, elinewidth=0.7, **kwargs)


def _log_axes(ax: Axes, x: np.ndarray, y: np.ndarray, x_fmt: object) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*padded_log_range(x, 1.25))
    ax.set_ylim(*padded_log_range(y, 1.3))
    log_ticks(ax.xaxis, x, x_fmt)
    log_ticks(ax.yaxis, None, plain)


# --------------------------------------------------------------------------------------------
# fig_overfitting (paper Fig. 2)
# --------------------------------------------------------------------------------------------


def _draw_overfitting(
    ax: Axes, data: pd.DataFrame, x: str, group: str, scale: ColourScale, x_fmt: object
) -> None:
    """Train (solid, filled) and validation (dashed, hollow) loss vs ``x``, one colour per
    value of ``group``."""
    for value, rows in data.groupby(group, sort=True):
        colour = scale(float(value))
        for metric, style in (
            (TRAIN_METRIC, {"ls": "-", "marker": "o", "mfc": colour}),
            (VALIDATION_METRIC, {"ls": "--", "marker": "s", "mfc": "white"}),
        ):
            sel = rows[rows["metric"] == metric].sort_values(x)
            if sel.empty:
                continue
            _errorbar(
                ax,
                sel[x].to_numpy(float),
                sel["loss"].to_numpy(float),
                sel["loss_se"].to_numpy(float),
                color=colour,
                ms=3.5,
                lw=1.0,
                mec=colour,
                **style,
            )
    _log_axes(ax, data[x].to_numpy(float), data["loss"].to_numpy(float), x_fmt)


def fig_overfitting(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Paper Fig. 2: training vs validation TD loss of the critic, vs σ and vs N, per env.

    Loss = mean over the last 10 % of training (mean over seeds ± s.e.); solid/filled: training
    loss on replay batches, dashed/hollow: validation loss on the held-out buffer. Left panel of
    each pair: vs σ, one colour per N; right: vs N, one colour per σ. Per (σ, N), the batch size
    (and learning rate) with the most seeds; per env the source with the most (σ, N)
    configurations (the grid).
    """
    curves = load_losses(tables, (TRAIN_METRIC, VALIDATION_METRIC))
    if curves is None or not (curves["metric"] == VALIDATION_METRIC).any():
        raise NoData("no validation critic loss in the curves (runs without a validation buffer)")
    summary = summarise(curves, RUN_KEYS)
    has_val = summary[summary["metric"] == VALIDATION_METRIC][RUN_KEYS].drop_duplicates()
    summary = summary.merge(has_val, on=RUN_KEYS, how="inner")
    summary = main_source(summary)
    summary = _most_sampled(summary, ["agent", "env", "utd", "critic_params"])
    summary = summary[summary["loss"] > 0]
    if summary.empty:
        raise NoData("no positive critic losses")
    groups = list(summary.groupby(["agent", "env"], sort=True))
    many = summary["source"].nunique() > 1
    n_scale = params_scale(summary["critic_params"].to_numpy(float))
    u_scale = utd_scale(summary["utd"].to_numpy(float))
    fig, axes = panel_grid(2 * len(groups), 4, 2.35, extra_height=1.6)
    for i, ((agent, env), data) in enumerate(groups):
        left, right = axes[2 * i], axes[2 * i + 1]
        _draw_overfitting(left, data, "utd", "critic_params", n_scale, plain)
        _draw_overfitting(right, data, "critic_params", "utd", u_scale, human)
        title = panel_title(env, agent, source=data["source"].iloc[0] if many else None)
        left.set_title(f"{title}\nvs σ", fontsize=8.5)
        right.set_title(f"{title}\nvs N", fontsize=8.5)
        left.set_xlabel("UTD ratio σ")
        right.set_xlabel("critic parameters N")
        left.set_ylabel("critic TD loss (last 10 %)")
    n_scale.colorbar(fig, axes, location="bottom", shrink=0.45, aspect=45, pad=0.01)
    u_scale.colorbar(fig, axes, location="bottom", shrink=0.45, aspect=45, pad=0.01)
    handles = [
        Line2D([], [], color="0.3", marker="o", label="training loss (replay batches)"),
        Line2D(
            [],
            [],
            color="0.3",
            ls="--",
            marker="s",
            mfc="white",
            label="validation loss (held-out buffer)",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    fig.suptitle(
        "TD overfitting: training vs validation critic loss (mean over the last 10 % of training)"
    )
    return fig


# --------------------------------------------------------------------------------------------
# fig_passive_critic (paper Fig. 4)
# --------------------------------------------------------------------------------------------


def _slope_text(slopes: pd.DataFrame | None, env: str, agent: str, against: str) -> str:
    if slopes is None:
        return ""
    sel = slopes[(slopes["env"].astype(str) == env) & (slopes["against"].astype(str) == against)]
    if "metric" in sel:
        sel = sel[sel["metric"].astype(str) == PASSIVE_METRIC]
    if agent and "agent" in sel and sel["agent"].notna().any():
        sel = sel[sel["agent"].astype(str) == agent]
    if sel.empty or not np.isfinite(sel["slope"].iloc[0]):
        return ""
    what = "main" if against == "main_width" else "passive"
    return f"slope vs {what} width {float(sel['slope'].iloc[0]):+.2f} (mean)"


def _draw_passive(ax: Axes, data: pd.DataFrame, x: str, group: str, scale: ColourScale) -> None:
    """Passive critic's validation loss vs ``x``; one colour per ``group`` width; dotted
    per-line log-log fits."""
    for value, rows in data.groupby(group, sort=True):
        rows = rows.sort_values(x)
        colour = scale(float(value))
        xv, y = rows[x].to_numpy(float), rows["loss"].to_numpy(float)
        _errorbar(
            ax, xv, y, rows["loss_se"].to_numpy(float), color=colour, marker="o", ms=3.8, lw=1.1
        )
        if len(np.unique(xv)) >= 2:
            slope, intercept = np.polyfit(np.log(xv), np.log(y), 1)
            grid = np.geomspace(xv.min(), xv.max(), 20)
            ax.plot(grid, np.exp(intercept) * grid**slope, color=colour, ls=":", lw=0.9)
    _log_axes(ax, data[x].to_numpy(float), data["loss"].to_numpy(float), scale.fmt)


def fig_passive_critic(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Paper Fig. 4: the passive critic's validation TD loss vs main-critic width (one line per
    passive width) and vs passive-critic width (one line per main width), log-log, per env.

    The passive critic regresses the main critic's TD targets without acting or bootstrapping;
    falling loss with the main width means better targets, with the passive width more capacity.
    Titles: the mean slope of ``passive_critic_slopes``; dotted lines: per-line log-log fits.
    Widths fall back to parameter counts where no width is known.
    """
    curves = load_losses(tables, (PASSIVE_METRIC,))
    if curves is None:
        raise NoData("no passive-critic validation loss in the curves")
    curves = curves[curves["passive_width"].notna()]
    if curves.empty:
        raise NoData("no runs with a passive critic")
    summary = summarise(curves, [*RUN_KEYS, "passive_width", "passive_critic_params"])
    summary = summary.assign(
        main_size=_size(summary, "width", "critic_params"),
        passive_size=_size(summary, "passive_width", "passive_critic_params"),
    )
    summary = _most_sampled(summary, ["agent", "env", "utd"])
    summary = summary[summary["loss"] > 0]
    if summary.empty:
        raise NoData("no positive passive-critic losses")
    slopes = tables.get("passive_critic_slopes", SLOPES)
    groups = list(summary.groupby(["agent", "env", "utd"], sort=True))
    widths = np.concatenate([summary["main_size"], summary["passive_size"]]).astype(float)
    scale = params_scale(
        widths, "line colour: passive critic width (left of each pair), main critic width (right)"
    )
    scale = replace(scale, fmt=plain if np.nanmax(widths) < 1e5 else human)
    fig, axes = panel_grid(2 * len(groups), 4, 2.5, extra_height=1.6)
    for i, ((agent, env, utd), data) in enumerate(groups):
        left, right = axes[2 * i], axes[2 * i + 1]
        _draw_passive(left, data, "main_size", "passive_size", scale)
        _draw_passive(right, data, "passive_size", "main_size", scale)
        batch = int(data["batch_size"].iloc[0])
        title = panel_title(env, agent, f"σ={float(utd):g}, B={batch}")
        left.set_title(f"{title}\n{_slope_text(slopes, str(env), str(agent), 'main_width')}")
        right.set_title(f"{title}\n{_slope_text(slopes, str(env), str(agent), 'passive_width')}")
        left.set_xlabel("main critic width")
        right.set_xlabel("passive critic width")
        left.set_ylabel("passive critic\nvalidation TD loss")
    scale.colorbar(fig, axes, location="bottom", shrink=0.5, aspect=45, pad=0.01)
    agents = sorted({str(key[0]) for key, _ in groups})
    averages = []
    for agent in agents:
        average = [
            _slope_text(slopes, "average", agent, against).replace(" (mean)", "")
            for against in ("main_width", "passive_width")
        ]
        if all(average):
            who = f"{agent_label(agent)} " if len(agents) > 1 else ""
            averages.append(f"{who}{', '.join(average)}")
    extra = f" — average over envs: {'; '.join(averages)}" if averages else ""
    figure_title(fig, f"Passive critic: validation TD loss (last 10 % of training){extra}")
    return fig
