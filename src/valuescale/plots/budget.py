"""``fig_budget`` (paper Figs. 7-8): budget-optimal D*, C*, σ*, N* vs the budget F."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from valuescale.plots._common import (
    Inputs,
    NoData,
    TableSpec,
    empty_panel,
    human,
    log_ticks,
    padded_log_range,
    panel_grid,
    panel_title,
    plain,
    robust_log_range,
    sci,
)
from valuescale.plots.laws import VARIANT_LABELS, _variants_setting

BUDGET_OPTIMAL = TableSpec(
    required=("scope", "budget", "utd", "critic_params", "D", "compute", "status"),
    optional=("agent", "source", "variant", "threshold_idx", "threshold", "delta"),
    numeric=(
        "budget",
        "utd",
        "critic_params",
        "D",
        "compute",
        "threshold_idx",
        "threshold",
        "delta",
    ),
)
BUDGET_FITS = TableSpec(
    required=("scope", "quantity", "slope", "intercept", "r2"),
    optional=("agent", "source", "variant", "n_fit", "n_heldout", "status"),
    numeric=("slope", "intercept", "r2", "n_fit", "n_heldout"),
)
N_HELDOUT = 5
# (quantity in budget_fits, column in budget_optimal, axis label, tick format)
QUANTITIES = (
    ("D", "D", "D*: env steps", human),
    ("C", "compute", "C*: FLOPs", sci),
    ("sigma", "utd", "σ*: UTD ratio", plain),
    ("N", "critic_params", "N*: critic parameters", human),
)
FIT_COLOUR = "#1f4e9c"
HELDOUT_COLOUR = "#d1495b"


def _group_keys(df: pd.DataFrame) -> list[str]:
    return [c for c in ("variant", "agent", "source", "scope") if c in df]


def _line(fits: pd.DataFrame | None, key: Mapping[str, object], quantity: str) -> pd.Series | None:
    if fits is None:
        return None
    sel = fits[fits["quantity"].astype(str) == quantity]
    for column, value in key.items():
        if column in sel and value is not None:
            sel = sel[sel[column].astype(str) == str(value)]
    if "status" in sel:
        sel = sel[sel["status"].astype(str) == "ok"]
    sel = sel[np.isfinite(sel["slope"]) & np.isfinite(sel["intercept"])]
    return sel.iloc[0] if len(sel) else None


def _draw(
    ax: Axes, points: pd.DataFrame, line: pd.Series | None, column: str, label: str, fmt: object
) -> None:
    budget = points["budget"].to_numpy(float)
    y = points[column].to_numpy(float)
    ok = np.isfinite(budget) & np.isfinite(y) & (budget > 0) & (y > 0)
    budget, y = budget[ok], y[ok]
    n_fit = len(budget) - N_HELDOUT
    if line is not None and "n_fit" in line and np.isfinite(line["n_fit"]):
        n_fit = int(line["n_fit"])
    n_fit = max(0, min(n_fit, len(budget)))
    y_lo, y_hi = robust_log_range(y, 1.3)
    inside = (y >= y_lo) & (y <= y_hi)
    fitted = np.arange(len(y)) < n_fit
    ax.scatter(budget[fitted & inside], y[fitted & inside], color=FIT_COLOUR, s=14, zorder=3)
    ax.scatter(
        budget[~fitted & inside],
        y[~fitted & inside],
        facecolors="white",
        edgecolors=HELDOUT_COLOUR,
        marker="D",
        s=16,
        lw=1.0,
        zorder=3,
    )
    for side, limit, marker in ((y > y_hi, y_hi, "^"), (y < y_lo, y_lo, "v")):
        if side.any():
            ax.scatter(
                budget[side],
                np.full(side.sum(), limit),
                marker=marker,
                color="0.45",
                s=18,
                zorder=4,
                clip_on=False,
            )
    if (~inside).any():
        ax.text(
            0.98,
            0.03,
            f"{int((~inside).sum())} off-scale (▲▼)",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=6.5,
            color="0.35",
        )
    x_lo, x_hi = padded_log_range(budget, 1.3)
    if line is not None:
        split = budget[n_fit - 1] if 0 < n_fit <= len(budget) else x_hi
        xs = np.geomspace(x_lo, x_hi, 60)
        ys = 10 ** (line["intercept"] + line["slope"] * np.log10(xs))
        r2 = float(line["r2"])
        ax.plot(
            xs[xs <= split],
            ys[xs <= split],
            color=FIT_COLOUR,
            lw=1.2,
            label=f"slope {line['slope']:.2f}, R²={r2:.2f}" if np.isfinite(r2) else "",
        )
        ax.plot(xs[xs >= split], ys[xs >= split], color=FIT_COLOUR, lw=1.2, ls="--")
        ax.legend(loc="best", handlelength=1.2, borderaxespad=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_ylabel(label)
    ax.set_xlabel("budget F: FLOPs")
    log_ticks(ax.yaxis, None, fmt)
    log_ticks(ax.xaxis, None, sci)


def fig_budget(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Paper Figs. 7-8: budget-optimal D*, C*, σ*, N* vs F, one row per fit scope.

    Each threshold J gives one budget-optimal point (F*, D*, C*, σ*, N*); the log-log line of
    ``budget_fits`` is fitted on the lowest budgets (filled points, solid line) and extrapolated
    to the held-out top 5 (hollow diamonds, dashed line); the legend gives its slope and R² over
    all points. Rows: per-env fits, then task-averaged fits (``settings["variants"]``).
    """
    points = tables.get("budget_optimal", BUDGET_OPTIMAL)
    if points is None:
        raise NoData(f"no budget-optimal table ({tables.path('budget_optimal')})")
    points = points[points["status"].astype(str) == "ok"]
    variants = _variants_setting(settings)
    if "variant" in points:
        points = points[points["variant"].astype(str).isin(variants)]
    if points.empty:
        raise NoData("no budget-optimal point with status ok")
    fits = tables.get("budget_fits", BUDGET_FITS)
    keys = _group_keys(points)
    order = {v: i for i, v in enumerate(variants)}
    points = points.assign(_order=points["variant"].map(order) if "variant" in points else 0)
    groups = [
        (key if isinstance(key, tuple) else (key,), data)
        for key, data in points.sort_values(["_order", *keys]).groupby(keys, sort=False)
    ]
    fig, axes = panel_grid(4 * len(groups), 4, 2.1, extra_height=0.8)
    for i, (values, data) in enumerate(groups):
        key = dict(zip(keys, values, strict=True))
        data = data.sort_values("budget")
        row_axes = axes[4 * i : 4 * i + 4]
        for ax, (quantity, column, label, fmt) in zip(row_axes, QUANTITIES, strict=True):
            if np.isfinite(data[column].to_numpy(float)).sum() == 0:
                empty_panel(ax, f"no finite {column}")
                continue
            _draw(ax, data, _line(fits, key, quantity), column, label, fmt)
        variant = VARIANT_LABELS.get(str(key.get("variant")), key.get("variant") or "")
        row_axes[0].set_title(panel_title(key["scope"], key.get("agent"), str(variant)), loc="left")
        delta = (
            f"δ = {sci(float(data['delta'].iloc[0]))} FLOPs per env step" if "delta" in data else ""
        )
        if delta:
            row_axes[1].set_title(delta, loc="left")
    handles = [
        Line2D([], [], ls="", marker="o", color=FIT_COLOUR, label="budget-optimal point (fitted)"),
        Line2D(
            [],
            [],
            ls="",
            marker="D",
            mfc="white",
            mec=HELDOUT_COLOUR,
            label=f"held out (top {N_HELDOUT})",
        ),
        Line2D([], [], color=FIT_COLOUR, label="log-log fit"),
        Line2D([], [], color=FIT_COLOUR, ls="--", label="extrapolation"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4)
    fig.suptitle("Budget-optimal allocation vs budget F = C_J + δ·D_J (one point per threshold J)")
    return fig
