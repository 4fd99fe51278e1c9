"""Learning curves of a study so far (``python -m valuescale.status --plot OUT.png``).

Drawn from the run folders the status command read (``valuescale.status.study_status``): each
cell's ``curves.parquet`` when complete, else the ``progress.parquet`` of its last checkpoint.
One panel per env and agent (titled with both); one line per cell (its seed-mean return), coloured by σ as in
``fig_learning_curves`` (the same colour map and bar), thicker for larger critics N; solid when
done, dashed and ending in a dot while unfinished (running, stopped, failed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from valuescale.atomic import atomic_path
from valuescale.plots._common import (
    DEFAULT_DPI,
    STYLE,
    figure_title,
    human,
    no_data_figure,
    panel_grid,
    panel_title,
    utd_scale,
)
from valuescale.plots.curves import _step_axis

#: Panels per row.
N_COLS = 3
#: Line widths of the smallest and the largest critic of the study.
LINE_WIDTHS = (0.7, 2.6)


def cell_returns(results: str | os.PathLike, cell: Mapping[str, Any]) -> pd.DataFrame | None:
    """``step, mean, critic_params`` of one cell's return curve so far (None: none yet)."""
    folder = os.path.join(results, "runs", cell["run"])
    names = ["curves.parquet"] if cell["state"] in ("done", "stale") else ["progress.parquet"]
    for name in names:
        path = os.path.join(folder, name)
        try:
            df = pd.read_parquet(
                path,
                columns=["step", "metric", "value", "critic_params"],
                filters=[("metric", "==", "return")],
            )
        except (OSError, ValueError):
            continue
        if len(df):
            mean = df.groupby("step")["value"].mean()
            return pd.DataFrame(
                {
                    "step": mean.index.to_numpy(),
                    "mean": mean.to_numpy(),
                    "critic_params": float(df["critic_params"].iloc[0]),
                }
            )
    return None


def fig_progress(status: Mapping[str, Any]) -> Figure:
    """The figure of ``status`` (a ``study_status`` result)."""
    results = status["results_dir"]
    curves = []
    for cell in status["cells"]:
        if cell["state"] == "pending":
            continue
        df = cell_returns(results, cell)
        if df is not None:
            curves.append((cell, df))
    counts = status["counts"]
    total = sum(counts.values())
    state_text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if not curves:
        return no_data_figure(
            "Learning curves so far", f"no cell has evaluated yet ({total} cells: {state_text})"
        )
    panels = sorted({(cell["env"], cell["agent"]) for cell, _ in curves})
    colour = utd_scale([cell["utd"] for cell, _ in curves])
    sizes = sorted({float(df["critic_params"].iloc[0]) for _, df in curves})
    lo, hi = LINE_WIDTHS

    def width(n: float) -> float:
        if len(sizes) == 1:
            return (lo + hi) / 2
        return lo + (hi - lo) * np.log(n / sizes[0]) / np.log(sizes[-1] / sizes[0])

    fig, axes = panel_grid(len(panels), N_COLS, 2.6, extra_height=1.3)
    for ax, (env, agent) in zip(axes, panels, strict=True):
        # large critics first, so that thin lines stay visible on top
        mine = [(c, df) for c, df in curves if (c["env"], c["agent"]) == (env, agent)]
        mine.sort(key=lambda item: -float(item[1]["critic_params"].iloc[0]))
        for cell, df in mine:
            done = cell["state"] in ("done", "stale")
            n = float(df["critic_params"].iloc[0])
            style = {"color": colour(cell["utd"]), "lw": width(n), "alpha": 0.9}
            ax.plot(df["step"], df["mean"], ls="-" if done else "--", **style)
            if not done:
                ax.plot(df["step"].iloc[-1], df["mean"].iloc[-1], "o", ms=3.5, **style)
        planned = [c for c in status["cells"] if (c["env"], c["agent"]) == (env, agent)]
        ax.set_xlim(0, max(c["planned_steps"] for c in planned) * 1.02)
        _step_axis(ax)
        ax.set_ylabel("seed-mean return")
        ax.set_title(
            panel_title(env, agent, f"{len(mine)} of {len(planned)} cells with an evaluation"),
            fontsize=8.5,
        )
    colour.colorbar(fig, axes, location="bottom", shrink=0.4, aspect=40, pad=0.01)
    handles = [Line2D([], [], color="0.35", lw=width(n), label=f"N={human(n)}") for n in sizes]
    handles += [
        Line2D([], [], color="0.35", lw=1.2, ls="-", label="done"),
        Line2D([], [], color="0.35", lw=1.2, ls="--", marker="o", ms=3.5, label="so far"),
    ]
    fig.legend(handles=handles, loc="outside right upper", title="critic size, state")
    figure_title(
        fig,
        "Learning curves so far: seed-mean return per cell, colour σ, line width N",
        f"{total} cells: {state_text}",
    )
    return fig


def plot_curves(status: Mapping[str, Any], out: str | os.PathLike, dpi: int = DEFAULT_DPI) -> None:
    """Write ``fig_progress(status)`` to ``out`` (format from its suffix), atomically."""
    with mpl.rc_context(STYLE):
        fig = fig_progress(status)
        fmt = os.path.splitext(str(out))[1].lstrip(".").lower() or "png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
