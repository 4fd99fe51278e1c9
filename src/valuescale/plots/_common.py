"""Shared machinery of the figures: table loading and checks, style, ticks, colours, saving.

Every figure is a :class:`matplotlib.figure.Figure` built without pyplot (no global state, no GUI
backend), with constrained layout and a fixed width (:data:`FIG_WIDTH`), so that the PNG is exactly
``figsize * dpi`` pixels. Colours encode the same quantity the same way in every figure:

* σ (UTD ratio): :data:`UTD_CMAP` on a log scale,
* N (critic parameters) or a width: :data:`PARAMS_CMAP` on a log scale,
* D_J (data to threshold): :data:`DATA_CMAP` on a log scale.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib import colors, ticker
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath

from valuescale.atomic import atomic_path

# Width of every figure in inches (a report page at full width); heights follow the panel grid.
FIG_WIDTH = 11.0
# Size of the "no data" figure.
NO_DATA_SIZE = (FIG_WIDTH, 3.0)
DEFAULT_DPI = 150

UTD_CMAP = "viridis"
PARAMS_CMAP = "plasma"
DATA_CMAP = "cividis"
# Fraction of a colour map used (the light end of plasma/viridis is hard to see on white).
CMAP_RANGE = (0.0, 0.85)

AGENT_LABELS = {"bro": "BRO", "simbav2": "SimbaV2"}
SOURCE_LABELS = {
    "simbav2_model_scaling_linear20_with_base": "simbav2 grid",
    "dmc_bro_ablations": "BRO ablation",
    "model_scaling_const_lr": "const-lr grid",
}

STYLE: dict[str, object] = {
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7.5,
    "figure.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.3,
    "lines.markersize": 4.5,
    "legend.frameon": False,
    "pdf.fonttype": 42,
    "svg.fonttype": "none",
    # Titles at the top of their axes (no tick labels or offset texts sit above an axes here):
    # the automatic placement measures every axes' tick labels again on each draw.
    "axes.titley": 1.0,
}


class NoData(Exception):
    """Raised by a figure builder when it has nothing to show; the message is the reason."""


class TableError(ValueError):
    """A malformed input table (the message names the file and the column)."""


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    """Columns a figure reads from one input table.

    Attributes:
        required: columns that must be present (else :class:`TableError`).
        optional: columns read when present.
        numeric: columns (required or optional) that must hold numbers.
    """

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()


@dataclass
class Inputs:
    """The named input tables of one figure, loaded and checked on first use.

    Args:
        figure: the figure's name (for messages).
        paths: table name -> path (``.parquet`` or ``.csv``).
    """

    figure: str
    paths: Mapping[str, str]
    _cache: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    def get(
        self,
        key: str,
        spec: TableSpec,
        filters: Sequence[tuple[str, str, object]] | None = None,
    ) -> pd.DataFrame | None:
        """The table ``key`` with the columns of ``spec``, or None if it is missing or empty.

        Args:
            key: table name in ``paths``.
            spec: the columns to read and check.
            filters: pyarrow row filters for parquet tables (e.g. ``[("metric", "in", [...])]``);
                applied with pandas for CSV tables.

        Raises:
            TableError: the file exists but is unreadable, lacks a required column, or a numeric
                column holds non-numbers; the message names the file and the column.
        """
        cache_key = f"{key}|{filters!r}"
        if cache_key not in self._cache:
            self._cache[cache_key] = self._load(key, spec, filters)
        return self._cache[cache_key]

    def check(self, key: str, spec: TableSpec) -> None:
        """Check that table ``key`` (if given, existing and non-empty) has the required columns,
        reading only its header.

        Raises:
            TableError: a required column is missing or the file cannot be read.
        """
        path = self.path(key)
        if path is None or not Path(path).exists():
            return
        p = Path(path)
        where = f"{self.figure}: table {key!r} ({p})"
        try:
            if p.suffix == ".parquet":
                names = list(pq.read_schema(p).names)
            elif p.suffix == ".csv":
                if p.stat().st_size == 0:
                    return
                try:
                    names = list(pd.read_csv(p, nrows=0).columns)
                except pd.errors.EmptyDataError:
                    return
            else:
                raise TableError(f"{where}: unsupported format {p.suffix!r} (use .parquet or .csv)")
        except TableError:
            raise
        except (OSError, ValueError) as err:
            raise TableError(f"{where}: cannot be read: {err}") from err
        _check_columns(names, spec, where)

    def path(self, key: str) -> str | None:
        """The path of table ``key``, or None when it was not given."""
        value = self.paths.get(key)
        return None if value is None else str(value)

    def _load(
        self, key: str, spec: TableSpec, filters: Sequence[tuple[str, str, object]] | None
    ) -> pd.DataFrame | None:
        path = self.path(key)
        if path is None or not Path(path).exists():
            return None
        p = Path(path)
        where = f"{self.figure}: table {key!r} ({p})"
        wanted = list(dict.fromkeys([*spec.required, *spec.optional]))
        try:
            if p.suffix == ".parquet":
                names = list(pq.read_schema(p).names)
                _check_columns(names, spec, where)
                df = pd.read_parquet(
                    p,
                    columns=[c for c in wanted if c in names],
                    filters=list(filters) if filters else None,
                )
            elif p.suffix == ".csv":
                if p.stat().st_size == 0:
                    return None
                try:
                    names = list(pd.read_csv(p, nrows=0).columns)
                except pd.errors.EmptyDataError:
                    return None
                _check_columns(names, spec, where)
                df = pd.read_csv(p, usecols=[c for c in wanted if c in names])
                for column, op, value in filters or ():
                    df = df[_apply_filter(df[column], op, value)]
            else:
                raise TableError(f"{where}: unsupported format {p.suffix!r} (use .parquet or .csv)")
        except TableError:
            raise
        except (OSError, ValueError) as err:
            raise TableError(f"{where}: cannot be read: {err}") from err
        for column in spec.numeric:
            if column in df.columns and not pd.api.types.is_numeric_dtype(df[column]):
                try:
                    df[column] = pd.to_numeric(df[column])
                except (TypeError, ValueError) as err:
                    raise TableError(f"{where}: column {column!r} must be numeric ({err})") from err
        if df.empty:
            return None
        return df.reset_index(drop=True)


def _check_columns(names: Iterable[str], spec: TableSpec, where: str) -> None:
    missing = [c for c in spec.required if c not in set(names)]
    if missing:
        raise TableError(f"{where}: missing required column(s) {missing}")


def _apply_filter(column: pd.Series, op: str, value: object) -> pd.Series:
    if op == "in":
        return column.isin(list(value))  # type: ignore[arg-type]
    if op == "==":
        return column == value
    raise ValueError(f"unsupported filter operator {op!r}")


def fill_optional(df: pd.DataFrame, defaults: Mapping[str, object]) -> pd.DataFrame:
    """``df`` with the columns of ``defaults`` added (constant) where they are missing."""
    out = df
    for column, value in defaults.items():
        if column not in out.columns:
            out = out.assign(**{column: value})
    return out


# --------------------------------------------------------------------------------------------
# Labels and number formats
# --------------------------------------------------------------------------------------------


def agent_label(agent: object) -> str:
    """Display name of an agent (``bro`` -> ``BRO``)."""
    text = "" if agent is None or (isinstance(agent, float) and math.isnan(agent)) else str(agent)
    return AGENT_LABELS.get(text, text)


def source_label(source: object) -> str:
    """Short name of a curve source (``simbav2_model_scaling_linear20_with_base`` -> ``simbav2
    grid``); unknown sources as they are."""
    text = (
        "" if source is None or (isinstance(source, float) and math.isnan(source)) else str(source)
    )
    return SOURCE_LABELS.get(text, text)


def sources_line(sources: Iterable[object]) -> str:
    """``runs: a, b, c`` of the distinct sources (short names), or ``""``."""
    names = sorted({source_label(s) for s in sources if source_label(s)})
    return f"runs: {', '.join(names)}" if names else ""


def _text_width(text: str, prop: FontProperties) -> float:
    """Width of ``text`` in points when drawn with ``prop``."""
    width, _, _ = TextToPath().get_text_width_height_descent(text, prop, ismath=False)
    return float(width)


def wrap_text(text: str, width: float, prop: FontProperties) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` points (a single word wider
    than that stays on a line of its own)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and _text_width(f"{lines[-1]} {word}", prop) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def figure_title(fig: Figure, title: str, detail: str = "") -> None:
    """``title`` and (on the next line) ``detail``, e.g. :func:`sources_line`, as the figure's
    suptitle, each wrapped to the figure's width: constrained layout makes room for every line
    of a suptitle but never for a line wider than the figure (it is clipped at both edges)."""
    prop = FontProperties(
        size=mpl.rcParams["figure.titlesize"], weight=mpl.rcParams["figure.titleweight"]
    )
    # 10 % spare: hinted glyphs in a low-resolution PNG are up to 5 % wider than their outlines
    width = 0.9 * fig.get_figwidth() * 72.0
    lines = [part for line in (title, detail) if line for part in wrap_text(line, width, prop)]
    fig.suptitle("\n".join(lines))


def panel_title(env: object, agent: object = None, extra: str = "", source: object = None) -> str:
    """``env · AGENT [· source]`` (and ``extra`` on a second line)."""
    parts = [str(env)]
    label = agent_label(agent)
    if label:
        parts.append(label)
    if source_label(source):
        parts.append(source_label(source))
    title = " · ".join(parts)
    return f"{title}\n{extra}" if extra else title


def human(x: float, pos: object = None) -> str:
    """Compact count: 619208 -> 619K, 2286792 -> 2.3M, 34312392 -> 34M, 0.5 -> 0.5."""
    if x is None or not np.isfinite(x):
        return ""
    ax = abs(x)
    if 0 < ax < 1e-3:
        return f"{x:.0e}"
    for unit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if ax >= unit:
            v = x / unit
            if abs(v) >= 10:
                return f"{v:.0f}{suffix}"
            return f"{v:.2g}{suffix}"
    if ax >= 10:
        return f"{x:.0f}"
    return f"{x:.2g}"


def plain(x: float, pos: object = None) -> str:
    """Short plain number: 0.5, 1, 2, 15, 1024, 2048."""
    if x is None or not np.isfinite(x):
        return ""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def percent(x: float) -> str:
    """0.123 -> 12%."""
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.0f}%"


def log_ticks(
    axis: mpl.axis.Axis, values: Iterable[float] | None, fmt: Callable, min_ticks: int = 3
) -> None:
    """Readable ticks on a log axis (call after the axis limits are set).

    With at most 8 distinct positive ``values``, major ticks sit exactly on them (plus 1-2-5
    numbers where the view extends well beyond them); otherwise on 1-2-5 (or finer) numbers,
    at least three in view. Labels use ``fmt``; minor ticks are unlabelled.
    """
    raw = np.asarray([] if values is None else list(values), dtype=float)
    vals = np.unique(raw[np.isfinite(raw) & (raw > 0)])
    view = axis.get_view_interval()
    if 0 < len(vals) <= 8 and _well_spaced(vals):
        ticks = _thin(_extend_ticks(vals, view), view, axis, fmt)
    else:
        ticks = nice_log_ticks(*view, min_ticks=min_ticks)
    axis.set_major_locator(ticker.FixedLocator(ticks))
    axis.set_major_formatter(ticker.FuncFormatter(fmt))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs="auto"))
    axis.set_minor_formatter(ticker.NullFormatter())


def nice_log_ticks(lo: float, hi: float, max_ticks: int = 7, min_ticks: int = 3) -> np.ndarray:
    """Round numbers in ``[lo, hi]`` for a log axis: decades or 1-2-5 when that gives
    ``min_ticks`` ticks, else 1-2-3-5 when that gives two, else finer (thinned to
    ``max_ticks``)."""
    lo, hi = float(min(lo, hi)), float(max(lo, hi))
    if not (lo > 0 and np.isfinite(hi)):
        return np.array([])
    exponents = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    ticks = np.array([])
    choices = (
        ((1.0,), min_ticks),
        ((1.0, 2.0, 5.0), min_ticks),
        ((1.0, 2.0, 3.0, 5.0), 2),
        ((1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0), 0),
    )
    for subs, enough in choices:
        cand = np.array([m * 10.0**e for e in exponents for m in subs])
        ticks = cand[(cand >= lo * (1 - 1e-9)) & (cand <= hi * (1 + 1e-9))]
        if len(ticks) >= enough:
            break
    if len(ticks) > max_ticks:
        step = int(np.ceil(len(ticks) / max_ticks))
        ticks = ticks[::step]
    return ticks


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def sci(x: float, pos: object = None) -> str:
    """Power-of-ten label without mathtext: 1e17 -> 10¹⁷, 3e16 -> 3·10¹⁶."""
    if x is None or not np.isfinite(x) or x <= 0:
        return ""
    exponent = int(np.floor(np.log10(x) + 1e-9))
    mantissa = x / 10.0**exponent
    power = "10" + str(exponent).translate(_SUPERSCRIPT)
    if abs(mantissa - 1) < 1e-6:
        return power
    return f"{mantissa:.2g}·{power}"


def _extend_ticks(vals: np.ndarray, view: Sequence[float]) -> np.ndarray:
    """``vals`` plus 1-2-5 numbers in the parts of the view the values leave uncovered."""
    lo, hi = (float(v) for v in view)
    if not (lo > 0 and hi > lo):
        return vals
    extra = []
    for exponent in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1):
        for mantissa in (1.0, 2.0, 5.0):
            v = mantissa * 10.0**exponent
            if lo <= v <= hi and (v < vals[0] / 1.6 or v > vals[-1] * 1.6):
                extra.append(v)
    return np.unique(np.concatenate([vals, np.array(extra, dtype=float)]))


def _thin(
    ticks: np.ndarray, view: Sequence[float], axis: mpl.axis.Axis, fmt: Callable
) -> np.ndarray:
    """Drop ticks whose labels would collide with the previous kept one.

    The room a label needs is estimated from its length (x axis: about 0.06 in per character,
    plus a gap) or the font height (y axis), against the size of the axes' grid cell.
    """
    lo, hi = (float(v) for v in view)
    if len(ticks) < 2 or not (lo > 0 and hi > lo):
        return ticks
    fig = axis.axes.figure
    spec = axis.axes.get_subplotspec()
    n_rows, n_cols = spec.get_gridspec().get_geometry() if spec is not None else (1, 1)
    span = np.log10(hi / lo)
    if axis.axis_name == "x":
        # about 80 % of a grid cell is axes after constrained layout
        length_in = max(0.8 * fig.get_figwidth() / n_cols, 0.5)

        def room(a: float, b: float) -> float:
            return (0.06 * (len(fmt(a)) + len(fmt(b))) / 2 + 0.08) / length_in
    else:
        length_in = max(0.6 * fig.get_figheight() / n_rows, 0.5)

        def room(a: float, b: float) -> float:
            return 0.16 / length_in

    kept = [ticks[0]]
    for t in ticks[1:]:
        if np.log10(t / kept[-1]) / span >= room(kept[-1], t):
            kept.append(t)
    return np.array(kept)


def _well_spaced(vals: np.ndarray) -> bool:
    """No two values closer than 12 % in log (labels would collide)."""
    if len(vals) < 2:
        return True
    return bool(np.min(np.diff(np.log(vals))) > np.log(1.12))


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------


def cmap(name: str) -> colors.Colormap:
    """A colour map restricted to :data:`CMAP_RANGE` (visible on white)."""
    base = mpl.colormaps[name]
    lo, hi = CMAP_RANGE
    return colors.ListedColormap(base(np.linspace(lo, hi, 256)), name=f"{name}_cut")


def log_norm(values: Iterable[float]) -> colors.LogNorm:
    """Log norm over the finite positive ``values`` (padded when they are all equal)."""
    vals = np.array([v for v in values if np.isfinite(v) and v > 0], dtype=float)
    if vals.size == 0:
        return colors.LogNorm(1.0, 10.0)
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo * 1.0001:
        lo, hi = lo / 1.5, hi * 1.5
    return colors.LogNorm(lo, hi)


@dataclass(frozen=True)
class ColourScale:
    """A quantity drawn as colour: its map, log norm, label and tick format."""

    cmap: colors.Colormap
    norm: colors.Normalize
    label: str
    fmt: Callable
    ticks: tuple[float, ...] = ()

    def __call__(self, value: float) -> tuple[float, float, float, float]:
        return self.cmap(self.norm(value))

    def colorbar(self, fig: Figure, axes: Sequence[Axes] | Axes, **kwargs: object) -> None:
        """A colour bar for the whole ``axes`` group with readable ticks."""
        mappable = ScalarMappable(norm=self.norm, cmap=self.cmap)
        bar = fig.colorbar(mappable, ax=axes, **{"shrink": 0.9, "aspect": 30, **kwargs})
        bar.set_label(self.label)
        axis = bar.ax.yaxis if bar.orientation == "vertical" else bar.ax.xaxis
        vals = [t for t in self.ticks if self.norm.vmin <= t <= self.norm.vmax]
        if vals and len(vals) <= 10 and _well_spaced(np.array(sorted(vals))):
            axis.set_major_locator(ticker.FixedLocator(sorted(vals)))
        else:
            axis.set_major_locator(
                ticker.FixedLocator(nice_log_ticks(self.norm.vmin, self.norm.vmax))
            )
        axis.set_major_formatter(ticker.FuncFormatter(self.fmt))
        axis.set_minor_locator(ticker.NullLocator())
        axis.set_minor_formatter(ticker.NullFormatter())


def utd_scale(values: Iterable[float]) -> ColourScale:
    """Colour scale of σ (UTD ratio)."""
    vals = list(values)
    return ColourScale(
        cmap(UTD_CMAP), log_norm(vals), "UTD ratio σ", plain, tuple(sorted(set(vals)))
    )


def params_scale(values: Iterable[float], label: str = "critic parameters N") -> ColourScale:
    """Colour scale of N (critic parameters) or of a width."""
    vals = list(values)
    return ColourScale(cmap(PARAMS_CMAP), log_norm(vals), label, human, tuple(sorted(set(vals))))


def data_scale(values: Iterable[float]) -> ColourScale:
    """Colour scale of D_J (environment steps)."""
    vals = list(values)
    return ColourScale(mpl.colormaps[DATA_CMAP], log_norm(vals), "D_J: env steps to reach J", human)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def new_figure(height: float, width: float = FIG_WIDTH) -> Figure:
    """An empty constrained-layout figure ``width x height`` inches.

    Call inside ``matplotlib.rc_context(STYLE)`` (as :func:`valuescale.plots.render_figure`
    does): the style applies to artists as they are created.
    """
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, hspace=0.06, wspace=0.04)
    return fig


def panel_grid(
    n_panels: int, n_cols: int, panel_height: float, extra_height: float = 0.7
) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` axes in rows of ``n_cols`` (unused cells removed).

    Returns:
        ``(figure, axes)`` with ``len(axes) == n_panels`` in row-major order.
    """
    n_cols = max(1, min(n_cols, n_panels))
    n_rows = max(1, math.ceil(n_panels / n_cols))
    fig = new_figure(n_rows * panel_height + extra_height)
    grid = fig.subplots(n_rows, n_cols, squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, axes[:n_panels]


def no_data_figure(title: str, reason: str) -> Figure:
    """A figure with one panel saying ``no data: <reason>``."""
    fig = new_figure(NO_DATA_SIZE[1], NO_DATA_SIZE[0])
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        f"no data: {reason}",
        ha="center",
        va="center",
        wrap=True,
        fontsize=11,
        color="0.3",
        transform=ax.transAxes,
    )
    fig.suptitle(title)
    return fig


def note(ax: Axes, text: str, loc: str = "upper right", **kwargs: object) -> None:
    """A small boxed annotation in a corner of ``ax``."""
    corners = {
        "upper right": (0.98, 0.97, "right", "top"),
        "upper left": (0.02, 0.97, "left", "top"),
        "lower right": (0.98, 0.03, "right", "bottom"),
        "lower left": (0.02, 0.03, "left", "bottom"),
        "center": (0.5, 0.5, "center", "center"),
    }
    x, y, ha, va = corners[loc]
    ax.text(
        x,
        y,
        text,
        ha=ha,
        va=va,
        transform=ax.transAxes,
        fontsize=kwargs.pop("fontsize", 7),
        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.8", "alpha": 0.85},
        **kwargs,
    )


def empty_panel(ax: Axes, reason: str) -> None:
    """Mark one panel as empty (``no data: reason``) and hide its ticks."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(
        0.5,
        0.5,
        f"no data: {reason}",
        ha="center",
        va="center",
        wrap=True,
        fontsize=7.5,
        color="0.35",
        transform=ax.transAxes,
    )


def save_atomically(
    fig: Figure, out_pdf: str | os.PathLike, out_png: str | os.PathLike, dpi: int
) -> None:
    """Write ``fig`` as PDF and PNG: temporary files in the target folders, then ``os.replace``.

    On error no temporary file is left and the targets are untouched.
    """
    targets = [(Path(out_pdf), "pdf", {"CreationDate": None}), (Path(out_png), "png", {})]
    fix_layout(fig)
    # Both files are replaced only once both were written (the stack unwinds after the loop).
    with contextlib.ExitStack() as stack:
        for target, fmt, metadata in targets:
            tmp = stack.enter_context(atomic_path(target))
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)


def fix_layout(fig: Figure) -> None:
    """Run ``fig``'s layout engine once and remove it, so that each later save draws once.

    Positions are in figure fractions, so one layout serves the PDF and the PNG. A figure that
    keeps a layout engine (even matplotlib's ``"none"`` placeholder) is drawn twice per save:
    ``savefig`` first runs a full draw without output to lay it out.
    """
    engine = fig.get_layout_engine()
    if engine is None:
        return
    engine.execute(fig)
    # None (unlike "none") drops the engine, unless the rc asks for a default one
    with mpl.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)


def geometric_levels(lo: float, hi: float, n: int) -> np.ndarray:
    """``n`` levels spaced geometrically from ``lo`` to ``hi`` (rounded to 2 significant digits)."""
    levels = np.geomspace(lo, hi, n)
    rounded = np.array([float(f"{v:.2g}") for v in levels])
    return np.unique(rounded)


def padded_log_range(values: Iterable[float], factor: float = 1.3) -> tuple[float, float]:
    """``(min / factor, max * factor)`` of the finite positive ``values``."""
    vals = np.array([v for v in values if np.isfinite(v) and v > 0], dtype=float)
    if vals.size == 0:
        return 1.0, 10.0
    return float(vals.min() / factor), float(vals.max() * factor)


def robust_log_range(
    values: Iterable[float], factor: float = 1.3, min_decades: float = 1.0
) -> tuple[float, float]:
    """Padded log range of the bulk of ``values``: outliers further than ``max(min_decades,
    4 MAD)`` decades from the median (e.g. degenerate fits) are left out of the view."""
    vals = np.array([v for v in values if np.isfinite(v) and v > 0], dtype=float)
    if vals.size == 0:
        return 1.0, 10.0
    logs = np.log10(vals)
    med = float(np.median(logs))
    mad = float(np.median(np.abs(logs - med))) * 1.4826
    keep = np.abs(logs - med) <= max(min_decades, 4 * mad)
    return padded_log_range(vals[keep], factor)


def main_source(
    df: pd.DataFrame,
    group: Sequence[str] = ("agent", "env"),
    config: Sequence[str] = ("utd", "critic_params"),
) -> pd.DataFrame:
    """Rows of ``df`` from the source with the most ``config`` combinations in each ``group``
    (the study's grid, not the scattered evaluation or allocation runs; ties: first by name)."""
    if "source" not in df or df["source"].nunique() <= 1:
        return df
    group = [c for c in group if c in df]
    configs = df[[*group, "source", *config]].drop_duplicates()
    counts = configs.groupby([*group, "source"], dropna=False).size().reset_index(name="_n")
    counts = counts.sort_values(
        [*group, "_n", "source"], ascending=[True] * len(group) + [False, True]
    )
    chosen = counts.drop_duplicates(group)[[*group, "source"]]
    return df.merge(chosen, on=[*group, "source"], how="inner")
