"""Figures (``valuescale.plots``): every figure from small real tables, the "no data" path,
malformed tables, atomic outputs, synthetic minimal tables, tick formats."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from valuescale.analysis.ingest import write_table
from valuescale.plots import FIGURE_INPUTS, FIGURES, TableError, render_figure
from valuescale.plots._common import FIG_WIDTH, NO_DATA_SIZE, human, nice_log_ticks, plain, sci
from valuescale.tasks import TASKS

DPI = 40
EXT = {"curves": "parquet", "crossings": "parquet"}
# One env of three published archives: BRO at the fitted batch sizes, SimbaV2 (4 batch sizes per
# (σ, N), hence measured B*), and the passive-critic runs.
SUBSET = {
    "fitted_bs": ["h1-stand-v0"],
    "simbav2_model_scaling_linear20_with_base": ["h1-stand-v0"],
    "side_critic": ["h1-stand-v0"],
}


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _pdf_size_inches(path: Path) -> tuple[float, float]:
    data = path.read_bytes()
    assert data.startswith(b"%PDF"), f"{path} is not a PDF"
    match = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert match, "no MediaBox in the PDF"
    return float(match.group(1)) / 72.0, float(match.group(2)) / 72.0


def _render(name: str, inputs: dict[str, str], out: Path) -> tuple[Path, Path]:
    pdf, png = out / f"{name}.pdf", out / f"{name}.png"
    render_figure(name, inputs, str(pdf), str(png), {"figures": {"dpi": DPI}})
    return pdf, png


def _render_with_data(name: str, inputs: dict[str, str], out: Path, caplog) -> None:
    """Render and check that the figure has data (no "no data" warning)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="valuescale.plots"):
        pdf, png = _render(name, inputs, out)
    assert "no data" not in caplog.text, caplog.text
    _check_outputs(pdf, png)


def _check_outputs(pdf: Path, png: Path) -> tuple[float, float]:
    """Both files exist, are non-empty, have the same size, and the PNG is figsize x dpi."""
    assert pdf.stat().st_size > 1000 and png.stat().st_size > 1000
    width_in, height_in = _pdf_size_inches(pdf)
    assert width_in == pytest.approx(FIG_WIDTH)
    assert _png_size(png) == (round(width_in * DPI), round(height_in * DPI))
    leftovers = [p.name for p in pdf.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers
    return width_in, height_in


@pytest.fixture(scope="module")
def real_tables(published_table: Callable[[str], pd.DataFrame], tmp_path_factory) -> dict[str, str]:
    """Every analysis table, from one env of three published archives, via the pipeline stages
    (few thresholds, bootstrap resamples and optimiser starts: seconds)."""
    from valuescale import pipeline

    root = tmp_path_factory.mktemp("tables")
    frames = [published_table(stem).query("env in @envs") for stem, envs in SUBSET.items()]
    write_table(pd.concat(frames, ignore_index=True), root / "curves.parquet")
    settings = {
        "envs": {
            env: {"j_min": t.j_min, "j_max": t.j_max, "max_step": None, "delta": t.delta}
            for env, t in TASKS.items()
        },
        "reset_interval": {"bro": 2_500_000, "simbav2": None},
        "thresholds": {"n": 8},
        "bootstrap": {"n": 8, "seed": 0},
        "batch_size": {"min_batch_sizes": 3},
        "fits": {
            "n_starts": 2,
            "seed": 0,
            "n_bootstrap": 0,
            "variants": ["per_env", "averaged"],
            "holdout_sources": ["side_critic"],
        },
        "compute": {
            "flops_per_param_sample": 10,
            "batch_convention": "accounting",
            "accounting_batch": 256,
        },
        "budget": {"n_heldout": 2},
    }
    t = {key: str(root / f"{key}.{EXT.get(key, 'csv')}") for key in _all_keys()}
    pipeline.crossings(
        t["curves"],
        out_crossings=t["crossings"],
        out_thresholds=t["thresholds"],
        out_best_batch_size=t["best_batch_size"],
        settings=settings,
    )
    pipeline.fits(
        t["crossings"],
        t["best_batch_size"],
        out_batch_size=t["fits_batch_size"],
        out_data_efficiency=t["fits_data_efficiency"],
        settings=settings,
    )
    pipeline.allocation(
        t["crossings"],
        t["fits_data_efficiency"],
        t["fits_batch_size"],
        out_compute_optimal=t["compute_optimal"],
        out_budget_optimal=t["budget_optimal"],
        out_budget_fits=t["budget_fits"],
        settings=settings,
    )
    pipeline.passive_critic_slopes(t["curves"], out=t["passive_critic_slopes"], settings=settings)
    return t


def _all_keys() -> list[str]:
    return sorted({key for keys in FIGURE_INPUTS.values() for key in keys})


def _inputs(tables: dict[str, str], name: str) -> dict[str, str]:
    return {key: tables[key] for key in FIGURE_INPUTS[name]}


# --------------------------------------------------------------------------------------------
# Real tables
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_renders_from_real_tables(
    name: str, real_tables: dict[str, str], tmp_path: Path, caplog
) -> None:
    _render_with_data(name, _inputs(real_tables, name), tmp_path, caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.pdf", f"{name}.png"]


@pytest.mark.parametrize("name", ["fig_scaling", "fig_data_efficiency"])
def test_law_figures_take_the_best_batch_size_table(
    name: str, real_tables: dict[str, str], tmp_path: Path, caplog
) -> None:
    """As the workflow passes them: measured D_J at the batch size closest to B*."""
    inputs = _inputs(real_tables, name) | {"best_batch_size": real_tables["best_batch_size"]}
    _render_with_data(name, inputs, tmp_path, caplog)


def test_figure_settings_choose_threshold_and_variants(
    real_tables: dict[str, str], tmp_path: Path, caplog
) -> None:
    settings = {"figures": {"dpi": DPI, "threshold_idx": 0, "variants": ["per_env"]}}
    for name in ("fig_scaling", "fig_budget"):
        pdf, png = tmp_path / f"{name}.pdf", tmp_path / f"{name}.png"
        with caplog.at_level(logging.WARNING, logger="valuescale.plots"):
            render_figure(name, _inputs(real_tables, name), str(pdf), str(png), settings)
        assert "no data" not in caplog.text
        _check_outputs(pdf, png)
    # a threshold no fit has: nothing to show, still written
    settings["figures"]["threshold_idx"] = 99
    with caplog.at_level(logging.WARNING, logger="valuescale.plots"):
        render_figure(
            "fig_scaling", _inputs(real_tables, "fig_scaling"), str(pdf), str(png), settings
        )
    assert "no data" in caplog.text


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_malformed_table_names_file_and_column(
    name: str, real_tables: dict[str, str], tmp_path: Path
) -> None:
    from valuescale.plots import FIGURE_SPECS

    key = FIGURE_INPUTS[name][0]
    column = FIGURE_SPECS[name][key].required[-1]
    path = Path(real_tables[key])
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    bad = tmp_path / "bad" / path.name
    write_table(df.drop(columns=[column]), bad)
    inputs = {**_inputs(real_tables, name), key: str(bad)}
    out = tmp_path / "out"
    with pytest.raises(TableError) as err:
        _render(name, inputs, out)
    assert str(bad) in str(err.value) and repr(column) in str(err.value)
    assert not out.exists() or not any(out.iterdir())  # nothing written, no temporary files


def test_non_numeric_column_is_refused(real_tables: dict[str, str], tmp_path: Path) -> None:
    df = pd.read_csv(real_tables["budget_optimal"])
    df["budget"] = "lots"
    bad = tmp_path / "budget_optimal.csv"
    df.to_csv(bad, index=False)
    inputs = {**_inputs(real_tables, "fig_budget"), "budget_optimal": str(bad)}
    with pytest.raises(TableError, match="'budget' must be numeric"):
        _render("fig_budget", inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_outputs_are_replaced_atomically(real_tables: dict[str, str], tmp_path: Path) -> None:
    pdf, png = tmp_path / "fig.pdf", tmp_path / "fig.png"
    pdf.write_text("old")
    png.write_text("old")
    render_figure(
        "fig_preprocessing",
        _inputs(real_tables, "fig_preprocessing"),
        str(pdf),
        str(png),
        {"figures": {"dpi": DPI}},
    )
    _check_outputs(pdf, png)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]


# --------------------------------------------------------------------------------------------
# No data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_missing_tables_give_a_no_data_figure(name: str, tmp_path: Path, caplog) -> None:
    inputs = {key: str(tmp_path / f"absent_{key}.csv") for key in FIGURE_INPUTS[name]}
    with caplog.at_level(logging.WARNING, logger="valuescale.plots"):
        pdf, png = _render(name, inputs, tmp_path / "out")
    assert "no data" in caplog.text
    assert _check_outputs(pdf, png) == pytest.approx(NO_DATA_SIZE)


def test_empty_or_unusable_tables_give_a_no_data_figure(tmp_path: Path, caplog) -> None:
    # header-only tables, and fits that all failed
    fits = pd.DataFrame(
        {
            "scope": ["h1-crawl-v0"],
            "variant": ["per_env"],
            "threshold_idx": [19],
            "D_min": [np.nan],
            "a_J": [np.nan],
            "alpha_J": [np.nan],
            "b_J": [np.nan],
            "beta_J": [np.nan],
            "status": ["failed"],
        }
    )
    fits.to_csv(tmp_path / "fits.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    crossings = pd.DataFrame(
        columns=["env", "agent", "utd", "critic_params", "batch_size", "threshold_idx"]
        + ["threshold", "D"]
    )
    write_table(crossings, tmp_path / "crossings.parquet")
    inputs = {
        "crossings": str(tmp_path / "crossings.parquet"),
        "fits_data_efficiency": str(tmp_path / "fits.csv"),
        "compute_optimal": str(tmp_path / "empty.csv"),
    }
    with caplog.at_level(logging.WARNING, logger="valuescale.plots"):
        pdf, png = _render("fig_scaling", inputs, tmp_path / "out")
    assert "no data-efficiency fit with status ok" in caplog.text
    assert _check_outputs(pdf, png) == pytest.approx(NO_DATA_SIZE)


def test_unknown_figure_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown figure 'fig_nope'"):
        _render("fig_nope", {}, tmp_path)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# Synthetic minimal tables (only the documented columns)
# --------------------------------------------------------------------------------------------


def _law(utd: np.ndarray, n: np.ndarray) -> np.ndarray:
    return 1.5e5 + (2.0 / utd) ** 0.6 * 1e5 + (3e6 / n) ** 0.7 * 2e5


def test_law_figures_from_minimal_synthetic_tables(tmp_path: Path, caplog) -> None:
    utd, n = np.meshgrid([1.0, 2.0, 4.0, 8.0], [2.5e5, 1e6, 4e6, 1.6e7])
    utd, n = utd.ravel(), n.ravel()
    crossings = pd.DataFrame(
        {
            "env": "toy",
            "agent": "bro",
            "utd": utd,
            "critic_params": n.astype(np.int64),
            "batch_size": 256,
            "threshold_idx": 0,
            "threshold": 500.0,
            "D": _law(utd, n),
        }
    )
    write_table(crossings, tmp_path / "crossings.parquet")
    fits = pd.DataFrame(
        [
            {
                "scope": "toy",
                "variant": "per_env",
                "threshold_idx": 0,
                "D_min": 1.5e5,
                "a_J": 2.0 * 1e5 ** (1 / 0.6),
                "alpha_J": 0.6,
                "b_J": 3e6 * 2e5 ** (1 / 0.7),
                "beta_J": 0.7,
                "status": "ok",
            }
        ]
    )
    fits.to_csv(tmp_path / "fits.csv", index=False)
    inputs = {
        "crossings": str(tmp_path / "crossings.parquet"),
        "fits_data_efficiency": str(tmp_path / "fits.csv"),
        "compute_optimal": str(tmp_path / "absent.csv"),
    }
    for name in ("fig_scaling", "fig_data_efficiency"):
        _render_with_data(name, {k: inputs[k] for k in FIGURE_INPUTS[name]}, tmp_path, caplog)


SOURCES = [
    "model_scaling_const_lr",
    "overfitting",
    "fitted_bs",
    "interpolated_bs",
    "extrapolated_bs",
    "compute_optimal",
    "n_scaling_bl",
    "utd_scaling_bl",
    "side_critic",
    "simbav2_model_scaling_linear20_with_base",
    "dmc_bro_ablations",
    "own",
]


@pytest.mark.parametrize("dpi", [DPI, 150])
@pytest.mark.parametrize("name", ["fig_scaling", "fig_data_efficiency"])
def test_a_long_list_of_sources_wraps_inside_the_figure(tmp_path: Path, name: str, dpi: int):
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from valuescale.plots import STYLE, build_figure

    utd, n = np.meshgrid([1.0, 2.0, 4.0], [2.5e5, 1e6, 4e6])
    utd, n = utd.ravel(), n.ravel()
    crossings, fits = [], []
    for source in SOURCES:
        crossings.append(
            pd.DataFrame(
                {
                    "env": "toy",
                    "agent": "bro",
                    "source": source,
                    "utd": utd,
                    "critic_params": n.astype(np.int64),
                    "batch_size": 256,
                    "threshold_idx": 0,
                    "threshold": 500.0,
                    "D": _law(utd, n),
                }
            )
        )
        fits.append(
            {
                "scope": "toy",
                "agent": "bro",
                "source": source,
                "variant": "per_env",
                "threshold_idx": 0,
                "D_min": 1.5e5,
                "a_J": 2.0 * 1e5 ** (1 / 0.6),
                "alpha_J": 0.6,
                "b_J": 3e6 * 2e5 ** (1 / 0.7),
                "beta_J": 0.7,
                "status": "ok",
            }
        )
    write_table(pd.concat(crossings, ignore_index=True), tmp_path / "crossings.parquet")
    pd.DataFrame(fits).to_csv(tmp_path / "fits.csv", index=False)
    inputs = {
        "crossings": str(tmp_path / "crossings.parquet"),
        "fits_data_efficiency": str(tmp_path / "fits.csv"),
        "compute_optimal": str(tmp_path / "absent.csv"),
    }
    with mpl.rc_context(STYLE):
        fig = build_figure(name, {k: inputs[k] for k in FIGURE_INPUTS[name]})
        fig.set_dpi(dpi)
        FigureCanvasAgg(fig).draw()
        title = fig._suptitle
        box = title.get_window_extent(fig.canvas.get_renderer())
    lines = title.get_text().split("\n")
    assert len(lines) > 2 and lines[1].startswith("runs: ")  # the sources line was wrapped
    assert "own" in title.get_text() and "utd_scaling_bl" in title.get_text()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)


def test_curve_figures_from_minimal_own_runs(tmp_path: Path, caplog) -> None:
    """Own runs: no width, lr, source or passive columns; losses for fig_overfitting."""
    rng = np.random.default_rng(0)
    rows = []
    steps = np.arange(1, 41) * 25_000
    for utd in (1.0, 4.0):
        for n in (1e6, 4e6):
            for seed in range(3):
                ret = 800 * (1 - np.exp(-steps * utd**0.3 * (n / 1e6) ** 0.2 / 4e5))
                ret = ret + rng.normal(0, 20, len(steps))
                for metric, values in (
                    ("return", ret),
                    ("critic_loss", 5 / utd**0.3 / (n / 1e6) ** 0.2 + 0 * steps),
                    ("validation_critic_loss", 20 / (n / 1e6) ** 0.1 + 0 * steps),
                ):
                    rows.append(
                        pd.DataFrame(
                            {
                                "env": "toy",
                                "agent": "bro",
                                "utd": utd,
                                "critic_params": int(n),
                                "batch_size": 256,
                                "seed": seed,
                                "step": steps,
                                "metric": metric,
                                "value": values,
                            }
                        )
                    )
    write_table(pd.concat(rows, ignore_index=True), tmp_path / "curves.parquet")
    pd.DataFrame({"env": "toy", "threshold_idx": [0, 1], "threshold": [300.0, 700.0]}).to_csv(
        tmp_path / "thresholds.csv", index=False
    )
    inputs = {
        "curves": str(tmp_path / "curves.parquet"),
        "thresholds": str(tmp_path / "thresholds.csv"),
    }
    for name in ("fig_learning_curves", "fig_preprocessing", "fig_overfitting"):
        _render_with_data(name, {k: inputs[k] for k in FIGURE_INPUTS[name]}, tmp_path, caplog)
    # no passive critic in these runs
    pdf, png = _render(
        "fig_passive_critic",
        {"curves": inputs["curves"], "passive_critic_slopes": str(tmp_path / "absent.csv")},
        tmp_path / "out",
    )
    assert _check_outputs(pdf, png) == pytest.approx(NO_DATA_SIZE)


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def test_number_formats() -> None:
    assert [human(v) for v in (619_208, 2_286_792, 8_767_688, 34_312_392, 1_000_000)] == [
        "619K",
        "2.3M",
        "8.8M",
        "34M",
        "1M",
    ]
    assert [plain(v) for v in (0.5, 1.0, 15.0, 1024.0, 2048.0)] == [
        "0.5",
        "1",
        "15",
        "1024",
        "2048",
    ]
    assert sci(1e17) == "10¹⁷" and sci(3e16) == "3·10¹⁶"


def test_nice_log_ticks() -> None:
    assert list(nice_log_ticks(1e5, 2e7)) == [1e5, 1e6, 1e7]
    assert list(nice_log_ticks(150.0, 1200.0)) == [200.0, 500.0, 1000.0]
    assert len(nice_log_ticks(2.1e16, 3.9e16)) >= 2


def _texts(fig) -> str:
    """Every text of a figure (titles, notes, legends), joined, line breaks as spaces."""
    from matplotlib.text import Text

    return " ".join(" ".join(t.get_text() for t in fig.findobj(Text)).split())


def test_law_and_budget_figures_say_which_degenerate_fits_they_skip(tmp_path: Path) -> None:
    from valuescale.analysis.allocation import annotate_budget_points, budget_optimal_table
    from valuescale.plots._common import Inputs
    from valuescale.plots.budget import fig_budget
    from valuescale.plots.laws import fig_data_efficiency, fig_scaling

    utd, n = np.meshgrid([1.0, 2.0, 4.0, 8.0], [2.5e5, 1e6, 4e6, 1.6e7])
    utd, n = utd.ravel(), n.ravel()
    crossings = pd.concat(
        pd.DataFrame(
            {
                "env": env,
                "agent": "bro",
                "utd": utd,
                "critic_params": n.astype(np.int64),
                "batch_size": 256,
                "threshold_idx": j,
                "threshold": 500.0 + j,
                "D": _law(utd, n) * (1 + 0.1 * j),
            }
        )
        for env in ("toy", "flat")
        for j in (0, 1)
    )
    write_table(crossings, tmp_path / "crossings.parquet")
    sound = {
        "variant": "per_env",
        "agent": "bro",
        "D_min": 1.5e5,
        "a_J": 2.0 * 1e5 ** (1 / 0.6),
        "alpha_J": 0.6,
        "b_J": 3e6 * 2e5 ** (1 / 0.7),
        "beta_J": 0.7,
        "status": "ok",
        "reason": "",
    }
    collapsed = "alpha_J = 0.033 collapsed: the σ term changes by 7 % over σ 1-8"
    fits = pd.DataFrame(
        [
            {**sound, "scope": "toy", "threshold_idx": 0, "threshold": 500.0},
            {
                **sound,
                "scope": "toy",
                "threshold_idx": 1,
                "status": "degenerate",
                "reason": collapsed,
            },
            {**sound, "scope": "flat", "threshold_idx": 0, "status": "degenerate", "reason": "x"},
        ]
    )
    fits.to_csv(tmp_path / "fits.csv", index=False)
    # the fit at the top threshold is degenerate: panels show #0 and say that #1 is not drawn
    for builder in (fig_scaling, fig_data_efficiency):
        paths = {"crossings": str(tmp_path / "crossings.parquet")}
        paths["fits_data_efficiency"] = str(tmp_path / "fits.csv")
        text = _texts(builder(Inputs(builder.__name__, paths), {}))
        assert "not drawn, degenerate: collapsed exponent #1" in text, text
        assert "flat" in text and "no usable fit" in text  # a scope with no usable fit at all
    budget = annotate_budget_points(budget_optimal_table(fits, delta={"toy": 1e11}), fits)
    budget.to_csv(tmp_path / "budget_optimal.csv", index=False)
    paths = {"budget_optimal": str(tmp_path / "budget_optimal.csv")}
    text = _texts(fig_budget(Inputs("fig_budget", paths), {}))
    assert "degenerate fit skipped: J #1 (not allocated)" in text, text


# --------------------------------------------------------------------------------------------
# Several agents in one study
# --------------------------------------------------------------------------------------------

#: critic sizes of a two-agent study: the agents' ladders differ (as BRO's and SimbaV2's do)
LADDERS = {"bro": (12_000, 40_000, 150_000), "simbav2": (20_000, 70_000)}
PASSIVE_SLOPES = {"bro": -0.5, "simbav2": -0.2}


def _figure(name: str, inputs: dict[str, str]):
    import matplotlib as mpl

    from valuescale.plots import build_figure
    from valuescale.plots._common import STYLE

    with mpl.rc_context(STYLE):
        return build_figure(name, {k: inputs[k] for k in FIGURE_INPUTS[name]})


def _panels(fig) -> list:
    """The data axes of a figure and its subfigures (colour bars left out)."""
    from matplotlib.axes import Axes

    return [ax for ax in fig.findobj(Axes) if ax.get_label() != "<colorbar>"]


def _no_empty_panel(fig) -> None:
    for ax in _panels(fig):
        assert ax.axison and ax.lines, f"empty panel {ax.get_title()!r}"


@pytest.fixture(scope="module")
def two_agent_tables(tmp_path_factory) -> dict[str, str]:
    """Own runs of BRO and SimbaV2 on two envs with different critic-size ladders: returns,
    training and validation losses, a passive critic; thresholds; passive-critic slopes."""
    from valuescale.analysis.evaluation import passive_critic_slope_table

    root = tmp_path_factory.mktemp("two_agents")
    rng = np.random.default_rng(0)
    steps = np.arange(1, 21) * 5_000
    frames = []
    for agent, sizes in LADDERS.items():
        for env in ("cartpole-balance", "cheetah-run"):
            for utd in (1.0, 2.0):
                for width, n in enumerate(sizes, start=1):
                    for passive in (1, 4):
                        for seed in range(2):
                            speed = utd**0.3 * (n / 1e4) ** 0.2 / 4e4
                            ret = 800 * (1 - np.exp(-steps * speed))
                            loss = 10.0 * width ** PASSIVE_SLOPES[agent] + 0 * steps
                            for metric, values in (
                                ("return", ret + rng.normal(0, 20, len(steps))),
                                ("critic_loss", 5 / utd**0.3 / (n / 1e4) ** 0.2 + 0 * steps),
                                ("validation_critic_loss", 20 / (n / 1e4) ** 0.1 + 0 * steps),
                                ("passive_validation_critic_loss", loss * passive**-0.1),
                            ):
                                frames.append(
                                    pd.DataFrame(
                                        {
                                            "env": env,
                                            "agent": agent,
                                            "utd": utd,
                                            "width": width,
                                            "critic_params": n,
                                            "batch_size": 256,
                                            "lr": 3e-4,
                                            "seed": seed + 10 * passive,
                                            "step": steps,
                                            "metric": metric,
                                            "value": values,
                                            "source": "own",
                                            "passive_width": passive,
                                            "passive_critic_params": 100 * passive,
                                        }
                                    )
                                )
    curves = pd.concat(frames, ignore_index=True)
    curves = curves.astype({"width": "Int64", "passive_width": "Int64"})
    write_table(curves, root / "curves.parquet")
    thresholds = pd.DataFrame(
        [
            {"env": env, "agent": agent, "threshold_idx": j, "threshold": level}
            for env in ("cartpole-balance", "cheetah-run")
            for agent in LADDERS
            for j, level in enumerate((300.0, 700.0))
        ]
    )
    thresholds.to_csv(root / "thresholds.csv", index=False)
    slopes = passive_critic_slope_table(curves)
    slopes.to_csv(root / "passive_critic_slopes.csv", index=False)
    return {
        "curves": str(root / "curves.parquet"),
        "thresholds": str(root / "thresholds.csv"),
        "passive_critic_slopes": str(root / "passive_critic_slopes.csv"),
    }


def test_learning_curves_of_two_agents_give_each_its_own_critic_sizes(two_agent_tables):
    """One block per agent, titled with its name, whose columns are that agent's own critic
    sizes: no empty panel although the agents' ladders differ."""
    from valuescale.plots._common import human

    fig = _figure("fig_learning_curves", two_agent_tables)
    _no_empty_panel(fig)
    assert [sub._suptitle.get_text() for sub in fig.subfigs] == ["BRO", "SimbaV2"]
    for sub, sizes in zip(fig.subfigs, LADDERS.values(), strict=True):
        titles = [ax.get_title() for ax in sub.axes if ax.get_label() != "<colorbar>"]
        assert titles == [f"N={human(n)}" for n in sizes] * 2  # two envs (rows)
    assert len(_panels(fig)) == 2 * (3 + 2)


@pytest.mark.parametrize("name", ["fig_preprocessing", "fig_overfitting", "fig_passive_critic"])
def test_curve_figures_of_two_agents_name_each_agent(two_agent_tables, name: str) -> None:
    text = _texts(_figure(name, two_agent_tables))
    assert "BRO" in text and "SimbaV2" in text, text


def test_passive_critic_figure_gives_each_agent_its_own_slopes(two_agent_tables) -> None:
    """Each panel and the title's average quote the slope of its own agent's runs."""
    text = _texts(_figure("fig_passive_critic", two_agent_tables))
    assert "BRO slope vs main width -0.50" in text and "SimbaV2 slope vs main width -0.20" in text
    assert text.count("slope vs main width -0.50 (mean)") == 4  # BRO: 2 envs x 2 σ
    assert text.count("slope vs main width -0.20 (mean)") == 4  # SimbaV2


@pytest.mark.parametrize(
    "name",
    [
        "fig_scaling",
        "fig_data_efficiency",
        "fig_budget",
        "fig_preprocessing",
        "fig_overfitting",
        "fig_learning_curves",
    ],
)
def test_figures_of_the_published_bro_and_simbav2_runs_name_each_agent(
    name: str, real_tables: dict[str, str]
) -> None:
    """The real tables hold BRO (fitted_bs) and SimbaV2 runs of h1-stand, whose critic-size
    ladders differ (BRO's stops at 34M, SimbaV2's at 143M)."""
    fig = _figure(name, real_tables)
    text = _texts(fig)
    assert "BRO" in text and "SimbaV2" in text, text
    if name == "fig_learning_curves":
        _no_empty_panel(fig)


def test_progress_figure_gives_each_agent_its_own_panel(tmp_path):
    """`valuescale status --plot` of a study with BRO and SimbaV2 cells on one env: one panel per
    (env, agent), each titled with its agent and counting only its own cells."""
    from valuescale.plots.progress import fig_progress

    cells = []
    for agent, utd, params in [("bro", 1.0, 9e4), ("bro", 2.0, 9e4), ("simbav2", 1.0, 7e4)]:
        run = f"cartpole-balance/{agent}/utd{utd:g}"
        (tmp_path / "runs" / run).mkdir(parents=True)
        pd.DataFrame(
            {"step": [1000, 2000], "metric": "return", "value": [100.0, 300.0],
             "critic_params": params, "seed": 0}
        ).to_parquet(tmp_path / "runs" / run / "curves.parquet")  # fmt: skip
        cells.append({"env": "cartpole-balance", "agent": agent, "utd": utd, "state": "done",
                      "run": run, "planned_steps": 2000})  # fmt: skip
    cells.append({"env": "cartpole-balance", "agent": "simbav2", "utd": 2.0, "state": "pending",
                  "run": "x", "planned_steps": 2000})  # fmt: skip
    status = {"results_dir": str(tmp_path), "cells": cells, "counts": {"done": 3, "pending": 1}}
    fig = fig_progress(status)
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert titles == [
        "cartpole-balance · BRO\n2 of 2 cells with an evaluation",
        "cartpole-balance · SimbaV2\n1 of 2 cells with an evaluation",
    ]
