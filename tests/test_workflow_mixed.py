"""A study of two agents through the real workflow: the shared default study (nine BRO cells on
cartpole-balance, ``studies.py``) with a block of two SimbaV2 cells added. Snakemake trains the
SimbaV2 cells only (SimbaV2's settings are train keys that BRO does not read, so no BRO cell goes
stale), then aggregates, analyses and draws the mixed study; the tables carry both agents, the
fits never mix them and every figure names both.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import matplotlib as mpl
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.text import Text
from studies import copy_study, run_dirs, snakemake

from valuescale import catalog
from valuescale.plots import build_figure
from valuescale.plots._common import STYLE

AGENTS = {"bro": "BRO", "simbav2": "SimbaV2"}
#: the figure that Snakemake draws (its rule needs every analysis table but the proposal's)
DRAWN_BY_THE_WORKFLOW = "fig_scaling"
#: the figures of this study (config/README.md: no batch-size sweep, no validation), drawn from
#: its tables as their rule draws them (a figure job is a Python process of its own, ~5 CPU-s)
FIGURES = ("fig_learning_curves", "fig_preprocessing", "fig_scaling", "fig_data_efficiency")
FIGURES += ("fig_budget",)
SIMBAV2_UTD = (0.5, 1.0)
ACTION_REPEAT = 5
THRESHOLDS = (200.0, 250.0)  # both agents' cells cross these within the shared study's steps


def mixed_config(shared: dict) -> dict:
    """The shared study's config with the smallest SimbaV2 block that gives SimbaV2 two cells:
    σ ∈ {0.5, 1} at BRO's smallest width, 2 seeds. Settings through SimbaV2's own train keys only
    (BRO's cells keep their params): 11 atoms, a fixed learning-rate decay length (the two cells
    then share one compiled step function, which the second finds in the compilation cache when
    the jobs run one at a time) and an action repeat of 5 (fewer agent steps; the shared study's
    step settings are multiples of 5, not of 4). Analysis settings (they retrain nothing): 3
    thresholds that both agents cross, 10 bootstrap resamples, one optimiser start."""
    config = copy.deepcopy(shared)
    bro = config["grid"][0]
    config["grid"].append(
        {
            "envs": bro["envs"],
            "agents": ["simbav2"],
            "utd": list(SIMBAV2_UTD),
            "widths": [min(bro["widths"])],
            "batch_sizes": bro["batch_sizes"],
            "lrs": [1.0e-4],
            "seeds": 2,
        }
    )
    config["train"].update(n_atoms=11, lr_decay_updates=500, action_repeat=ACTION_REPEAT)
    # the test run's compilation cache (conftest.py; operational: retrains nothing), so that a
    # run with VALUESCALE_TEST_XLA_CACHE compiles SimbaV2's step function once across runs
    config["compilation_cache"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    analysis = config["analysis"]
    j_min, j_max = THRESHOLDS
    analysis["envs"]["cartpole-balance"].update(j_min=j_min, j_max=j_max)
    analysis["thresholds"]["n"] = 3
    analysis["bootstrap"]["n"] = 10
    analysis["budget"]["n_heldout"] = 1
    analysis["fits"].update(n_starts=1, n_bootstrap=0)
    analysis["figures"]["dpi"] = 50
    return config


def _figure(name: str, tables: Path):
    """The figure ``name`` drawn from the study's tables, as the workflow's rule draws it."""
    inputs = {
        key: str(tables.parent / catalog.TABLES[key].file) for key in catalog.FIGURES[name].inputs
    }
    with mpl.rc_context(STYLE):
        return build_figure(name, inputs)


@pytest.mark.slow
def test_simbav2_cells_added_to_the_default_study_train_alone_and_every_figure_names_both(
    default_study, tmp_path
):
    study = copy_study(default_study.workdir, tmp_path / "study")
    config = mixed_config(default_study.config)
    bro_runs = run_dirs(study)
    before = {f: f.stat().st_mtime_ns for d in bro_runs for f in d.iterdir() if f.is_file()}
    # One job at a time: SimbaV2's second cell finds the first one's compiled step function.
    target = catalog.figure_path(DRAWN_BY_THE_WORKFLOW, "pdf", "results")
    snakemake(study, config, "--cores", "1", target, timeout=1200)

    # SimbaV2's two cells trained, by SimbaV2; no BRO cell retrained
    after = {f: f.stat().st_mtime_ns for f in before}
    assert after == before, [str(f) for f in before if after[f] != before[f]]
    runs = [json.loads((d / "run.json").read_text()) for d in run_dirs(study)]
    new = [r for r in runs if r["config"]["agent"] == "simbav2"]
    assert len(runs) == len(bro_runs) + 2
    assert sorted(r["config"]["utd"] for r in new) == list(SIMBAV2_UTD)
    steps = config["train"]["steps"]
    assert all(r["complete"] and r["env_steps"] == steps for r in new)
    assert {r["config"]["action_repeat"] for r in new} == {ACTION_REPEAT}

    # aggregated: every table with an agent column holds both agents; a fit is one agent's
    results = study / "results"
    tables = results / "tables"
    curves = pd.read_parquet(tables / "curves.parquet")
    cells = curves.groupby("agent")[["utd", "critic_params"]].apply(
        lambda c: len(c.drop_duplicates())
    )
    assert cells.to_dict() == {"bro": len(bro_runs), "simbav2": 2}
    with_agent = ("crossings", "thresholds", "best_batch_size", "fits_data_efficiency")
    for key in (*with_agent, "compute_optimal", "budget_optimal"):
        path = results / catalog.TABLES[key].file
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        assert set(table["agent"]) == set(AGENTS), (key, table)
    crossings = pd.read_parquet(tables / "crossings.parquet")
    sizes = crossings.groupby("agent")["critic_params"].unique()
    assert not set(sizes["bro"]) & set(sizes["simbav2"])  # the agents' critics differ at W 8
    fits = pd.read_csv(tables / "fits_data_efficiency.csv")
    assert set(fits.groupby(["agent", "scope"])["threshold_idx"].nunique()) == {3}
    # each fit has its own agent's points: SimbaV2's two cells cross every threshold, BRO's
    # nine the lowest one; a fit over both agents would have eleven
    points = fits.groupby("agent")["n_points"]
    assert points.min()["simbav2"] == points.max()["simbav2"] == 2, fits
    assert points.max()["bro"] == len(bro_runs), fits

    # every figure of the study names both agents
    for ext in ("pdf", "png"):
        assert (results / catalog.figure_file(DRAWN_BY_THE_WORKFLOW, ext)).stat().st_size > 1000
    for name in FIGURES:
        text = " ".join(t.get_text() for t in _figure(name, tables).findobj(Text))
        assert all(label in text for label in AGENTS.values()), (name, text)

    # the learning curves: one block per agent, whose columns are its own critic sizes, and
    # no empty panel
    fig = _figure("fig_learning_curves", tables)
    assert [sub._suptitle.get_text() for sub in fig.subfigs] == list(AGENTS.values())
    panels = [ax for ax in fig.findobj(Axes) if ax.get_label() != "<colorbar>"]
    n_widths = len(config["grid"][0]["widths"])
    assert len(panels) == n_widths + 1 and all(ax.axison and ax.lines for ax in panels)
