"""``fig_batch_size`` (paper Figs. 5/11): best batch size B* vs σ and vs N with Eq. 6.1."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from valuescale.analysis.batch_size_fit import BATCH_PARAMS, predict_batch_size
from valuescale.analysis.data_efficiency import suite_of
from valuescale.plots._common import (
    ColourScale,
    Inputs,
    NoData,
    TableSpec,
    figure_title,
    human,
    log_ticks,
    padded_log_range,
    panel_grid,
    panel_title,
    params_scale,
    percent,
    plain,
    sources_line,
    utd_scale,
)

BEST_BATCH_SIZE = TableSpec(
    required=("env", "utd", "critic_params", "B_star", "B_star_lo", "B_star_hi"),
    optional=("agent", "source", "lr", "status", "n_batch_sizes"),
    numeric=("utd", "critic_params", "B_star", "B_star_lo", "B_star_hi", "lr", "n_batch_sizes"),
)
FITS_BATCH_SIZE = TableSpec(
    required=("scope", *BATCH_PARAMS, "status"),
    optional=("agent", "source", "level", "basis", "rel_error", "loglinear_rel_error"),
    numeric=(*BATCH_PARAMS, "rel_error", "loglinear_rel_error"),
)
MIN_BATCH_SIZES = 3
UNUSABLE_STATUS = ("too_few_batch_sizes", "not_reached")


def usable_rows(best: pd.DataFrame) -> pd.DataFrame:
    """Rows with a finite positive B* from at least 3 batch sizes, one learning rate per config.

    Where several learning rates were run, the most common one is kept.
    """
    df = best[np.isfinite(best["B_star"]) & (best["B_star"] > 0)]
    if "n_batch_sizes" in df:
        df = df[df["n_batch_sizes"].fillna(0) >= MIN_BATCH_SIZES]
    if "status" in df:
        df = df[~df["status"].astype(str).isin(UNUSABLE_STATUS)]
    if "lr" in df and df["lr"].nunique() > 1:
        keys = [c for c in ("agent", "source", "env") if c in df]
        counts = df.groupby([*keys, "lr"], dropna=False)["B_star"].transform("size")
        df = df.assign(_n=counts).sort_values("_n", ascending=False)
        df = df.drop_duplicates([*keys, "utd", "critic_params"]).drop(columns="_n")
    return df.reset_index(drop=True)


def _law_for(fits: pd.DataFrame | None, key: Mapping[str, object]) -> tuple[pd.Series | None, str]:
    """The env-level Eq. 6.1 fit of an env, else its suite's (and the level used)."""
    if fits is None:
        return None, ""
    ok = fits[fits["status"].astype(str) == "ok"]
    if "basis" in ok:  # laws fitted to measured B*, not to the batch sizes the runs used
        ok = ok[ok["basis"].astype(str) == "B_star"]
    params = ok[list(BATCH_PARAMS)].to_numpy(float)
    ok = ok[np.all(np.isfinite(params), axis=1)]
    for column in ("agent", "source"):
        if column in ok and key.get(column) is not None:
            ok = ok[ok[column].astype(str) == str(key[column])]
    for scope, level in ((key["env"], "env"), (suite_of(str(key["env"])), "suite"), ("all", "all")):
        rows = ok[ok["scope"].astype(str) == str(scope)]
        if "level" in rows:
            rows = rows[rows["level"].astype(str) == level]
        if len(rows):
            return rows.iloc[0], level
    return None, ""


def _draw(
    ax: Axes,
    data: pd.DataFrame,
    fit: pd.Series | None,
    x: str,
    group: str,
    scale: ColourScale,
    x_fmt: object,
    dashed: bool,
) -> None:
    """B* vs ``x``, one line per value of ``group``; hollow markers where the best B is at an
    edge of the grid."""
    x_lo, x_hi = padded_log_range(data[x].to_numpy(float), 1.25)
    grid = np.geomspace(x_lo, x_hi, 80)
    n_groups = data[group].nunique()
    for k, (value, rows) in enumerate(data.groupby(group, sort=True)):
        rows = rows.sort_values(x)
        colour = scale(float(value))
        # points of different lines side by side (±5 % in x), so that their error bars separate
        xv = rows[x].to_numpy(float) * np.exp(
            0.05 * (k - (n_groups - 1) / 2) / max(n_groups - 1, 1)
        )
        b = rows["B_star"].to_numpy(float)
        lo = np.where(np.isfinite(rows["B_star_lo"]), rows["B_star_lo"], b)
        hi = np.where(np.isfinite(rows["B_star_hi"]), rows["B_star_hi"], b)
        yerr = np.vstack([np.clip(b - lo, 0, None), np.clip(hi - b, 0, None)])
        edge = (
            rows["status"].astype(str).eq("best_at_edge").to_numpy()
            if "status" in rows
            else np.zeros(len(rows), dtype=bool)
        )
        ax.errorbar(xv, b, yerr=yerr, fmt="none", ecolor=colour, elinewidth=0.8, capsize=1.5)
        ax.scatter(xv[~edge], b[~edge], color=colour, s=16, zorder=3)
        ax.scatter(
            xv[edge], b[edge], facecolors="white", edgecolors=[colour], s=16, lw=1.0, zorder=3
        )
        if fit is not None:
            law = {name: float(fit[name]) for name in BATCH_PARAMS}  # Eq. 6.1, not the baseline
            with np.errstate(all="ignore"):
                pred = (
                    predict_batch_size(law, grid, float(value))
                    if x == "utd"
                    else predict_batch_size(law, float(value), grid)
                )
            ax.plot(grid, pred, color=colour, lw=1.1, ls="--" if dashed else "-")
        else:
            ax.plot(xv, b, color=colour, lw=0.7, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    values = np.concatenate([data["B_star"], data["B_star_lo"], data["B_star_hi"]]).astype(float)
    y_lo, y_hi = padded_log_range(values, 1.25)
    ax.set_ylim(y_lo, y_hi)
    log_ticks(ax.xaxis, data[x].to_numpy(float), x_fmt)
    powers = 2.0 ** np.arange(np.ceil(np.log2(y_lo)), np.floor(np.log2(y_hi)) + 1)
    log_ticks(ax.yaxis, powers if len(powers) >= 2 else None, plain)  # batch sizes: powers of 2


def fig_batch_size(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Paper Figs. 5/11: B* vs σ (one line per N) and vs N (one line per σ), per env.

    Points: B* = geometric mean of the bootstrap argmins, error bars its 5-95 % range, hollow
    where the best batch size sits at an edge of the grid. Lines: the Eq. 6.1 fit of the env
    (solid) or, without one, of its suite (dashed); the titles give its mean relative error and
    that of the log-linear baseline.
    """
    best = tables.get("best_batch_size", BEST_BATCH_SIZE)
    if best is None:
        raise NoData(f"no best-batch-size table ({tables.path('best_batch_size')})")
    rows = usable_rows(best)
    if rows.empty:
        raise NoData(
            f"no (σ, N) compared at least {MIN_BATCH_SIZES} batch sizes with J_max reached"
        )
    fits = tables.get("fits_batch_size", FITS_BATCH_SIZE)
    keys = [c for c in ("agent", "source", "env") if c in rows]
    groups = list(rows.groupby(keys, sort=True))
    n_scale = params_scale(rows["critic_params"].to_numpy(float))
    u_scale = utd_scale(rows["utd"].to_numpy(float))
    fig, axes = panel_grid(2 * len(groups), 4, 2.35, extra_height=1.6)
    for i, (values, data) in enumerate(groups):
        key = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        fit, level = _law_for(fits, key)
        left, right = axes[2 * i], axes[2 * i + 1]
        _draw(left, data, fit, "utd", "critic_params", n_scale, plain, level != "env")
        _draw(right, data, fit, "critic_params", "utd", u_scale, human, level != "env")
        left.set_xlabel("UTD ratio σ")
        right.set_xlabel("critic parameters N")
        left.set_ylabel("best batch size B*")
        many = "source" in rows and rows["source"].nunique() > 1
        title = panel_title(
            key["env"], key.get("agent"), source=key.get("source") if many else None
        )
        if fit is None:
            law = "no Eq. 6.1 fit"
        else:
            law = (
                f"{'' if level == 'env' else level + ' '}fit: rel. err "
                f"{percent(float(fit.get('rel_error', np.nan)))} "
                f"(log-lin {percent(float(fit.get('loglinear_rel_error', np.nan)))})"
            )
        left.set_title(f"{title}: vs σ\n{law}")
        right.set_title(
            f"{title}: vs N\n"
            + (f"α_B={fit['alpha_B']:.2f}, β_B={fit['beta_B']:.2f}" if fit is not None else "")
        )
    n_scale.colorbar(fig, axes, location="bottom", shrink=0.45, aspect=45, pad=0.01)
    u_scale.colorbar(fig, axes, location="bottom", shrink=0.45, aspect=45, pad=0.01)
    handles = [
        Line2D([], [], ls="", marker="o", color="0.4", label="B* (5-95 % bootstrap range)"),
        Line2D([], [], ls="", marker="o", mfc="white", mec="0.4", label="best B at a grid edge"),
        Line2D([], [], color="0.4", label="Eq. 6.1 fit (env)"),
        Line2D([], [], color="0.4", ls="--", label="Eq. 6.1 fit (suite)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4)
    title = "Best batch size B* vs UTD ratio σ and critic size N"
    figure_title(fig, title, sources_line(rows["source"]) if "source" in rows else "")
    return fig
