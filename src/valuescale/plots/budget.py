"""``fig_budget`` (paper Figs. 7-8): budget-optimal D*, C*, σ*, N* vs the budget F."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from valuescale.plots._common import (
    Inputs,
    NoData,
    TableSpec,
    agent_label,
    empty_panel,
    human,
    log_ticks,
    padded_log_range,
    panel_grid,
    panel_title,
    plain,
    robust_log_range,
    sci,
    source_label,
)
from valuescale.plots.laws import VARIANT_LABELS, _variants_setting

BUDGET_OPTIMAL = TableSpec(
    required=("scope", "budget", "utd", "critic_params", "D", "compute", "status"),
    optional=(
        "agent",
        "source",
        "variant",
        "threshold_idx",
        "threshold",
        "delta",
        "reason",
        "utd_derived",
        "critic_params_derived",
    ),
    numeric=(
        "budget",
        "utd",
        "critic_params",
        "D",
        "compute",
        "threshold_idx",
        "threshold",
        "delta",
        "utd_derived",
        "critic_params_derived",
    ),
)
BUDGET_FITS = TableSpec(
    required=("scope", "quantity", "slope", "intercept", "r2"),
    optional=(
        "agent",
        "source",
        "variant",
        "n_fit",
        "n_heldout",
        "status",
        "method",
        "slope_direct",
        "intercept_direct",
        "r2_direct",
    ),
    numeric=(
        "slope",
        "intercept",
        "r2",
        "n_fit",
        "n_heldout",
        "slope_direct",
        "intercept_direct",
        "r2_direct",
    ),
)
N_HELDOUT = 5
# Column of budget_optimal with the σ*, N* derived from each point's law at the fitted D*(F).
DERIVED = {"sigma": "utd_derived", "N": "critic_params_derived"}
DIRECT_COLOUR = "0.55"
SKIPPED_COLOUR = "#8b1a1a"
# (quantity in budget_fits, column in budget_optimal, axis label, tick format)
QUANTITIES = (
    ("D", "D", "D*: env steps", human),
    ("C", "compute", "C*: FLOPs", sci),
    ("sigma", "utd", "σ*: UTD ratio", plain),
    ("N", "critic_params", "N*: critic parameters", human),
)
QUANTITY_SYMBOLS = {"D": "D", "C": "C", "sigma": "σ", "N": "N"}
# A (variant, agent, source) family with more scopes than this shares one row of panels.
MAX_SINGLE_ROWS = 3
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


def _split(
    budget: np.ndarray, y: np.ndarray, line: pd.Series | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Finite positive points sorted by budget and how many of the lowest are fitted."""
    ok = np.isfinite(budget) & np.isfinite(y) & (budget > 0) & (y > 0)
    order = np.argsort(budget[ok], kind="stable")
    budget, y = budget[ok][order], y[ok][order]
    n_fit = len(budget) - N_HELDOUT
    if line is not None and "n_fit" in line and np.isfinite(line["n_fit"]):
        n_fit = int(line["n_fit"])
    n_fit = max(0, min(n_fit, len(budget)))
    return budget, y, np.arange(len(y)) < n_fit, n_fit


def _points(
    ax: Axes,
    budget: np.ndarray,
    y: np.ndarray,
    fitted: np.ndarray,
    limits: tuple[float, float],
    colour: str,
    held_colour: str,
) -> int:
    """Fitted points filled, held-out ones hollow diamonds, off-scale ones as ▲▼ at the edge;
    returns the number off-scale."""
    y_lo, y_hi = limits
    inside = (y >= y_lo) & (y <= y_hi)
    ax.scatter(budget[fitted & inside], y[fitted & inside], color=colour, s=14, zorder=3)
    ax.scatter(
        budget[~fitted & inside],
        y[~fitted & inside],
        facecolors="white",
        edgecolors=held_colour,
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
    return int((~inside).sum())


def _fit_line(
    ax: Axes,
    line: pd.Series,
    budget: np.ndarray,
    n_fit: int,
    xlim: tuple[float, float],
    colour: str,
    label: str | None = None,
) -> None:
    """The log-log line: solid over the fitted budgets, dashed beyond (extrapolation)."""
    split = budget[n_fit - 1] if 0 < n_fit <= len(budget) else xlim[1]
    xs = np.geomspace(*xlim, 60)
    ys = 10 ** (line["intercept"] + line["slope"] * np.log10(xs))
    ax.plot(xs[xs <= split], ys[xs <= split], color=colour, lw=1.2, label=label)
    ax.plot(xs[xs >= split], ys[xs >= split], color=colour, lw=1.2, ls="--")


def _finish(
    ax: Axes,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    label: str,
    fmt: object,
    off: int,
) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_ylabel(label)
    ax.set_xlabel("budget F: FLOPs")
    log_ticks(ax.yaxis, None, fmt)
    log_ticks(ax.xaxis, None, sci, min_ticks=2)  # long labels: few ticks
    if off:
        ax.text(
            0.98,
            0.03,
            f"{off} off-scale (▲▼)",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=6.5,
            color="0.35",
        )


def _derived_curve(
    ax: Axes, points: pd.DataFrame, column: str, n_fit: int, r2: float, limits: tuple
) -> bool:
    """σ̂*, N̂* derived from each point's law at the fitted D*(F): solid over the fitted budgets,
    dashed over the held-out ones. False when the points carry no derived values."""
    if column not in points:
        return False
    data = points.sort_values("budget")
    budget = data["budget"].to_numpy(float)
    y = data[column].to_numpy(float)
    ok = np.isfinite(budget) & np.isfinite(y) & (y > 0) & (budget > 0)
    if ok.sum() < 2:
        return False
    budget, y = budget[ok], np.clip(y[ok], *limits)
    label = f"law at fitted D*: R²={r2:.2f}" if np.isfinite(r2) else "law at fitted D*"
    k = max(1, min(n_fit, len(budget)))
    ax.plot(budget[:k], y[:k], color=FIT_COLOUR, lw=1.2, label=label)
    ax.plot(budget[k - 1 :], y[k - 1 :], color=FIT_COLOUR, lw=1.2, ls="--")
    return True


def _draw(
    ax: Axes,
    points: pd.DataFrame,
    line: pd.Series | None,
    column: str,
    label: str,
    fmt: object,
    quantity: str = "",
) -> None:
    """One scope: its points, its fitted line (D*, C*) or the σ*, N* derived from the laws at
    the fitted D* with the direct regression as a dotted diagnostic; slope and R² in the legend."""
    budget, y, fitted, n_fit = _split(
        points["budget"].to_numpy(float), points[column].to_numpy(float), line
    )
    limits = robust_log_range(y, 1.3)
    off = _points(ax, budget, y, fitted, limits, FIT_COLOUR, HELDOUT_COLOUR)
    xlim = padded_log_range(budget, 1.3)
    if line is not None:
        r2 = float(line["r2"])
        derived = (
            quantity in DERIVED
            and str(line.get("method", "")) == "derived"
            and _derived_curve(ax, points, DERIVED[quantity], n_fit, r2, limits)
        )
        if derived:
            direct = line.get("r2_direct", np.nan)
            if np.isfinite(line.get("slope_direct", np.nan)):
                xs = np.geomspace(*xlim, 40)
                ys = 10 ** (line["intercept_direct"] + line["slope_direct"] * np.log10(xs))
                ax.plot(
                    xs,
                    ys,
                    color=DIRECT_COLOUR,
                    lw=0.9,
                    ls=":",
                    label=f"direct fit (diagnostic): R²={direct:.2f}",
                )
        else:
            text = f"slope {line['slope']:.2f}, R²={r2:.2f}" if np.isfinite(r2) else None
            _fit_line(ax, line, budget, n_fit, xlim, FIT_COLOUR, text)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", handlelength=1.2, borderaxespad=0.2, fontsize=6)
    _finish(ax, xlim, limits, label, fmt, off)


def _skipped_text(skipped: pd.DataFrame, key: Mapping[str, object]) -> str:
    """``"degenerate fits skipped: J #18, #19"`` for the skipped rows matching ``key``."""
    if skipped is None or skipped.empty:
        return ""
    sel = skipped
    for column, value in key.items():
        if column in sel and value is not None:
            sel = sel[sel[column].astype(str) == str(value)]
    if sel.empty:
        return ""
    if "threshold_idx" in sel and sel["threshold_idx"].notna().all():
        which = ", ".join(f"#{int(i)}" for i in sorted(sel["threshold_idx"]))
        return f"degenerate fit{'s' if len(sel) > 1 else ''} skipped: J {which}"
    return f"{len(sel)} degenerate fit(s) skipped"


def _skipped_families(skipped: pd.DataFrame) -> str:
    """``"; BRO cartpole-balance: degenerate fits skipped: J #0, #1"`` per (agent, scope) of the
    skipped rows (each agent named), or ``""``."""
    keys = [c for c in ("agent", "source", "variant", "scope") if c in skipped]
    parts = []
    for values, _ in skipped.groupby(keys, sort=True) if keys and len(skipped) else []:
        key = dict(zip(keys, values, strict=True))
        names = [agent_label(key.get("agent")), key.get("scope")]
        if "variant" in skipped and skipped["variant"].nunique() > 1:
            names.append(VARIANT_LABELS.get(str(key["variant"]), key["variant"]))
        who = " ".join(str(v) for v in names if v)
        parts.append(f"{who}: {_skipped_text(skipped, key)}")
    return "".join(f"; {part}" for part in parts)


def _draw_overlay(
    row_axes: Sequence[Axes],
    scopes: list[tuple[Mapping[str, object], pd.DataFrame]],
    fits: pd.DataFrame | None,
) -> None:
    """Several scopes in one row of four panels, one colour per scope; the legend beside the
    row gives each scope's R² (log space, all points) of the D*, C*, σ*, N* lines."""
    palette = mpl.colormaps["tab20" if len(scopes) > 10 else "tab10"]
    r2_text: dict[str, list[str]] = {}
    for ax, (quantity, column, label, fmt) in zip(row_axes, QUANTITIES, strict=True):
        all_budget = np.concatenate([d["budget"].to_numpy(float) for _, d in scopes])
        all_y = np.concatenate([d[column].to_numpy(float) for _, d in scopes])
        limits = robust_log_range(all_y, 1.3)
        xlim = padded_log_range(all_budget, 1.3)
        off = 0
        for i, (key, data) in enumerate(scopes):
            colour = colors.to_hex(palette(i % palette.N))
            line = _line(fits, key, quantity)
            budget, y, fitted, n_fit = _split(
                data["budget"].to_numpy(float), data[column].to_numpy(float), line
            )
            off += _points(ax, budget, y, fitted, limits, colour, colour)
            r2 = float(line["r2"]) if line is not None else np.nan
            r2_text.setdefault(str(key["scope"]), []).append(
                f"{QUANTITY_SYMBOLS[quantity]} {r2:.2f}"
                if np.isfinite(r2)
                else f"{QUANTITY_SYMBOLS[quantity]} –"
            )
            if line is not None:
                _fit_line(ax, line, budget, n_fit, xlim, colour)
        _finish(ax, xlim, limits, label, fmt, off)
    handles = [
        Line2D(
            [],
            [],
            color=colors.to_hex(palette(i % palette.N)),
            marker="o",
            ms=3.5,
            label=f"{key['scope']}: " + ", ".join(r2_text[str(key["scope"])]),
        )
        for i, (key, _) in enumerate(scopes)
    ]
    row_axes[-1].legend(
        handles=handles,
        title="R² of the lines",
        loc="center left",
        bbox_to_anchor=(1.03, 0.5),
        fontsize=6,
        handlelength=1.2,
        borderaxespad=0.0,
    )


def _rows(
    points: pd.DataFrame, variants: Sequence[str]
) -> list[tuple[dict[str, object], list[tuple[dict[str, object], pd.DataFrame]]]]:
    """Rows of the figure: per (variant, agent, source) family, one row per scope, or one
    overlay row when the family has more than :data:`MAX_SINGLE_ROWS` scopes."""
    family_keys = [c for c in ("variant", "agent", "source") if c in points]
    order = {v: i for i, v in enumerate(variants)}
    points = points.assign(_order=points["variant"].map(order) if "variant" in points else 0)
    rows = []
    sort_keys = ["_order", *family_keys[1:]] if "variant" in points else family_keys
    points = points.sort_values([*sort_keys, "scope"]) if sort_keys else points
    families = points.groupby(family_keys, sort=False) if family_keys else [((), points)]
    for values, family in families:
        values = values if isinstance(values, tuple) else (values,)
        fam = dict(zip(family_keys, values, strict=True))
        scopes = [
            ({**fam, "scope": scope}, data.sort_values("budget"))
            for scope, data in family.groupby("scope", sort=True)
        ]
        if len(scopes) <= MAX_SINGLE_ROWS:
            rows.extend((key, [(key, data)]) for key, data in scopes)
        else:
            rows.append((fam, scopes))
    return rows


def fig_budget(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Paper Figs. 7-8: budget-optimal D*, C*, σ*, N* vs the budget F.

    Each threshold J gives one budget-optimal point (F*, D*, C*, σ*, N*); the log-log line of
    ``budget_fits`` is fitted on the lowest budgets (filled points, solid line) and extrapolated
    to the held-out top 5 (hollow diamonds, dashed line). One row per fit scope, with slope and
    R² (log space, all points) in the legend; a family (variant, agent, source) with more than
    :data:`MAX_SINGLE_ROWS` scopes shares one row, one colour per scope, R² beside it. Rows:
    per-env fits, then task-averaged fits (``settings["variants"]``). Points far outside the
    bulk (degenerate fits) are drawn as ▲▼ at the edge.
    """
    points = tables.get("budget_optimal", BUDGET_OPTIMAL)
    if points is None:
        raise NoData(f"no budget-optimal table ({tables.path('budget_optimal')})")
    variants = _variants_setting(settings)
    if "variant" in points:
        points = points[points["variant"].astype(str).isin(variants)]
    skipped = points[points["status"].astype(str) == "skipped"]
    points = points[points["status"].astype(str) == "ok"]
    if points.empty:
        raise NoData("no budget-optimal point with status ok" + _skipped_families(skipped))
    fits = tables.get("budget_fits", BUDGET_FITS)
    rows = _rows(points, variants)
    many = "source" in points and points["source"].nunique() > 1
    fig, axes = panel_grid(4 * len(rows), 4, 2.1, extra_height=0.8)
    for i, (key, scopes) in enumerate(rows):
        row_axes = axes[4 * i : 4 * i + 4]
        variant = VARIANT_LABELS.get(str(key.get("variant")), key.get("variant") or "")
        if len(scopes) == 1:
            data = scopes[0][1]
            for ax, (quantity, column, label, fmt) in zip(row_axes, QUANTITIES, strict=True):
                if np.isfinite(data[column].to_numpy(float)).sum() == 0:
                    empty_panel(ax, f"no finite {column}")
                    continue
                _draw(ax, data, _line(fits, key, quantity), column, label, fmt, quantity)
            title = panel_title(
                key["scope"],
                key.get("agent"),
                str(variant),
                source=key.get("source") if many else None,
            )
        else:
            _draw_overlay(row_axes, scopes, fits)
            where = f" · {source_label(key['source'])}" if key.get("source") else ""
            title = panel_title(f"{len(scopes)} envs{where}", key.get("agent"), str(variant))
            data = pd.concat([d for _, d in scopes])
        row_axes[0].set_title(title, loc="left")
        skip_text = (
            _skipped_text(skipped, key)
            if len(scopes) == 1
            else "; ".join(
                f"{k['scope']}: {t.split(': ', 1)[1]}"
                for k, _ in scopes
                if (t := _skipped_text(skipped, k))
            )
        )
        if skip_text:
            row_axes[0].text(
                0.02,
                0.97,
                "\n".join(textwrap.wrap(skip_text + " (not allocated)", 40)),
                transform=row_axes[0].transAxes,
                ha="left",
                va="top",
                fontsize=6,
                color=SKIPPED_COLOUR,
                bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": SKIPPED_COLOUR},
                zorder=6,
            )
        if "delta" in data and data["delta"].nunique() == 1:
            delta = f"δ = {sci(float(data['delta'].iloc[0]))} FLOPs per env step"
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
        Line2D([], [], color=FIT_COLOUR, label="log-log fit (D*, C*); σ*, N* from the law"),
        Line2D([], [], color=FIT_COLOUR, ls="--", label="extrapolation"),
        Line2D([], [], color=DIRECT_COLOUR, ls=":", label="direct σ*, N* fit (diagnostic)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=5)
    fig.suptitle("Budget-optimal allocation vs budget F = C_J + δ·D_J (one point per threshold J)")
    return fig
