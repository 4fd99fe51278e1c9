"""Figures of the data-efficiency law D_J(σ, N) (Eq. 7.1): ``fig_scaling``, ``fig_data_efficiency``."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from valuescale.analysis.data_efficiency import (
    DE_PARAMS,
    averaged_fit_points,
    batch_choice_of,
    exclude_points,
    predict_D,
    select_fit_points,
    suite_of,
)
from valuescale.plots._common import (
    ColourScale,
    Inputs,
    NoData,
    TableSpec,
    data_scale,
    empty_panel,
    figure_title,
    human,
    log_ticks,
    note,
    padded_log_range,
    panel_grid,
    panel_title,
    params_scale,
    plain,
    sources_line,
    utd_scale,
)

CROSSINGS = TableSpec(
    required=(
        "env",
        "agent",
        "utd",
        "critic_params",
        "batch_size",
        "threshold_idx",
        "threshold",
        "D",
    ),
    optional=("source", "D_std", "width", "lr"),
    numeric=("utd", "critic_params", "batch_size", "threshold_idx", "threshold", "D", "D_std"),
)
FITS = TableSpec(
    required=("scope", "variant", "threshold_idx", *DE_PARAMS, "status"),
    optional=("agent", "source", "threshold", "group", "envs", "reason"),
    numeric=("threshold_idx", "threshold", *DE_PARAMS),
)
COMPUTE_OPTIMAL = TableSpec(
    required=("scope", "variant", "threshold_idx", "utd_star", "critic_params_star", "status"),
    optional=("agent", "source", "D_target", "line_slope", "line_intercept"),
    numeric=(
        "threshold_idx",
        "utd_star",
        "critic_params_star",
        "D_target",
        "line_slope",
        "line_intercept",
    ),
)
BEST_BATCH_SIZE = TableSpec(
    required=("env", "utd", "critic_params", "B_star"),
    optional=("agent", "source", "lr"),
    numeric=("utd", "critic_params", "B_star"),
)
DEFAULT_VARIANTS = ("per_env", "averaged")
VARIANT_LABELS = {
    "per_env": "per-env fit",
    "shared": "shared exponents",
    "averaged": "task-averaged fit",
}
# Compute-optimal points further than this factor outside the data range are not drawn.
STAR_RANGE = 4.0


# --------------------------------------------------------------------------------------------
# Selecting fits and the measured points that go with them
# --------------------------------------------------------------------------------------------


def _threshold_setting(settings: Mapping[str, object]) -> int | None:
    value = settings.get("threshold_idx")
    return None if value is None else int(value)  # type: ignore[call-overload]


def _variants_setting(settings: Mapping[str, object]) -> tuple[str, ...]:
    value = settings.get("variants")
    if value is None:
        return DEFAULT_VARIANTS
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)  # type: ignore[union-attr]


def select_fits(
    fits: pd.DataFrame, variants: Sequence[str], threshold_idx: int | None
) -> pd.DataFrame:
    """One usable fit row per (variant, agent, source, scope), in panel order.

    A row is usable when its status is ``ok`` and its parameters are finite and positive. Per
    scope the row at ``threshold_idx`` is taken, or (None) the one with the highest usable
    threshold index.
    """
    df = fits[fits["variant"].isin(list(variants)) & (fits["status"].astype(str) == "ok")]
    params = df[list(DE_PARAMS)].to_numpy(float)
    finite = np.all(np.isfinite(params), axis=1) & np.all(params[:, 1:] > 0, axis=1)
    df = df[finite & (params[:, 0] >= 0)]
    if threshold_idx is not None:
        df = df[df["threshold_idx"] == threshold_idx]
    keys = [c for c in ("variant", "agent", "source", "scope") if c in df]
    df = df.sort_values("threshold_idx").drop_duplicates(keys, keep="last")
    order = {v: i for i, v in enumerate(variants)}
    df = df.assign(_order=df["variant"].map(order))
    return df.sort_values(["_order", *keys[1:]]).drop(columns="_order").reset_index(drop=True)


#: Short names of the degeneracy rules, found in a fit's reason (for panel titles).
DEGENERACY_KINDS: tuple[tuple[str, str], ...] = (
    ("collapsed", "collapsed exponent"),
    ("absent", "term absent"),
    ("bootstrap interval", "exponent undetermined"),
    ("x the median", "loss outlier"),
    ("bound", "parameter at a bound"),
    ("absurd", "parameter at a bound"),
    ("bootstrap refits usable", "unstable under bootstrap"),
)


def degeneracy_kind(reason: object) -> str:
    """The short name of the rule that made a fit degenerate (from its reason)."""
    text = str(reason or "")
    for key, label in DEGENERACY_KINDS:
        if key in text:
            return label
    return "degenerate"


def degenerate_title(fits: pd.DataFrame, fit: pd.Series, threshold_idx: int | None) -> str:
    """One title line naming the degenerate fits a panel does not draw, by rule, or ``""``
    (the same fits as :func:`degenerate_note`)."""
    same = _degenerate_rows(fits, fit, threshold_idx)
    if same.empty:
        return ""
    kinds: dict[str, list[str]] = {}
    for row in same.itertuples(index=False):
        kinds.setdefault(degeneracy_kind(getattr(row, "reason", "")), []).append(
            f"#{int(row.threshold_idx)}"
        )
    parts = [f"{kind} {','.join(which)}" for kind, which in kinds.items()]
    return "not drawn, degenerate: " + "; ".join(parts)


def _degenerate_rows(fits: pd.DataFrame, fit: pd.Series, threshold_idx: int | None) -> pd.DataFrame:
    if "status" not in fits:
        return fits.iloc[0:0]
    same = fits[
        _matches(fits, fit, ("variant", "agent", "source", "scope"))
        & (fits["status"].astype(str) == "degenerate")
    ]
    if threshold_idx is not None:
        same = same[same["threshold_idx"] == threshold_idx]
    elif "threshold_idx" in fit.index and pd.notna(fit["threshold_idx"]):
        same = same[same["threshold_idx"] > fit["threshold_idx"]]
    return same.sort_values("threshold_idx")


def degenerate_note(
    fits: pd.DataFrame, fit: pd.Series, threshold_idx: int | None, width: int = 46
) -> str:
    """A panel note naming the degenerate fits of ``fit``'s law that the panel does not draw.

    Those of the same (variant, agent, source, scope) at the requested ``threshold_idx``, or,
    when the panel shows the highest usable threshold, at thresholds above it; ``""`` if none.
    The last such fit's reason is quoted (wrapped to ``width`` characters, 3 lines at most).
    """
    same = _degenerate_rows(fits, fit, threshold_idx)
    if same.empty:
        return ""
    which = ", ".join(f"#{int(i)}" for i in same["threshold_idx"])
    reason = str(same["reason"].iloc[-1]) if "reason" in same else ""
    lines = textwrap.wrap(f"why (#{int(same['threshold_idx'].iloc[-1])}): {reason}", width)
    if len(lines) > 3:
        lines = [*lines[:2], lines[2][: width - 1] + "…"]
    return "\n".join([f"degenerate fit, not drawn: J {which}", *lines])


def degenerate_scopes(
    fits: pd.DataFrame, variants: Sequence[str], threshold_idx: int | None, chosen: pd.DataFrame
) -> pd.DataFrame:
    """One degenerate row per (variant, agent, source, scope) that has no usable fit in
    ``chosen`` (every fit of that scope, or the one at ``threshold_idx``, is degenerate)."""
    df = fits[fits["variant"].isin(list(variants)) & (fits["status"].astype(str) == "degenerate")]
    if threshold_idx is not None:
        df = df[df["threshold_idx"] == threshold_idx]
    keys = [c for c in ("variant", "agent", "source", "scope") if c in df]
    if df.empty:
        return df
    drawn = set(map(tuple, chosen[keys].astype(str).to_numpy())) if len(chosen) else set()
    df = df.sort_values("threshold_idx").drop_duplicates(keys, keep="last")
    mask = [tuple(map(str, r)) not in drawn for r in df[keys].to_numpy()]
    return df[mask].reset_index(drop=True)


def _degenerate_panel(ax: Axes, fit: pd.Series, fits: pd.DataFrame, source: object) -> None:
    """An empty panel for a scope whose fits are all degenerate, saying why."""
    empty_panel(ax, "")
    ax.texts[-1].remove()
    below_all = fit.copy()
    below_all["threshold_idx"] = -1  # every degenerate threshold of the scope
    text = degenerate_note(fits, below_all, None, width=40)
    ax.text(
        0.5, 0.5, text, ha="center", va="center", fontsize=6.5, color="0.25", transform=ax.transAxes
    )
    ax.set_title(
        f"{panel_title(fit['scope'], fit.get('agent'), source=source)}\n"
        f"{VARIANT_LABELS.get(fit['variant'], fit['variant'])}: no usable fit",
        fontsize=8,
    )


def _matches(df: pd.DataFrame, row: pd.Series, columns: Sequence[str]) -> pd.Series:
    """Rows of ``df`` equal to ``row`` on every column of ``columns`` that both have."""
    keep = pd.Series(True, index=df.index)
    for column in columns:
        if column in df and column in row.index and pd.notna(row[column]):
            keep &= df[column].astype(str) == str(row[column])
    return keep


def fit_points(points: pd.DataFrame, fit: pd.Series) -> pd.DataFrame:
    """The measured (σ, N, D) that belong to one fit row (per env, or averaged over a suite).

    Args:
        points: :func:`valuescale.analysis.data_efficiency.select_fit_points` output.
        fit: a row of ``fits_data_efficiency``.
    """
    sel = points[
        _matches(points, fit, ("agent", "source"))
        & (points["threshold_idx"] == fit["threshold_idx"])
    ]
    if fit["variant"] != "averaged":
        return sel[sel["env"].astype(str) == str(fit["scope"])].reset_index(drop=True)
    envs_field = fit.get("envs")
    if isinstance(envs_field, str) and envs_field:
        envs = envs_field.split(",")
    else:
        envs = sorted(e for e in sel["env"].unique() if suite_of(str(e)) == str(fit["scope"]))
    averaged = averaged_fit_points({**fit.to_dict(), "envs": ",".join(envs)}, sel)
    return averaged.reset_index(drop=True)


def _load_points(tables: Inputs, settings: Mapping[str, object]) -> pd.DataFrame:
    """The fits' points: the grid exclusions (``fit_exclude``: ``analysis.fits.exclude``) and the
    batch-size rules recorded in the fits table applied as the fits applied them."""
    crossings = tables.get("crossings", CROSSINGS)
    if crossings is None:
        raise NoData(f"no crossings table ({tables.path('crossings')})")
    crossings = exclude_points(crossings, settings.get("fit_exclude"))  # type: ignore[arg-type]
    best = tables.get("best_batch_size", BEST_BATCH_SIZE)
    fits = tables.get("fits_data_efficiency", FITS)
    rules = {} if fits is None else batch_choice_of(fits)
    return select_fit_points(crossings, best, batch_choice=rules)


def _law(fit: pd.Series) -> dict[str, float]:
    return {name: float(fit[name]) for name in DE_PARAMS}


def _fit_text(fit: pd.Series) -> str:
    d_min = float(fit["D_min"])
    return (
        f"α_J={fit['alpha_J']:.2f}, β_J={fit['beta_J']:.2f}\n"
        f"D_min={human(d_min) if d_min >= 1 else '≈0'}"
    )


def _threshold_text(fit: pd.Series) -> str:
    threshold = fit.get("threshold")
    idx = int(fit["threshold_idx"])
    j = (
        f"J={threshold:.0f} (#{idx})"
        if threshold is not None and np.isfinite(threshold)
        else f"J #{idx} per env"
    )
    return f"{VARIANT_LABELS.get(fit['variant'], fit['variant'])}, {j}"


def _suptitle(fig: Figure, title: str, fits: pd.DataFrame) -> None:
    figure_title(fig, title, sources_line(fits["source"]) if "source" in fits else "")


def _source(fit: pd.Series, fits: pd.DataFrame) -> object:
    """The fit's source when the figure mixes several (for panel titles), else None."""
    if "source" in fits and fits["source"].nunique() > 1:
        return fit.get("source")
    return None


# --------------------------------------------------------------------------------------------
# fig_scaling (paper Fig. 6)
# --------------------------------------------------------------------------------------------


@dataclass
class _ScalingPanel:
    fit: pd.Series
    points: pd.DataFrame
    optima: pd.DataFrame
    levels: np.ndarray
    source: object = None
    skipped: str = ""
    degenerate: bool = False


def _optima(compute_optimal: pd.DataFrame | None, fit: pd.Series) -> pd.DataFrame:
    if compute_optimal is None:
        return pd.DataFrame(columns=["utd_star", "critic_params_star", "D_target"])
    sel = compute_optimal[
        _matches(compute_optimal, fit, ("agent", "source", "variant", "scope"))
        & (compute_optimal["threshold_idx"] == fit["threshold_idx"])
        & (compute_optimal["status"].astype(str) == "ok")
    ]
    sel = sel[np.isfinite(sel["utd_star"]) & np.isfinite(sel["critic_params_star"])]
    return sel.reset_index(drop=True)


def _levels(points: pd.DataFrame, optima: pd.DataFrame) -> np.ndarray:
    if "D_target" in optima and len(optima):
        targets = optima["D_target"].to_numpy(float)
        targets = np.unique(targets[np.isfinite(targets) & (targets > 0)])
        if len(targets) >= 2:
            return targets
    d = points["D"].to_numpy(float)
    d = d[np.isfinite(d) & (d > 0)]
    if len(d) == 0:
        return np.array([])
    lo, hi = float(d.min()), float(d.max())
    if hi <= lo * 1.01:
        return np.array([lo])
    return np.geomspace(lo, hi, 5)


def _range_with(measured: np.ndarray, extra: np.ndarray) -> tuple[float, float]:
    measured = measured[np.isfinite(measured) & (measured > 0)]
    lo, hi = float(measured.min()), float(measured.max())
    inside = extra[np.isfinite(extra) & (extra >= lo / STAR_RANGE) & (extra <= hi * STAR_RANGE)]
    values = np.concatenate([measured, inside])
    return padded_log_range(values, 1.35)


def _label_positions(
    segments: Sequence[Sequence[np.ndarray]], xlim: tuple[float, float], ylim: tuple[float, float]
) -> list[tuple[float, float]]:
    """One label position per contour level, inside the panel, towards its right side."""
    positions = []
    lx, ly = np.log(xlim), np.log(ylim)
    for level_segments in segments:
        best, best_cost = None, np.inf
        for seg in level_segments:
            if len(seg) == 0:
                continue
            fx = (np.log(seg[:, 0]) - lx[0]) / (lx[1] - lx[0])
            fy = (np.log(seg[:, 1]) - ly[0]) / (ly[1] - ly[0])
            inside = (fx > 0.1) & (fx < 0.9) & (fy > 0.12) & (fy < 0.9)
            if not inside.any():
                continue
            cost = np.where(inside, np.abs(fx - 0.75) + 0.3 * np.abs(fy - 0.5), np.inf)
            i = int(np.argmin(cost))
            if cost[i] < best_cost:
                best, best_cost = (float(seg[i, 0]), float(seg[i, 1])), float(cost[i])
        if best is not None:
            positions.append(best)
    return positions


def _draw_scaling(ax: Axes, panel: _ScalingPanel, scale: ColourScale) -> None:
    fit, points, optima = panel.fit, panel.points, panel.optima

    utd = points["utd"].to_numpy(float)
    n = points["critic_params"].to_numpy(float)
    d = points["D"].to_numpy(float)
    star_utd = optima["utd_star"].to_numpy(float) if len(optima) else np.array([])
    star_n = optima["critic_params_star"].to_numpy(float) if len(optima) else np.array([])
    x_lo, x_hi = _range_with(utd, star_utd)
    y_lo, y_hi = _range_with(n, star_n)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)

    gx, gy = np.meshgrid(np.geomspace(x_lo, x_hi, 160), np.geomspace(y_lo, y_hi, 160))
    with np.errstate(all="ignore"):
        z = predict_D(_law(fit), gx, gy)
    z = np.where(np.isfinite(z) & (z > 0), z, np.nan)
    levels = (
        panel.levels[(panel.levels > np.nanmin(z)) & (panel.levels < np.nanmax(z))]
        if np.isfinite(z).any()
        else []
    )
    if len(levels):
        contours = ax.contour(
            gx, gy, z, levels=np.sort(levels), cmap=scale.cmap, norm=scale.norm, linewidths=1.1
        )
        positions = _label_positions(contours.allsegs, (x_lo, x_hi), (y_lo, y_hi))
        if positions:
            ax.clabel(contours, fmt=human, fontsize=6, inline=True, manual=positions)

    if len(optima) and {"line_slope", "line_intercept"} <= set(optima.columns):
        slope = float(optima["line_slope"].iloc[0])
        intercept = float(optima["line_intercept"].iloc[0])
        if np.isfinite(slope) and np.isfinite(intercept):
            xs = np.geomspace(x_lo, x_hi, 50)
            ax.plot(xs, 10 ** (intercept + slope * np.log10(xs)), ls="--", color="0.15", lw=1.0)
    inside = (
        (star_utd >= x_lo) & (star_utd <= x_hi) & (star_n >= y_lo) & (star_n <= y_hi)
        if len(optima)
        else np.array([], dtype=bool)
    )
    if len(optima):
        face = [
            scale(v) if np.isfinite(v) else "white"
            for v in optima.get("D_target", pd.Series(np.nan, index=optima.index))
        ]
        ax.scatter(
            star_utd[inside],
            star_n[inside],
            marker="*",
            s=130,
            c=np.array(face, dtype=object)[inside].tolist() if inside.any() else None,
            edgecolors="black",
            linewidths=0.7,
            zorder=5,
        )
    reached = np.isfinite(d) & (d > 0)
    ax.scatter(
        utd[reached],
        n[reached],
        c=d[reached],
        cmap=scale.cmap,
        norm=scale.norm,
        s=34,
        edgecolors="black",
        linewidths=0.5,
        zorder=4,
    )
    if (~reached).any():
        ax.scatter(utd[~reached], n[~reached], marker="x", color="0.5", s=22, lw=1.0, zorder=4)
    log_ticks(ax.xaxis, utd, plain)
    log_ticks(ax.yaxis, n, human)
    ax.set_xlabel("UTD ratio σ")
    ax.set_ylabel("critic parameters N")
    hidden = int(len(optima) - inside.sum()) if len(optima) else 0
    ax.set_title(
        f"{panel_title(fit['scope'], fit.get('agent'), source=panel.source)}\n"
        f"{_threshold_text(fit)}\n"
        + _fit_text(fit).replace("\n", ", ")
        + (
            f"\n({hidden} compute-optimal point{'s' if hidden > 1 else ''} off-axis)"
            if hidden
            else ""
        )
        + (f"\n{panel.skipped}" if panel.skipped else ""),
        fontsize=8,
    )


def _scaling_legend(fig: Figure) -> None:
    handles = [
        Line2D([], [], ls="", marker="o", mfc="0.6", mec="black", label="measured D_J (colour)"),
        Line2D([], [], ls="", marker="x", color="0.5", label="J not reached"),
        Line2D([], [], color="0.4", lw=1.1, label="iso-D_J contour of the fit"),
        Line2D(
            [],
            [],
            ls="",
            marker="*",
            ms=10,
            mfc="0.6",
            mec="black",
            label="compute-optimal (σ*, N*)",
        ),
        Line2D([], [], ls="--", color="0.15", label="compute-optimal line"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=5)


def fig_scaling(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Paper Fig. 6: iso-D_J contours of the fitted law over (σ, N), one panel per fit scope.

    Per env (per-env fits) and per suite (task-averaged fits), at each fit's highest threshold
    with status ``ok`` (or ``settings["threshold_idx"]``): contours of D_J(σ, N) at the
    compute-optimal table's data targets, the measured D_J at the best batch size as points
    coloured by D_J (crosses: J never reached), compute-optimal (σ*, N*) as stars and the
    compute-optimal line dashed. One colour bar (D_J) for all panels.
    """
    fits = tables.get("fits_data_efficiency", FITS)
    if fits is None:
        raise NoData(f"no data-efficiency fits ({tables.path('fits_data_efficiency')})")
    variants = _variants_setting(settings)
    threshold_idx = _threshold_setting(settings)
    chosen = select_fits(fits, variants, threshold_idx)
    lost = degenerate_scopes(fits, variants, threshold_idx, chosen)
    if chosen.empty and lost.empty:
        raise NoData("no data-efficiency fit with status ok")
    points = _load_points(tables, settings)
    compute_optimal = tables.get("compute_optimal", COMPUTE_OPTIMAL)
    panels: list[_ScalingPanel] = []
    for _, fit in chosen.iterrows():
        pts = fit_points(points, fit)
        if np.isfinite(pts["D"].to_numpy(float)).sum() == 0:
            continue
        optima = _optima(compute_optimal, fit)
        skipped = "\n".join(textwrap.wrap(degenerate_title(fits, fit, threshold_idx), 42))
        panels.append(
            _ScalingPanel(
                fit, pts, optima, _levels(pts, optima), _source(fit, chosen), skipped=skipped
            )
        )
    for _, fit in lost.iterrows():
        panels.append(
            _ScalingPanel(fit, pd.DataFrame(), pd.DataFrame(), np.array([]), degenerate=True)
        )
    drawn = [p for p in panels if not p.degenerate]
    if not drawn and not panels:
        raise NoData("no measured D_J for any ok fit")
    all_d = (
        np.concatenate([p.points["D"].to_numpy(float) for p in drawn] + [p.levels for p in drawn])
        if drawn
        else np.array([1.0, 10.0])
    )
    scale = data_scale(all_d)
    fig, axes = panel_grid(len(panels), 4, 2.9, extra_height=1.0)
    for ax, panel in zip(axes, panels, strict=True):
        if panel.degenerate:
            _degenerate_panel(ax, panel.fit, fits, _source(panel.fit, fits))
            continue
        _draw_scaling(ax, panel, scale)
    if drawn:  # no colour bar (nor legend) over panels that draw nothing
        scale.colorbar(fig, axes, shrink=min(0.6, 5.0 / fig.get_figheight()))
        _scaling_legend(fig)
    _suptitle(fig, "Iso-D_J contours of the fitted law and the compute-optimal (σ*, N*)", chosen)
    return fig


# --------------------------------------------------------------------------------------------
# fig_data_efficiency (paper Figs. 16-17)
# --------------------------------------------------------------------------------------------


def _errorbars(d: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Asymmetric error bars ±std, the lower one kept above zero on a log axis."""
    std = np.where(np.isfinite(std), std, 0.0)
    lower = np.minimum(std, 0.9 * d)
    return np.vstack([lower, std])


def _draw_vs(
    ax: Axes,
    fit: pd.Series,
    points: pd.DataFrame,
    x: str,
    group: str,
    scale: ColourScale,
    x_fmt: object,
) -> None:
    """D_J vs ``x`` (utd or critic_params), one line per value of ``group``, fit overlaid."""
    law = _law(fit)
    xs_all = points[x].to_numpy(float)
    x_lo, x_hi = padded_log_range(xs_all, 1.25)
    grid = np.geomspace(x_lo, x_hi, 80)
    for value, data in points.groupby(group, sort=True):
        data = data.sort_values(x)
        colour = scale(float(value))
        d = data["D"].to_numpy(float)
        xv = data[x].to_numpy(float)
        ok = np.isfinite(d) & (d > 0)
        std = data["D_std"].to_numpy(float) if "D_std" in data else np.zeros_like(d)
        if ok.any():
            ax.errorbar(
                xv[ok],
                d[ok],
                yerr=_errorbars(d[ok], std[ok]),
                fmt="o",
                color=colour,
                ms=3.8,
                elinewidth=0.8,
                capsize=1.5,
                zorder=3,
            )
        with np.errstate(all="ignore"):
            if x == "utd":
                pred = predict_D(law, grid, float(value))
            else:
                pred = predict_D(law, float(value), grid)
        ax.plot(grid, pred, color=colour, lw=1.1, zorder=2)
    d_min = float(fit["D_min"])
    if d_min > 0:
        ax.axhline(d_min, color="0.5", ls=":", lw=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    finite = points["D"].to_numpy(float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size:
        # D_min is shown when it is within the data's order of magnitude.
        shown = [d_min] if d_min > finite.min() / 4 else []
        y_lo, y_hi = padded_log_range(np.concatenate([finite, shown]), 1.4)
        ax.set_ylim(y_lo, y_hi)
    log_ticks(ax.xaxis, xs_all, x_fmt)
    log_ticks(ax.yaxis, None, human)
    missing = int((~np.isfinite(points["D"].to_numpy(float))).sum())
    if missing:
        note(ax, f"{missing} not reached", loc="upper right", fontsize=6)


def fig_data_efficiency(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Paper Figs. 16-17: D_J vs σ (one line per N) and vs N (one line per σ), per env.

    Measured D_J at the best batch size with ±1 bootstrap std, the fitted per-env law (Eq. 7.1)
    as lines, D_min dotted; at each env's highest threshold with an ok fit (or
    ``settings["threshold_idx"]``). Colour encodes N in the left and σ in the right panel of
    each pair.
    """
    fits = tables.get("fits_data_efficiency", FITS)
    if fits is None:
        raise NoData(f"no data-efficiency fits ({tables.path('fits_data_efficiency')})")
    threshold_idx = _threshold_setting(settings)
    chosen = select_fits(fits, ("per_env",), threshold_idx)
    lost = degenerate_scopes(fits, ("per_env",), threshold_idx, chosen)
    if chosen.empty and lost.empty:
        raise NoData("no per-env data-efficiency fit with status ok")
    points = _load_points(tables, settings)
    pairs = []
    for _, fit in chosen.iterrows():
        pts = fit_points(points, fit)
        if np.isfinite(pts["D"].to_numpy(float)).sum():
            pairs.append((fit, pts))
    if not pairs and lost.empty:
        raise NoData("no measured D_J for any ok per-env fit")
    all_pts = (
        pd.concat([p for _, p in pairs])
        if pairs
        else pd.DataFrame({"critic_params": [1e6, 1e7], "utd": [1.0, 2.0]})
    )
    n_scale = params_scale(all_pts["critic_params"].to_numpy(float))
    u_scale = utd_scale(all_pts["utd"].to_numpy(float))
    fig, axes = panel_grid(2 * (len(pairs) + len(lost)), 4, 2.35, extra_height=1.4)
    for j, (_, fit) in enumerate(lost.iterrows()):
        left, right = axes[2 * (len(pairs) + j)], axes[2 * (len(pairs) + j) + 1]
        _degenerate_panel(left, fit, fits, _source(fit, fits))
        empty_panel(right, "degenerate fits are not drawn")
    for i, (fit, pts) in enumerate(pairs):
        left, right = axes[2 * i], axes[2 * i + 1]
        if pts["utd"].nunique() < 1:
            empty_panel(left, "no points")
        _draw_vs(left, fit, pts, "utd", "critic_params", n_scale, plain)
        _draw_vs(right, fit, pts, "critic_params", "utd", u_scale, human)
        left.set_xlabel("UTD ratio σ")
        right.set_xlabel("critic parameters N")
        left.set_ylabel("D_J (env steps)")
        title = panel_title(fit["scope"], fit.get("agent"), source=_source(fit, chosen))
        j = fit.get("threshold")
        j_text = f", J={j:.0f}" if j is not None and np.isfinite(j) else ""
        left.set_title(f"{title}\nD_J vs σ{j_text}", fontsize=8)
        skipped = degenerate_title(fits, fit, threshold_idx)
        if skipped:
            left.set_title(
                left.get_title() + "\n" + "\n".join(textwrap.wrap(skipped, 44)), fontsize=8
            )
        right.set_title(f"{title}\nD_J vs N: {_fit_text(fit).replace(chr(10), ', ')}", fontsize=8)
    if pairs:  # no colour bars under panels that draw nothing
        n_scale.colorbar(fig, axes, location="bottom", shrink=0.45, aspect=45, pad=0.01)
        u_scale.colorbar(fig, axes, location="bottom", shrink=0.45, aspect=45, pad=0.01)
    _suptitle(
        fig, "Data efficiency: measured D_J (points, ±1 bootstrap sd) and Eq. 7.1 fits", chosen
    )
    return fig
