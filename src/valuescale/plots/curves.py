"""Figures of return curves: ``fig_preprocessing`` (paper Fig. 10), ``fig_learning_curves``."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

from valuescale.analysis.crossings import crossing_steps
from valuescale.analysis.preprocess import (
    CONFIG_KEYS,
    DEFAULT_RESET_INTERVAL,
    config_curves,
    isotonic,
    reset_mask,
    seed_mean,
)
from valuescale.plots._common import (
    ColourScale,
    Inputs,
    NoData,
    TableSpec,
    agent_label,
    fill_optional,
    human,
    main_source,
    new_figure,
    panel_grid,
    panel_title,
    source_label,
    utd_scale,
)

CURVES = TableSpec(
    required=(
        "env",
        "agent",
        "utd",
        "critic_params",
        "batch_size",
        "seed",
        "step",
        "metric",
        "value",
    ),
    optional=("width", "lr", "source", "passive_width", "passive_critic_params"),
    numeric=("utd", "critic_params", "batch_size", "seed", "step", "value", "lr"),
)
THRESHOLDS = TableSpec(
    required=("env", "threshold_idx", "threshold"),
    optional=("agent",),
    numeric=("threshold_idx", "threshold"),
)
# Panels of fig_preprocessing, and critic sizes (columns) per env of fig_learning_curves.
MAX_PREPROCESSING_PANELS = 6
MAX_SIZES = 6
SEED_COLOUR = "0.72"
MEAN_COLOUR = "0.15"
ISO_COLOUR = "#1f77b4"
DROP_COLOUR = "#d62728"
CROSS_COLOUR = "#ff7f0e"


def load_returns(tables: Inputs) -> pd.DataFrame:
    """The return rows of the ``curves`` table with every configuration column present.

    Raises:
        NoData: no curves table, or no ``return`` rows in it.
    """
    curves = tables.get("curves", CURVES, filters=[("metric", "in", ["return"])])
    if curves is None:
        raise NoData(f"no return curves ({tables.path('curves')})")
    curves = fill_optional(curves, {"lr": np.nan, "source": "own"})
    if "width" not in curves:
        curves = curves.assign(width=pd.array([pd.NA] * len(curves), dtype="Int64"))
    return curves


def load_thresholds(tables: Inputs) -> pd.DataFrame | None:
    """The ``thresholds`` table, or None."""
    return tables.get("thresholds", THRESHOLDS)


def thresholds_for(thresholds: pd.DataFrame | None, env: str, agent: str) -> np.ndarray:
    """Sorted thresholds of ``env`` (of ``agent`` when the table is per agent)."""
    if thresholds is None:
        return np.array([])
    sel = thresholds[thresholds["env"].astype(str) == env]
    if "agent" in sel and sel["agent"].notna().any():
        sel = sel[sel["agent"].astype(str) == agent]
    return np.sort(sel["threshold"].to_numpy(float))


def _reset_every(agent: str, utd: float) -> float | None:
    interval = DEFAULT_RESET_INTERVAL.get(agent)
    return None if interval is None else float(interval) / float(utd)


def _step_axis(ax: Axes) -> None:
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(human))
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4, steps=[1, 2, 2.5, 5, 10]))
    ax.set_xlabel("env steps")


def _config_text(key: Mapping[str, object], with_utd: bool = True) -> str:
    parts = []
    if with_utd:
        parts.append(f"σ={float(key['utd']):g}")
    parts.append(f"N={human(float(key['critic_params']))}")
    parts.append(f"B={int(key['batch_size'])}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# fig_preprocessing (paper Fig. 10)
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    key: dict[str, object]
    steps: np.ndarray
    returns: np.ndarray
    keep: np.ndarray

    @property
    def n_dropped(self) -> int:
        return int((~self.keep).sum())


def _reset_rule(settings: Mapping[str, object]) -> str:
    """The study's post-reset dip rule (``reset_dips``: ``analysis.preprocess.reset_dips``)."""
    return str(settings.get("reset_dips") or "ours")


def _prepare_all(curves: pd.DataFrame, rule: str = "ours") -> list[_Prepared]:
    out = []
    for key, steps, returns in config_curves(curves, metric="return", keys=CONFIG_KEYS):
        reset_every = _reset_every(str(key["agent"]), float(key["utd"]))
        keep = reset_mask(steps, seed_mean(returns), reset_every, rule)
        out.append(_Prepared(key, steps, returns, keep))
    return out


def choose_configurations(
    prepared: list[_Prepared], n: int, with_thresholds: Collection[str] = ()
) -> list[_Prepared]:
    """Up to ``n`` configurations, one per (agent, env), illustrating the preprocessing best.

    Per (agent, env) the configuration with the most post-reset points dropped (ties: higher σ,
    more seeds, larger N); then the (agent, env) groups with the most dropped points, envs with
    thresholds (``with_thresholds``) first.
    """
    best: dict[tuple[str, str], _Prepared] = {}
    for item in prepared:
        group = (str(item.key["agent"]), str(item.key["env"]))
        rank = (
            item.n_dropped,
            float(item.key["utd"]),
            item.returns.shape[1],
            float(item.key["critic_params"]),
        )
        current = best.get(group)
        if current is None or rank > (
            current.n_dropped,
            float(current.key["utd"]),
            current.returns.shape[1],
            float(current.key["critic_params"]),
        ):
            best[group] = item
    ranked = sorted(
        best.items(), key=lambda kv: (kv[0][1] not in with_thresholds, -kv[1].n_dropped, kv[0])
    )[:n]
    return [item for _, item in sorted(ranked, key=lambda kv: kv[0])]


def _samples_text(item: _Prepared) -> str:
    """``11 seeds``, or ``10 × 5-seed means`` for SimbaV2's published columns."""
    n = item.returns.shape[1]
    if str(item.key["agent"]) == "simbav2" and str(item.key.get("source", "")).startswith(
        "simbav2"
    ):
        return f"{n} × 5-seed means"
    return f"{n} seeds"


def _draw_preprocessing(ax: Axes, item: _Prepared, levels: np.ndarray) -> None:
    steps, returns, keep = item.steps, item.returns, item.keep
    mean = seed_mean(returns)
    for s in range(returns.shape[1]):
        ax.plot(steps, returns[:, s], color=SEED_COLOUR, lw=0.5, alpha=0.6, zorder=1)
    ax.plot(steps, mean, color=MEAN_COLOUR, lw=1.0, zorder=2)
    if (~keep).any():
        ax.scatter(steps[~keep], mean[~keep], marker="x", color=DROP_COLOUR, s=16, lw=1.0, zorder=4)
    kept_steps = steps[keep]
    iso = isotonic(mean[keep]) if keep.any() else np.array([])
    ax.plot(kept_steps, iso, color=ISO_COLOUR, lw=1.8, zorder=3, drawstyle="steps-post")
    reset_every = _reset_every(str(item.key["agent"]), float(item.key["utd"]))
    if reset_every is not None and len(steps):
        for k in range(1, int(steps[-1] // reset_every) + 1):
            ax.axvline(k * reset_every, color=DROP_COLOUR, ls=":", lw=0.8, alpha=0.7, zorder=0)
    if len(levels):
        for j, level in enumerate(levels):
            edge = j in (0, len(levels) - 1)
            ax.axhline(
                level,
                color="0.35" if edge else "0.6",
                lw=0.8 if edge else 0.4,
                ls="--" if edge else "-",
                alpha=0.9 if edge else 0.35,
                zorder=0,
            )
        if len(kept_steps):
            cross = crossing_steps(kept_steps, iso, levels)
            hit = np.isfinite(cross)
            ax.scatter(
                cross[hit],
                levels[hit],
                color=CROSS_COLOUR,
                edgecolors="black",
                linewidths=0.4,
                s=14,
                zorder=5,
            )
    _step_axis(ax)
    ax.set_ylabel("return")
    source = item.key.get("source")
    ax.set_title(
        panel_title(
            item.key["env"],
            item.key["agent"],
            f"{_config_text(item.key)}, {_samples_text(item)}"
            + (f"\n{source_label(source)}" if source and source != "own" else ""),
        )
    )


def fig_preprocessing(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Paper Fig. 10: how a return curve becomes D_J, for a few configurations.

    Per panel (one configuration per env, the one with the most post-reset points dropped):
    per-seed returns (grey), their mean (black), evaluation points dropped after a reset (red
    crosses; resets as red dotted lines at multiples of 2.5M/σ env steps for BRO), the isotonic
    fit of the kept mean (blue steps), the 20 thresholds (J_min and J_max dashed) and the first
    crossing of each threshold (orange dots).
    """
    curves = load_returns(tables)
    prepared = _prepare_all(curves, _reset_rule(settings))
    if not prepared:
        raise NoData("no return curves")
    thresholds = load_thresholds(tables)
    envs = set() if thresholds is None else set(thresholds["env"].astype(str))
    chosen = choose_configurations(prepared, MAX_PREPROCESSING_PANELS, envs)
    fig, axes = panel_grid(len(chosen), 2 if len(chosen) == 4 else 3, 2.6, extra_height=0.9)
    for ax, item in zip(axes, chosen, strict=True):
        levels = thresholds_for(thresholds, str(item.key["env"]), str(item.key["agent"]))
        _draw_preprocessing(ax, item, levels)
    handles = [
        Line2D([], [], color=SEED_COLOUR, lw=0.8, label="seeds"),
        Line2D([], [], color=MEAN_COLOUR, lw=1.0, label="seed mean"),
        Line2D([], [], ls="", marker="x", color=DROP_COLOUR, label="dropped after a reset"),
        Line2D([], [], color=DROP_COLOUR, ls=":", label="reset"),
        Line2D([], [], color=ISO_COLOUR, lw=1.8, label="isotonic fit"),
        Line2D([], [], color="0.35", ls="--", lw=0.8, label="J_min / J_max"),
        Line2D([], [], ls="", marker="o", mfc=CROSS_COLOUR, mec="black", label="crossing D_J"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=7)
    fig.suptitle(
        "Preprocessing: post-reset dips removed, isotonic fit, first crossing of each threshold"
    )
    return fig


# --------------------------------------------------------------------------------------------
# fig_learning_curves
# --------------------------------------------------------------------------------------------


def _best_per_size(
    prepared: list[_Prepared], thresholds: pd.DataFrame | None
) -> dict[tuple[str, str], dict[float, dict[float, _Prepared]]]:
    """Per (agent, env), per N, per σ: the batch size (and lr, source) that reaches J_max first
    (isotonic of the dip-free mean), else the one with the highest final isotonic return."""
    out: dict[tuple[str, str], dict[float, dict[float, _Prepared]]] = {}
    ranks: dict[tuple, tuple] = {}
    levels_of: dict[tuple[str, str], np.ndarray] = {}  # one table look-up per (env, agent)
    for item in prepared:
        agent, env = str(item.key["agent"]), str(item.key["env"])
        if (env, agent) not in levels_of:
            levels_of[env, agent] = thresholds_for(thresholds, env, agent)
        levels = levels_of[env, agent]
        mean = seed_mean(item.returns[item.keep])
        if len(mean) == 0:
            continue
        iso = isotonic(mean)
        steps = item.steps[item.keep]
        d = crossing_steps(steps, iso, levels[-1:])[0] if len(levels) else np.nan
        rank = (0 if np.isfinite(d) else 1, d if np.isfinite(d) else -iso[-1])
        n, utd = float(item.key["critic_params"]), float(item.key["utd"])
        slot = (agent, env, n, utd)
        if slot not in ranks or rank < ranks[slot]:
            ranks[slot] = rank
            out.setdefault((agent, env), {}).setdefault(n, {})[utd] = item
    return out


def _spread_pick(values: list[float], k: int) -> list[float]:
    """``k`` of the sorted ``values``, evenly spread (all when there are at most ``k``)."""
    if len(values) <= k:
        return values
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, k)).astype(int))
    return [values[i] for i in idx]


def size_classes(sizes: list[float], ratio: float = 1.15) -> dict[float, int]:
    """Cluster critic sizes across envs: sizes within ``ratio`` of their sorted neighbour share a
    class (e.g. 619,208 and 628,424 parameters, the same width on envs with other inputs)."""
    out: dict[float, int] = {}
    cls = -1
    previous = None
    for n in sorted(set(sizes)):
        if previous is None or n > previous * ratio:
            cls += 1
        out[n] = cls
        previous = n
    return out


def _columns(
    best: Mapping[tuple[str, str], Mapping[float, object]],
) -> tuple[int, dict[tuple[str, str], list[tuple[int, float]]]]:
    """Panel columns per (agent, env): aligned by size class when the classes fit in
    :data:`MAX_SIZES` columns, else each env's sizes evenly spread."""
    classes = size_classes([n for sizes in best.values() for n in sizes])
    n_classes = len(set(classes.values()))
    layout: dict[tuple[str, str], list[tuple[int, float]]] = {}
    if n_classes <= MAX_SIZES:
        for group, sizes in best.items():
            layout[group] = [(classes[n], n) for n in sorted(sizes)]
        return n_classes, layout
    n_cols = min(MAX_SIZES, max(len(sizes) for sizes in best.values()))
    for group, sizes in best.items():
        layout[group] = list(enumerate(_spread_pick(sorted(sizes), n_cols)))
    return n_cols, layout


def _draw_learning_block(
    container: Figure | SubFigure,
    best: Mapping[tuple[str, str], Mapping[float, Mapping[float, _Prepared]]],
    thresholds: pd.DataFrame | None,
    scale: ColourScale,
    many_sources: bool,
) -> tuple[list[Axes], int]:
    """One agent's rows of ``fig_learning_curves`` in ``container``: one row per env, one panel
    per critic size of that agent (:func:`_columns`). Returns the axes and the number of critic
    sizes left out."""
    rows = sorted(best)
    n_cols, layout = _columns(best)
    grid = container.subplots(len(rows), n_cols, squeeze=False)
    axes = list(grid.ravel())
    skipped = sum(len(best[g]) - len(layout[g]) for g in rows)
    for r, (agent, env) in enumerate(rows):
        levels = thresholds_for(thresholds, env, agent)
        row_axes = axes[r * n_cols : (r + 1) * n_cols]
        used = dict(layout[(agent, env)])
        y_range = [0.0, 0.0]
        x_max = max(
            float(item.steps[-1])
            for by_utd in best[(agent, env)].values()
            for item in by_utd.values()
        )
        for c, ax in enumerate(row_axes):
            if c not in used:  # this env has no run of the agent's c-th critic size
                ax.set_axis_off()
                continue
            for utd, item in sorted(best[(agent, env)][used[c]].items()):
                mean = seed_mean(item.returns)
                present = (~np.isnan(item.returns)).sum(axis=1)
                with np.errstate(all="ignore"):
                    sd = np.nanstd(item.returns, axis=1, ddof=1)
                se = np.where(present > 1, sd / np.sqrt(np.maximum(present, 1)), 0.0)
                colour = scale(utd)
                ax.plot(item.steps, mean, color=colour, lw=1.0)
                ax.fill_between(item.steps, mean - se, mean + se, color=colour, alpha=0.2, lw=0)
                y_range = [
                    min(y_range[0], float(np.nanmin(mean - se))),
                    max(y_range[1], float(np.nanmax(mean + se))),
                ]
            for level in levels[[0, -1]] if len(levels) else []:
                ax.axhline(level, color="0.4", ls="--", lw=0.7, zorder=0)
            ax.set_xlim(0, x_max * 1.02)
            if c != min(used):  # one return scale per env (row)
                ax.sharey(row_axes[min(used)])
                ax.tick_params(labelleft=False)
            _step_axis(ax)
            if r < len(rows) - 1:
                ax.set_xlabel("")
            ax.set_title(f"N={human(used[c])}", fontsize=8)
        first = row_axes[min(used)]
        source = next(iter(next(iter(best[(agent, env)].values())).values())).key["source"]
        label = [env, agent_label(agent)] + ([source_label(source)] if many_sources else [])
        first.set_ylabel("\n".join([*label, "return"]))
        if len(levels):
            y_range[1] = max(y_range[1], float(levels[-1]))
        pad = 0.04 * (y_range[1] - y_range[0] or 1.0)
        first.set_ylim(y_range[0] - pad, y_range[1] + pad)
    return axes, skipped


def fig_learning_curves(tables: Inputs, settings: Mapping[str, object]) -> Figure:
    """Learning curves: seed-mean return ± one standard error vs env steps.

    One row per (agent, env) (runs of the source with the most (σ, N) configurations of that
    env), one panel per critic size N of that agent (columns aligned across the agent's envs; at
    most 6, evenly spread), one line per σ (colour, shared colour bar) at the batch size that
    reaches J_max first. Grey dashed lines: J_min and J_max of the env. Panels of a row share the
    x axis. Several agents: one block of rows per agent, titled with its name, each with its own
    columns (the agents' critic sizes are not comparable at equal width, and their ladders
    differ, so columns shared across agents would leave empty panels).
    """
    curves = main_source(load_returns(tables))
    prepared = _prepare_all(curves, _reset_rule(settings))
    if not prepared:
        raise NoData("no return curves")
    thresholds = load_thresholds(tables)
    best = _best_per_size(prepared, thresholds)
    many = curves["source"].nunique() > 1
    agents = sorted({agent for agent, _ in best})
    by_agent = [{g: v for g, v in best.items() if g[0] == agent} for agent in agents]
    scale = utd_scale([float(p.key["utd"]) for p in prepared])
    n_rows = [len(rows) for rows in by_agent]
    block_title = 0.3 if len(agents) > 1 else 0.0
    fig = new_figure(sum(n_rows) * 1.75 + len(agents) * block_title + 1.0)
    if len(agents) == 1:
        containers: list[Figure | SubFigure] = [fig]
    else:
        heights = [n * 1.75 + block_title for n in n_rows]
        containers = list(
            fig.subfigures(len(agents), 1, height_ratios=heights, squeeze=False)[:, 0]
        )
    skipped = 0
    axes: list[Axes] = []
    for agent, container, rows in zip(agents, containers, by_agent, strict=True):
        axes, left_out = _draw_learning_block(container, rows, thresholds, scale, many)
        skipped += left_out
        if len(agents) > 1:
            container.suptitle(agent_label(agent), fontsize=10, fontweight="bold")
    # the colour bar under the last block (a colour bar cannot span several subfigures)
    scale.colorbar(containers[-1], axes, location="bottom", shrink=0.4, aspect=40, pad=0.01)
    note_text = f" ({skipped} critic sizes not shown)" if skipped else ""
    fig.suptitle(
        "Learning curves: seed-mean return ± 1 s.e., best batch size per (σ, N); "
        f"dashed: J_min, J_max{note_text}"
    )
    return fig
