"""A study of two agents through the real workflow: BRO and SimbaV2 on cartpole-balance, two cells
each, trained, aggregated, analysed and drawn by Snakemake; the tables carry both agents, the fits
never mix them and every figure names both.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib as mpl
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.text import Text
from studies import default_config, run_dirs, snakemake

from valuescale import catalog
from valuescale.plots import build_figure
from valuescale.plots._common import STYLE

AGENTS = {"bro": "BRO", "simbav2": "SimbaV2"}
DRAWN_BY_THE_WORKFLOW = ("fig_learning_curves", "fig_preprocessing", "fig_scaling")
#: the figures this study makes (config/README.md: no batch-size sweep, no validation)
FIGURES = (*DRAWN_BY_THE_WORKFLOW, "fig_data_efficiency", "fig_budget")
MIXED_STEPS = 600


def mixed_config() -> dict:
    """The default study's config made the smallest study of two agents that still gives each
    agent two cells: σ ∈ {1, 2} at one width (BRO's two cells then share one compiled step
    function, and so do SimbaV2's with its learning-rate decay length fixed; the study's
    compilation cache serves the second cell when the jobs run one at a time), 600 env steps of
    2 seeds with tiny networks, 3 thresholds, 10 bootstrap resamples, one optimiser start and
    low-resolution figures."""
    config = default_config()
    config["seeds"] = 2
    block = {"envs": ["cartpole-balance"], "utd": [1, 2], "widths": [8], "batch_sizes": [16]}
    config["grid"] = [
        {**block, "agents": ["bro"], "lrs": [3.0e-4]},
        {**block, "agents": ["simbav2"], "lrs": [1.0e-4]},
    ]
    config["train"].update(
        steps=MIXED_STEPS,
        warmup_steps=100,
        eval_interval=200,
        replay_size=MIXED_STEPS,
        checkpoint_every=MIXED_STEPS,
        log_interval=200,
        max_episode_steps=100,
        actor_width=8,
        n_atoms=11,
        lr_decay_updates=500,
    )
    analysis = config["analysis"]
    analysis["envs"]["cartpole-balance"].update(j_min=20.0, j_max=40.0)  # of 100-step episodes
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
def test_a_bro_and_simbav2_study_trains_both_and_every_figure_names_both(tmp_path):
    config = mixed_config()
    # One job at a time: an agent's second cell finds the first one's compiled step function.
    # Targets: the curve figures and fig_scaling (so every analysis table but the proposal and
    # the summary page); the other law figures are drawn from the same tables below, as their
    # rule would draw them (each figure job is a Python process of its own: ~5 CPU-s).
    targets = [catalog.figure_path(f, "pdf", "results") for f in DRAWN_BY_THE_WORKFLOW]
    snakemake(tmp_path, config, "--cores", "1", *targets, timeout=1200)

    # both agents' cells trained, each by its own agent
    runs = [json.loads((d / "run.json").read_text()) for d in run_dirs(tmp_path)]
    trained = sorted((r["config"]["agent"], r["config"]["utd"]) for r in runs)
    assert trained == [(a, u) for a in sorted(AGENTS) for u in (1.0, 2.0)], trained
    assert all(r["complete"] and r["env_steps"] == MIXED_STEPS for r in runs)
    repeat = {r["config"]["agent"]: r["config"].get("action_repeat") for r in runs}
    assert repeat == {"bro": None, "simbav2": 2}  # SimbaV2's runs are SimbaV2's

    # aggregated: every table with an agent column holds both agents; a fit is one agent's
    results = tmp_path / "results"
    tables = results / "tables"
    curves = pd.read_parquet(tables / "curves.parquet")
    cells = curves[["agent", "utd", "seed"]].drop_duplicates()
    assert len(cells) == 2 * 2 * 2 and set(cells["agent"]) == set(AGENTS)
    with_agent = ("crossings", "thresholds", "best_batch_size", "fits_data_efficiency")
    for key in (*with_agent, "compute_optimal", "budget_optimal"):
        path = results / catalog.TABLES[key].file
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        assert set(table["agent"]) == set(AGENTS), (key, table)
    crossings = pd.read_parquet(tables / "crossings.parquet")
    sizes = crossings.groupby("agent")["critic_params"].unique()
    assert sizes["bro"][0] != sizes["simbav2"][0]  # the agents' critics differ at equal width
    fits = pd.read_csv(tables / "fits_data_efficiency.csv")
    assert set(fits.groupby(["agent", "scope"])["threshold_idx"].nunique()) == {3}
    assert (fits["n_points"] == 2).all(), fits  # each agent's own two cells, never all four

    # every figure of the study names both agents
    for name in DRAWN_BY_THE_WORKFLOW:
        for ext in ("pdf", "png"):
            assert (results / catalog.figure_file(name, ext)).stat().st_size > 1000
    for name in FIGURES:
        text = " ".join(t.get_text() for t in _figure(name, tables).findobj(Text))
        assert all(label in text for label in AGENTS.values()), (name, text)

    # the learning curves: one block per agent, whose columns are its own critic sizes, and
    # no empty panel
    fig = _figure("fig_learning_curves", tables)
    assert [sub._suptitle.get_text() for sub in fig.subfigs] == list(AGENTS.values())
    panels = [ax for ax in fig.findobj(Axes) if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 and all(ax.axison and ax.lines for ax in panels)
