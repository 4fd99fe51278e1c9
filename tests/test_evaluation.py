"""Evaluation tables (fit errors, allocation strategies, passive-critic slopes) and the proposal
helpers: synthetic ground truth plus the published curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from valuescale.analysis.allocation import params_from_width
from valuescale.analysis.batch_size_fit import predict_batch_size
from valuescale.analysis.crossings import crossing_tables
from valuescale.analysis.data_efficiency import (
    fit_data_efficiency_table,
    predict_D,
    select_fit_points,
)
from valuescale.analysis.evaluation import (
    allocation_strategy_table,
    batch_size_loo_rows,
    design_runs,
    fit_error_table,
    passive_critic_slope_table,
    strategy_of_design,
    summarise_losses,
)
from valuescale.analysis.ingest import SIMBAV2_CRITIC_PARAMS
from valuescale.analysis.preprocess import preprocess
from valuescale.analysis.proposal import (
    INPUT_DIMS,
    batch_size_rule,
    input_dim,
    round_to_multiple,
    round_utd,
    simbav2_width,
    width_for,
)
from valuescale.analysis.thresholds import compute_thresholds

LAW = {"D_min": 4e4, "a_J": 3e5, "alpha_J": 1.0, "b_J": 2e11, "beta_J": 0.6}


def law_for(threshold_idx: int) -> dict[str, float]:
    """A law whose data need grows with the threshold index."""
    scale = 1.0 + 0.1 * threshold_idx
    return {**LAW, "D_min": LAW["D_min"] * scale, "a_J": LAW["a_J"] * scale}


def crossing_rows(
    source: str,
    utds: list[float],
    widths: list[int],
    *,
    env: str = "h1-crawl-v0",
    noise: float = 0.0,
    seed: int = 0,
    n_thresholds: int = 3,
) -> pd.DataFrame:
    """A crossings table whose D follows :func:`law_for` exactly (times log-normal noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for utd in utds:
        for width in widths:
            n = float(params_from_width(width, 70))
            for j in range(n_thresholds):
                D = float(predict_D(law_for(j), utd, n)) * float(np.exp(rng.normal(0, noise)))
                rows.append(
                    {
                        "env": env,
                        "agent": "bro",
                        "utd": float(utd),
                        "width": width,
                        "critic_params": int(n),
                        "batch_size": 256,
                        "lr": 3e-4,
                        "source": source,
                        "threshold_idx": j,
                        "threshold": 100.0 * (j + 1),
                        "D": D,
                        "D_std": 0.05 * D,
                    }
                )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Fit errors
# --------------------------------------------------------------------------------------------


def synthetic_study(noise: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    crossings = pd.concat(
        [
            crossing_rows("fitted_bs", [1, 2, 4, 8], [128, 256, 512, 1024, 2048], noise=noise),
            crossing_rows("interpolated_bs", [3, 6, 12], [368, 720, 1456], noise=noise, seed=1),
            crossing_rows("extrapolated_bs", [16], [256, 1024, 4096], noise=noise, seed=2),
        ],
        ignore_index=True,
    )
    points = select_fit_points(crossings, None, sources=["fitted_bs"])
    fits = fit_data_efficiency_table(points, variants=("per_env",), n_boot=0, n_starts=4)
    return crossings, fits


def test_fit_errors_vanish_on_exact_law_and_cover_every_set() -> None:
    crossings, fits = synthetic_study(noise=0.0)
    assert (fits["status"] == "ok").all()
    table = fit_error_table(crossings, fits, None, variants=("per_env",), batch_loo=False)
    d = table[(table["quantity"] == "D") & (table["variant"] == "per_env")]
    by_set = d[d["scope"] == "average"].set_index("set")
    assert set(by_set.index) == {"fitted", "interpolated", "extrapolated"}
    assert (by_set["mean_rel_error"] < 0.01).all()
    # every (config, threshold) of a set is counted: 4x5x3, 3x3x3, 1x3x3
    assert by_set.loc["fitted", "n"] == 60
    assert by_set.loc["interpolated", "n"] == 27
    assert by_set.loc["extrapolated", "n"] == 9
    assert (d["fit_source"] == "fitted_bs").all()
    assert set(d.loc[d["set"] == "extrapolated", "eval_source"]) == {"extrapolated_bs"}


def test_fit_errors_grow_with_noise_and_baseline_is_worse() -> None:
    crossings, fits = synthetic_study(noise=0.1)
    table = fit_error_table(crossings, fits, None, variants=("per_env",), batch_loo=False)
    avg = table[(table["scope"] == "average") & (table["quantity"] == "D")]
    err = avg.set_index(["variant", "set"])["mean_rel_error"]
    # log-normal noise of 0.1 gives about 8 % mean |error| on the held-out points
    assert 0.03 < err["per_env", "interpolated"] < 0.2
    assert 0.03 < err["per_env", "extrapolated"] < 0.3
    # the log-linear baseline cannot bend with D_min: worse out of sample on an Eq. 7.1 truth
    assert err["loglinear", "extrapolated"] > err["per_env", "extrapolated"]


def test_batch_size_loo_prefers_eq61_on_eq61_truth() -> None:
    truth = {"a_B": 2000.0, "alpha_B": 0.5, "b_B": 3e4, "beta_B": 0.7}
    rng = np.random.default_rng(0)
    rows = []
    for utd in (1, 2, 4, 8):
        for n in np.geomspace(2e5, 3e7, 5):
            B = float(predict_batch_size(truth, utd, n)) * float(np.exp(rng.normal(0, 0.03)))
            rows.append(
                {
                    "env": "h1-crawl-v0",
                    "agent": "bro",
                    "source": "grid",
                    "utd": float(utd),
                    "critic_params": n,
                    "B_star": B,
                    "n_batch_sizes": 6,
                    "status": "ok",
                }
            )
    out = pd.DataFrame(batch_size_loo_rows(pd.DataFrame(rows), n_starts=4))
    errors = out.set_index("variant")["mean_rel_error"]
    assert (out["set"] == "loo").all() and (out["n"] == 20).all()
    assert errors["eq6_1"] < 0.06
    assert errors["eq6_1"] < errors["loglinear"]


# --------------------------------------------------------------------------------------------
# Allocation strategies
# --------------------------------------------------------------------------------------------


def strategy_crossings(D: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    """Crossings of runs keyed (source, utd) -> D at two thresholds (width 512, B 256)."""
    rows = []
    for (source, utd), values in D.items():
        for j, d in enumerate(values):
            rows.append(
                {
                    "env": "h1-crawl-v0",
                    "agent": "bro",
                    "utd": utd,
                    "width": 512,
                    "critic_params": 2286792,
                    "batch_size": 256,
                    "lr": 3e-4,
                    "source": source,
                    "threshold_idx": j,
                    "threshold": 500.0 + j,
                    "D": d,
                }
            )
    return pd.DataFrame(rows)


def design(utds: list[float], budgets: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "env_name": "h1-crawl-v0",
            "utd": utds,
            "critic_params": 2286792.0,
            "compute_budget": budgets,
            "critic_width": 512,
            "batch_size_rounded": 256,
        }
    )


def test_allocation_strategy_ratios_are_exact_on_crafted_runs() -> None:
    crossings = strategy_crossings(
        {
            ("compute_optimal", 1.0): [100.0, 200.0],
            ("compute_optimal", 2.0): [100.0, 100.0],
            ("utd_scaling_bl", 3.0): [150.0, 300.0],  # 1.5x at budget 1e16
            ("utd_scaling_bl", 6.0): [200.0, np.nan],  # 2x, then never reached at budget 2e16
            ("n_scaling_bl", 1.0): [100.0, 200.0],  # same run as compute-optimal: 1x
        }
    )
    designs = {
        "hb_compute_optimal_x": design([1, 2], [1e16, 2e16]),
        "hb_utd_scaling_x": design([3, 6], [1e16, 2e16]),
        "hb_n_scaling_x": design([1], [1e16]),
    }
    table = allocation_strategy_table(crossings, designs).set_index(["strategy", "scope"])
    utd = table.loc[("utd_only", "all")]
    assert utd["mean_ratio"] == pytest.approx((1.5 + 1.5 + 2.0) / 3)
    assert utd["median_ratio"] == pytest.approx(1.5)
    assert utd["n"] == 3 and utd["n_not_reached"] == 1 and utd["n_budgets"] == 2
    model = table.loc[("model_only", "all")]
    assert model["mean_ratio"] == pytest.approx(1.0) and model["n"] == 2
    assert table.loc[("compute_optimal", "all"), "n"] == 4


def test_allocation_strategy_errors_name_the_problem() -> None:
    crossings = strategy_crossings({("compute_optimal", 1.0): [1.0]})
    bad = design([1], [1e16]).drop(columns="compute_budget")
    with pytest.raises(ValueError, match="hb_compute_optimal_bad.*compute_budget"):
        allocation_strategy_table(crossings, {"hb_compute_optimal_bad": bad})
    with pytest.raises(ValueError, match="unknown strategy"):
        allocation_strategy_table(crossings, {"whatever": design([1], [1e16])})
    with pytest.raises(ValueError, match="no compute-optimal design"):
        allocation_strategy_table(crossings, {"hb_utd_scaling_x": design([1], [1e16])})
    assert strategy_of_design("hb_n_scaling_250531") == "model_only"


def test_every_published_design_row_has_its_run(published_dir: Path, published_table) -> None:
    """The design tables pair the runs: each row names (σ, width, B) of a run in its zip."""
    for name, strategy in (
        ("hb_compute_optimal_250509", "compute_optimal"),
        ("hb_utd_scaling_250531", "utd_only"),
        ("hb_n_scaling_250531", "model_only"),
    ):
        source = {"compute_optimal": "compute_optimal", "utd_only": "utd_scaling_bl"}.get(
            strategy, "n_scaling_bl"
        )
        curves = published_table(source)
        configs = curves[curves["metric"] == "return"][
            ["env", "utd", "width", "batch_size", "source"]
        ].drop_duplicates()
        fake = configs.assign(threshold_idx=0, threshold=1.0, D=1.0)
        plan = pd.read_csv(published_dir / "design" / f"{name}.csv")
        runs = design_runs(fake, plan, strategy, name)
        assert len(runs) == len(plan), name


# --------------------------------------------------------------------------------------------
# Passive critic
# --------------------------------------------------------------------------------------------


def passive_curves(main_slope: float, passive_slope: float) -> pd.DataFrame:
    """Validation losses loss = 10 W^main_slope P^passive_slope late in training (higher early)."""
    rows = []
    for width in (256, 512, 1024):
        for passive in (128, 512):
            for seed in range(2):
                for step in range(1000, 101000, 1000):
                    late = 10.0 * width**main_slope * passive**passive_slope
                    value = late if step >= 90000 else 50.0 * late
                    for metric in ("passive_validation_critic_loss", "validation_critic_loss"):
                        rows.append(
                            {
                                "env": "h1-crawl-v0",
                                "agent": "bro",
                                "utd": 2.0,
                                "width": width,
                                "critic_params": int(params_from_width(width, 70)),
                                "batch_size": 1024,
                                "lr": 3e-4,
                                "seed": seed,
                                "step": step,
                                "metric": metric,
                                "value": value,
                                "source": "side_critic",
                                "passive_width": passive,
                                "passive_critic_params": int(params_from_width(passive, 70)),
                            }
                        )
    df = pd.DataFrame(rows)
    df["width"] = df["width"].astype("Int64")
    df["passive_width"] = df["passive_width"].astype("Int64")
    return df


def test_passive_slopes_recover_known_power_laws() -> None:
    table = passive_critic_slope_table(passive_curves(-0.5, -0.1))
    slopes = table.set_index(["metric", "env", "against"])["slope"]
    metric = "passive_validation_critic_loss"
    assert slopes[metric, "h1-crawl-v0", "main_width"] == pytest.approx(-0.5, abs=1e-9)
    assert slopes[metric, "h1-crawl-v0", "passive_width"] == pytest.approx(-0.1, abs=1e-9)
    assert slopes[metric, "average", "main_width"] == pytest.approx(-0.5, abs=1e-9)
    groups = table.set_index(["metric", "env", "against"])["n_groups"]
    assert groups[metric, "h1-crawl-v0", "main_width"] == 2  # one per passive width
    assert groups[metric, "h1-crawl-v0", "passive_width"] == 3  # one per main width


def test_passive_slopes_are_per_agent_never_averaged_across_agents() -> None:
    """Two agents on one env with different power laws: one row per (env, agent) and one
    average per agent, each equal to that agent's own slope."""
    simba = passive_curves(-0.2, -0.4).assign(agent="simbav2")
    table = passive_critic_slope_table(pd.concat([passive_curves(-0.5, -0.1), simba]))
    slopes = table.set_index(["metric", "env", "agent", "against"])["slope"]
    metric = "passive_validation_critic_loss"
    for env in ("h1-crawl-v0", "average"):
        assert slopes[metric, env, "bro", "main_width"] == pytest.approx(-0.5, abs=1e-9)
        assert slopes[metric, env, "simbav2", "main_width"] == pytest.approx(-0.2, abs=1e-9)
        assert slopes[metric, env, "simbav2", "passive_width"] == pytest.approx(-0.4, abs=1e-9)
    assert len(table) == 2 * 2 * 2 * 2  # metrics x agents x (env, average) x against


def test_loss_summary_uses_the_last_tenth_of_training() -> None:
    summary = summarise_losses(passive_curves(0.0, 0.0))
    assert np.allclose(summary["loss"], 10.0)  # the early 50x values are ignored
    assert (summary["n_seeds"] == 2).all()


def test_no_passive_critic_gives_empty_table_with_columns() -> None:
    df = passive_curves(-0.5, 0.0)
    df["passive_width"] = pd.array([pd.NA] * len(df), dtype="Int64")
    table = passive_critic_slope_table(df)
    assert table.empty and {"env", "against", "slope"} <= set(table.columns)


def test_passive_slopes_on_published_side_critic(published_table) -> None:
    """Paper Sec. 5.3: the passive critic's validation loss falls with the main critic's width
    (target quality) much more than with its own width."""
    table = passive_critic_slope_table(published_table("side_critic"))
    passive = table[table["metric"] == "passive_validation_critic_loss"]
    assert set(passive["env"]) == {"h1-crawl-v0", "h1-pole-v0", "h1-stand-v0", "average"}
    per_env = passive[passive["env"] != "average"].pivot(
        index="env", columns="against", values="slope"
    )
    assert (per_env["main_width"] < 0).all()
    avg = passive[passive["env"] == "average"].set_index("against")["slope"]
    assert avg["main_width"] < -0.2
    assert avg["main_width"] < avg["passive_width"]
    assert np.isfinite(table["slope"]).all()


def test_fit_errors_on_published_humanoidbench(published_table) -> None:
    """Fits on fitted_bs predict the held-out interpolated / extrapolated runs to within the
    paper's order (10.0 / 14.9 / 18.0 %); held-out errors exceed in-sample ones."""
    df = pd.concat(
        [published_table(s) for s in ("fitted_bs", "interpolated_bs", "extrapolated_bs")],
        ignore_index=True,
    )
    df = df[df["env"].isin(["h1-pole-v0", "humanoid-stand"])]
    curves = preprocess(df)
    thresholds = compute_thresholds(curves)
    crossings = crossing_tables(curves, thresholds, n_boot=10).crossings
    points = select_fit_points(crossings, None, sources=["fitted_bs"])
    fits = fit_data_efficiency_table(points, variants=("per_env",), n_boot=0, n_starts=4)
    fits = fits.assign(source="fitted_bs")
    table = fit_error_table(crossings, fits, None, variants=("per_env",), batch_loo=False)
    avg = table[
        (table["scope"] == "average") & (table["variant"] == "per_env") & (table["quantity"] == "D")
    ].set_index("set")
    assert avg.loc["fitted", "mean_rel_error"] < 0.12
    assert avg.loc["interpolated", "mean_rel_error"] < 0.25
    assert avg.loc["extrapolated", "mean_rel_error"] < 0.30
    assert avg.loc["interpolated", "mean_rel_error"] > avg.loc["fitted", "mean_rel_error"]
    assert (avg["n"] > 50).all()


# --------------------------------------------------------------------------------------------
# Proposal helpers
# --------------------------------------------------------------------------------------------


def test_input_dims_reproduce_the_published_parameter_counts(published_table) -> None:
    """N = 2 (4 W^2 + (d_in + 115) W + 100) with the table's d_in gives every published
    (width, critic_params) of the BRO runs, and width_for inverts it."""
    for stem in ("fitted_bs", "interpolated_bs", "extrapolated_bs", "compute_optimal"):
        df = published_table(stem)
        pairs = df[["env", "width", "critic_params"]].drop_duplicates()
        for row in pairs.itertuples(index=False):
            assert params_from_width(int(row.width), INPUT_DIMS[row.env]) == row.critic_params
            assert width_for("bro", row.env, float(row.critic_params)) == pytest.approx(row.width)


def test_input_dim_from_dm_control_specs() -> None:
    assert input_dim("reacher-easy") == 8  # obs 6 + act 2, built from the env's specs
    with pytest.raises(ValueError, match="no-such-env"):
        input_dim("no-such-env")


def test_simbav2_width_and_rounding() -> None:
    for width, params in SIMBAV2_CRITIC_PARAMS.items():
        assert simbav2_width(params) == pytest.approx(width, rel=1e-9)
    assert 512 < simbav2_width(2e7) < 1024
    assert round_utd(2.6) == 3.0 and round_utd(0.456) == 0.46 and round_utd(0.97) == 1.0
    assert round_to_multiple(1203.4) == 1200 and round_to_multiple(3.0) == 16


def test_batch_size_rule_prefers_specific_measured_laws() -> None:
    law = {"a_B": 1000.0, "alpha_B": 0.5, "b_B": 10.0, "beta_B": 0.2}
    rows = pd.DataFrame(
        [
            {"scope": "all", "agent": "bro", "source": "s", "basis": "B_star", "status": "ok",
             **{k: 2 * v if k == "a_B" else v for k, v in law.items()}},
            {"scope": "h1-crawl-v0", "agent": "bro", "source": "s", "basis": "run_batch_size",
             "status": "ok", **law},
            {"scope": "h1-crawl-v0", "agent": "bro", "source": "s", "basis": "B_star",
             "status": "degenerate", **law, "log_intercept": np.log(300.0), "slope_utd": 0.0,
             "slope_critic_params": 0.0, "loglinear_status": "ok"},
            {"scope": "all", "agent": "bro", "source": "t", "basis": "run_batch_size",
             "status": "constant", "B_geomean": 1024.0},
        ]
    )  # fmt: skip
    rule, text = batch_size_rule(rows, "bro", "s", "h1-crawl-v0")
    # the env-level B* row has no usable Eq. 6.1 but a usable log-linear baseline: it wins
    assert float(rule(np.array(2.0), np.array(1e6))) == pytest.approx(300.0)
    assert text.startswith("loglinear B_star h1-crawl-v0")
    rule, text = batch_size_rule(rows, "bro", "t", "cheetah-run")
    assert float(rule(np.array(2.0), np.array(1e6))) == 1024.0 and "constant" in text
    rule, _ = batch_size_rule(rows, "simbav2", "s", "h1-crawl-v0")
    assert rule is None


def test_averaged_fit_errors_on_task_averaged_points() -> None:
    """Two envs of one suite with the same law: the task-averaged fit predicts the averaged
    held-out points exactly, also when only that variant was fitted."""
    parts = []
    for env in ("h1-crawl-v0", "h1-pole-v0"):
        parts.append(crossing_rows("fitted_bs", [1, 2, 4, 8], [128, 256, 512, 1024], env=env))
        parts.append(crossing_rows("interpolated_bs", [3, 6], [368, 720], env=env))
    crossings = pd.concat(parts, ignore_index=True)
    points = select_fit_points(crossings, None, sources=["fitted_bs"])
    fits = fit_data_efficiency_table(points, variants=("averaged",), n_boot=0, n_starts=4)
    assert (fits["status"] == "ok").all() and set(fits["scope"]) == {"humanoidbench"}
    table = fit_error_table(crossings, fits, None, variants=("averaged",), batch_loo=False)
    avg = table[(table["variant"] == "averaged") & (table["scope"] == "humanoidbench")]
    by_set = avg.set_index("set")
    assert by_set.loc["interpolated", "n"] == 2 * 2 * 3  # (σ, W) points x thresholds
    assert (by_set["mean_rel_error"] < 0.01).all()


def test_input_dim_table_agrees_with_the_env_specs() -> None:
    """The DMC entries of the d_in table equal obs_dim + act_dim of the built envs."""
    from valuescale.envs import make_env

    for env in ("cartpole-balance", "cheetah-run", "walker-walk", "humanoid-stand", "finger-turn"):
        built = make_env(env, 0)
        assert INPUT_DIMS[env] == built.obs_dim + built.act_dim, env


def test_held_out_runs_score_only_the_laws_of_their_own_grid() -> None:
    crossings, fits = synthetic_study(noise=0.0)
    # another experiment on the same env and agent (the BRO ablation: its own size ladder, B = 1024)
    ablation = crossing_rows("dmc_bro_ablations", [1, 2, 5, 10], [256, 512, 1024, 4096])
    ablation = ablation.assign(batch_size=1024)
    points = select_fit_points(ablation, None, sources=["dmc_bro_ablations"])
    other = fit_data_efficiency_table(points, variants=("per_env",), n_boot=0, n_starts=4)
    both = pd.concat([fits.assign(source="fitted_bs"), other.assign(source="dmc_bro_ablations")])
    table = fit_error_table(
        pd.concat([crossings, ablation], ignore_index=True),
        both,
        None,
        variants=("per_env",),
        batch_loo=False,
    )
    d = table[table["quantity"] == "D"]
    pairs = set(zip(d["fit_source"], d["set"], d["eval_source"], strict=True))
    assert pairs == {
        ("fitted_bs", "fitted", "fitted_bs"),
        ("fitted_bs", "interpolated", "interpolated_bs"),
        ("fitted_bs", "extrapolated", "extrapolated_bs"),
        ("dmc_bro_ablations", "fitted", "dmc_bro_ablations"),
    }
    # a configuration maps a fit source to its held-out sets; unlisted sources: in-sample only
    only_fitted = fit_error_table(
        crossings, fits, None, eval_sets={}, variants=("per_env",), batch_loo=False
    )
    assert set(only_fitted["set"]) == {"fitted"}
