"""Thresholds, D_J crossings with the seed bootstrap, and the best batch size / learning rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import isotonic_regression

from valuescale.analysis.best_config import (
    best_batch_size,
    best_learning_rate,
    bootstrap_choices,
)
from valuescale.analysis.crossings import (
    BOOTSTRAP_COLUMNS,
    CROSSING_COLUMNS,
    bootstrap_crossings,
    crossing_steps,
    crossing_tables,
    isotonic_batch,
)
from valuescale.analysis.preprocess import Curve, preprocess
from valuescale.analysis.thresholds import compute_thresholds, paper_j_max, study_thresholds

EVAL_EVERY = 10_000
STEPS = np.arange(1, 101) * EVAL_EVERY  # 10k .. 1M


def _key(env: str = "cheetah-run", agent: str = "bro", utd: float = 1.0, **kw) -> dict:
    key = {
        "env": env,
        "agent": agent,
        "utd": utd,
        "width": 64,
        "critic_params": 30_000,
        "batch_size": 256,
        "lr": 3e-4,
        "source": "own",
    }
    key.update(kw)
    return key


def _saturating(
    tau: float, j_top: float = 1000.0, noise: float = 5.0, n_seeds: int = 8, seed: int = 0
) -> np.ndarray:
    """Per-seed returns j_top (1 - exp(-step / tau)) + Gaussian noise, shape [T, S]."""
    rng = np.random.default_rng(seed)
    clean = j_top * (1.0 - np.exp(-STEPS / tau))
    return clean[:, None] + rng.normal(scale=noise, size=(len(STEPS), n_seeds))


def _flat(key: dict, value: float) -> Curve:
    return Curve(key, STEPS[:3], np.full((3, 2), value))


def _thresholds(levels, env: str = "cheetah-run") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "env": env,
            "threshold_idx": np.arange(len(levels)),
            "threshold": np.asarray(levels, float),
        }
    )


# --------------------------------------------------------------------------- isotonic, crossing


def test_isotonic_batch_equals_scipy_row_by_row() -> None:
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=(64, 45)), axis=1) + rng.normal(scale=4.0, size=(64, 45))
    y[0] = 5.0  # constant row
    y[1] = np.linspace(10, 0, 45)  # decreasing row: one block
    y[2] = np.round(y[2])  # ties
    fit = isotonic_batch(y)
    for row, got in zip(y, fit, strict=True):
        np.testing.assert_allclose(got, isotonic_regression(row).x, atol=1e-9)
    np.testing.assert_allclose(isotonic_batch(y[5]), isotonic_regression(y[5]).x, atol=1e-9)


def test_isotonic_batch_with_missing_points_and_chunking() -> None:
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(size=(50, 600)), axis=1)  # K T^2 > one chunk
    y[rng.random(y.shape) < 0.25] = np.nan
    y[7] = np.nan  # an all-missing row
    fit = isotonic_batch(y)
    for row, got in zip(y, fit, strict=True):
        present = ~np.isnan(row)
        assert np.isnan(got[~present]).all()
        if present.any():
            np.testing.assert_allclose(got[present], isotonic_regression(row[present]).x, atol=1e-8)


def test_crossing_steps_first_step_reaching_each_threshold() -> None:
    curves = np.array([[0.0, 1.0, 2.0, 3.0], [np.nan, 5.0, 5.0, 5.0]])
    got = crossing_steps(np.array([10, 20, 30, 40]), curves, np.array([-1.0, 0.5, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(got[0], [10, 20, 30, 40, np.nan])
    np.testing.assert_array_equal(got[1], [20, 20, 20, 20, 20])
    with pytest.raises(ValueError, match="curves have 4 steps, steps has 3"):
        crossing_steps(np.array([1, 2, 3]), curves, np.array([1.0]))


# --------------------------------------------------------------------------- crossings


def test_synthetic_crossings_recovered() -> None:
    tau = 200_000.0
    levels = np.array([100, 300, 500, 700, 900, 1100], dtype=float)
    curve = Curve(_key(), STEPS, _saturating(tau))
    table = crossing_tables([curve], _thresholds(levels), n_boot=100, seed=0).crossings
    expected = -tau * np.log(1.0 - levels[:-1] / 1000.0)
    d = table["D"].to_numpy()
    assert np.all(np.abs(d[:-1] - expected) <= 3 * EVAL_EVERY), (d, expected)
    assert np.isnan(d[-1]) and table["D_boot_nan_frac"].iloc[-1] == 1.0
    assert (table["D_boot_nan_frac"].iloc[:-1] == 0.0).all()
    assert (table["D_std"].iloc[:-1] <= 3 * EVAL_EVERY).all()


def test_bootstrap_spread_grows_with_seed_noise() -> None:
    levels = np.array([500.0, 700.0])
    quiet = bootstrap_crossings(STEPS, _saturating(2e5, noise=2.0), levels, 100, rng=1)
    loud = bootstrap_crossings(STEPS, _saturating(2e5, noise=150.0), levels, 100, rng=1)
    assert quiet.shape == loud.shape == (100, 2)
    assert np.nanstd(loud, axis=0).min() > 2 * np.nanstd(quiet, axis=0).max()
    single = bootstrap_crossings(STEPS, _saturating(2e5, n_seeds=1), levels, 20, rng=1)
    assert (single == single[0]).all()  # one seed: every resample is the same curve


def test_bootstrap_is_reproducible_and_independent_of_other_configs() -> None:
    a = Curve(_key(batch_size=128), STEPS, _saturating(2e5, noise=60.0, seed=1))
    b = Curve(_key(batch_size=512), STEPS, _saturating(3e5, noise=60.0, seed=2))
    th = _thresholds([300.0, 600.0])
    both = crossing_tables([a, b], th, n_boot=50, seed=0)
    alone = crossing_tables([b], th, n_boot=50, seed=0)
    again = crossing_tables([a, b], th, n_boot=50, seed=0)
    other = crossing_tables([a, b], th, n_boot=50, seed=1)
    rows_b = both.crossings[both.crossings["batch_size"] == 512].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows_b, alone.crossings)
    pd.testing.assert_frame_equal(both.bootstrap, again.bootstrap)
    assert not np.allclose(both.crossings["D_std"], other.crossings["D_std"])


def test_crossing_table_schemas_and_errors() -> None:
    curve = Curve(_key(width=None), STEPS, _saturating(2e5))
    tables = crossing_tables([curve], _thresholds([100.0, 200.0, 300.0]), n_boot=10)
    assert list(tables.crossings.columns) == CROSSING_COLUMNS
    assert list(tables.bootstrap.columns) == BOOTSTRAP_COLUMNS
    assert len(tables.bootstrap) == 10 * 3
    assert (
        tables.crossings["width"].isna().all() and str(tables.crossings["width"].dtype) == "Int64"
    )
    with pytest.raises(ValueError, match="no thresholds for {'env': 'cheetah-run'}"):
        crossing_tables([curve], _thresholds([1.0], env="walker-run"))
    with pytest.raises(ValueError, match="two curves share the configuration"):
        crossing_tables([curve, curve], _thresholds([1.0]))


def test_crossings_on_fitted_bs(published_table) -> None:
    curves = preprocess(published_table("fitted_bs"))
    thresholds = compute_thresholds(curves)
    table = crossing_tables(curves, thresholds, n_boot=100, seed=0).crossings
    assert list(table.columns) == CROSSING_COLUMNS
    assert len(table) == len(curves) * 20
    assert table["D"].notna().mean() > 0.95
    by_config = table.groupby(["env", "utd", "critic_params", "batch_size"])
    assert table.loc[table["threshold_idx"] == 0, "D"].notna().mean() > 0.95
    # D is NaN exactly where the configuration's final isotonic return is below the threshold
    finals = pd.DataFrame([{**c.key, "final": c.isotonic()[-1]} for c in curves]).merge(
        table, on=["env", "utd", "critic_params", "batch_size"]
    )
    assert len(finals) == len(table)
    np.testing.assert_array_equal(finals["D"].isna(), finals["final"] < finals["threshold"])
    at_max = table[table["threshold_idx"] == 19]
    assert at_max["D"].notna().mean() > 0.85
    finite = table.dropna(subset=["D"])
    assert (finite["D"] % 25_000 == 0).all()
    assert (finite["D_std"].dropna() >= 0).all()
    # D is non-decreasing in the threshold within each configuration
    for _, group in by_config:
        d = group.sort_values("threshold_idx")["D"].to_numpy()
        d = np.where(np.isnan(d), 1e18, d)
        assert np.all(np.diff(d) >= 0)


# --------------------------------------------------------------------------- thresholds


def test_j_max_rule_on_synthetic_final_returns() -> None:
    curves = []
    for utd, best in zip([1, 2, 4, 8, 16], [500, 600, 700, 800, 900], strict=True):
        curves.append(_flat(_key(utd=utd, batch_size=128), best))
        curves.append(_flat(_key(utd=utd, batch_size=256), best - 50))
    table = compute_thresholds(curves)
    assert list(table.columns) == ["env", "threshold_idx", "threshold"]
    # 20th percentile of the best per (σ, N) = 580; x 0.95 = 551; floored to 550. J_min = 400.
    np.testing.assert_allclose(table["threshold"], np.linspace(400.0, 550.0, 20))
    table = compute_thresholds(
        curves, n_thresholds=5, j_min={"cheetah-run": 0}, j_max={"cheetah-run": 800}
    )
    np.testing.assert_allclose(table["threshold"], [0, 200, 400, 600, 800])


def test_j_min_fallback_for_unknown_env_and_grouping() -> None:
    finals = [300, 340, 380, 420, 460, 500, 540, 580, 620, 660]
    curves = [_flat(_key(env="toy-task", utd=i + 1), v) for i, v in enumerate(finals)]
    curves += [
        _flat(_key(env="toy-task", agent="simbav2", utd=i + 1), 2 * v) for i, v in enumerate(finals)
    ]
    pooled = compute_thresholds(curves)
    all_finals = finals + [2 * v for v in finals]
    expected_min = np.floor(np.percentile(all_finals, 10) / 10) * 10
    expected_max = (
        np.floor(0.95 * np.percentile(np.maximum(finals, [2 * v for v in finals]), 20) / 10) * 10
    )
    assert pooled["threshold"].iloc[0] == expected_min
    assert pooled["threshold"].iloc[-1] == expected_max
    split = compute_thresholds(curves, by=("env", "agent"))
    assert list(split.columns) == ["env", "agent", "threshold_idx", "threshold"]
    tops = split.groupby("agent")["threshold"].max()
    assert tops["simbav2"] > tops["bro"]


def test_an_agent_with_its_own_settings_gets_its_own_unrounded_data_rule() -> None:
    finals = [500, 600, 700, 800, 900]
    bro = [_flat(_key(utd=u), v) for u, v in zip([1, 2, 4, 8, 16], finals, strict=True)]
    simba = [
        _flat(_key(agent="simbav2", utd=u), v)
        for u, v in zip([1, 2, 4, 8, 16], [503, 613, 723, 833, 943], strict=True)
    ]
    spec = {"n": 5, "per_agent": {"simbav2": {"j_max_rule": "data", "round_to": None}}}
    table, dropped, _ = study_thresholds(bro + simba, spec, j_max={"cheetah-run": 850.0})
    assert list(table.columns) == ["env", "agent", "threshold_idx", "threshold"] and not dropped
    tops = table.groupby("agent")["threshold"].max()
    assert tops["bro"] == 850.0  # the configured (paper's) J_max
    # SimbaV2: 0.95 x 20th percentile of its own best finals (591) = 561.45, not floored to 560
    assert tops["simbav2"] == pytest.approx(0.95 * np.percentile([503, 613, 723, 833, 943], 20))
    assert tops["simbav2"] == pytest.approx(561.45)
    # explicit per-agent values come first
    spec["per_agent"]["simbav2"]["j_max"] = {"cheetah-run": 657.0002}
    table, _, _ = study_thresholds(bro + simba, spec, j_max={"cheetah-run": 850.0})
    assert table[table["agent"] == "simbav2"]["threshold"].max() == 657.0002
    # without per-agent settings both agents share the env's thresholds
    shared, _, _ = study_thresholds(bro + simba, {"n": 5}, j_max={"cheetah-run": 850.0})
    assert (shared.groupby("agent")["threshold"].max() == 850.0).all()
    with pytest.raises(ValueError, match=r"per_agent.simbav2: unknown key\(s\) \['j_min'\]"):
        study_thresholds(simba, {"per_agent": {"simbav2": {"j_min": 3}}})


def test_seeds_remaining_after_a_seed_stops_and_the_mean_skips_it() -> None:
    """A seed the engine marked diverged at step 500 has no evaluations from there on."""
    steps = np.arange(1, 9) * 100
    good = np.array([10, 20, 30, 40, 50, 60, 70, 80], dtype=float)
    stopped = np.array([-50, -40, -30, -20, np.nan, np.nan, np.nan, np.nan])
    curve = Curve(_key(), steps, np.stack([good, good, stopped], axis=1))
    table = crossing_tables([curve], _thresholds([15.0, 45.0, 75.0]), n_boot=20).crossings
    # NaN-padded mean: [-10, 0, 10, 20, 50, 60, 70, 80] -> D = 400, 500, 800
    np.testing.assert_array_equal(table["D"], [400.0, 500.0, 800.0])
    np.testing.assert_array_equal(table["seeds_remaining"], [3, 2, 2])
    assert (table["n_seeds"] == 3).all()
    never = crossing_tables([curve], _thresholds([500.0]), n_boot=5).crossings
    assert np.isnan(never["D"].iloc[0]) and never["seeds_remaining"].iloc[0] == 2


def test_j_min_not_below_j_max_is_a_clear_error() -> None:
    curves = [_flat(_key(utd=u), 300.0) for u in (1, 2, 4)]
    with pytest.raises(
        ValueError, match=r"env=cheetah-run: J_min \(400\) must be below J_max \(280\)"
    ):
        compute_thresholds(curves)
    with pytest.raises(ValueError, match="'by' must start with 'env'"):
        compute_thresholds(curves, by=("agent",))


def test_j_max_rule_reproduces_paper_table_on_dmc_ablation(published_table) -> None:
    """The paper's DMC critic sizes (1.05M..26.31M, no 0.55M): Table 2's J_max on DMC-medium."""
    df = published_table("dmc_bro_ablations")
    medium = [
        "acrobot-swingup",
        "cheetah-run",
        "finger-turn",
        "fish-swim",
        "hopper-hop",
        "quadruped-run",
        "walker-run",
    ]
    df = df[(df["critic_params"] != 550_000) & df["env"].isin(medium)]
    table = compute_thresholds(preprocess(df))
    got = table.groupby("env")["threshold"].max().to_dict()
    assert got == {env: paper_j_max()[env] for env in medium}


def test_j_max_from_fitted_bs_close_to_paper(published_table) -> None:
    table = compute_thresholds(preprocess(published_table("fitted_bs")))
    got = table.groupby("env")["threshold"].max()
    for env, value in got.items():
        assert abs(value - paper_j_max()[env]) <= 0.1 * paper_j_max()[env], (env, value)


# --------------------------------------------------------------------------- best batch size


def test_bootstrap_choices_ties_and_never_reached() -> None:
    d = np.array([[100.0, 100.0, 200.0], [np.nan, np.nan, np.nan], [300.0, 200.0, np.nan]])
    got = bootstrap_choices(d, np.array([64.0, 256.0, 1024.0]))
    np.testing.assert_allclose(got, [128.0, np.nan, 256.0])


def _batch_grid(best: float, grid=(64, 128, 256, 512, 1024), levels=(400.0, 800.0), noise=20.0):
    curves = []
    for i, b in enumerate(grid):
        tau = 1e5 * (1.0 + 0.5 * np.log2(b / best) ** 2)
        curves.append(
            Curve(_key(batch_size=b), STEPS, _saturating(tau, noise=noise, n_seeds=5, seed=i))
        )
    return crossing_tables(curves, _thresholds(list(levels)), n_boot=100, seed=0).bootstrap


def test_best_batch_size_recovers_known_minimum() -> None:
    table = best_batch_size(_batch_grid(best=256.0))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["status"] == "ok" and row["n_batch_sizes"] == 5 and row["n_boot"] == 100
    assert 200.0 <= row["B_star"] <= 330.0
    assert row["B_star_lo"] <= row["B_star"] <= row["B_star_hi"]
    assert list(table.columns)[:7] == [
        "env",
        "agent",
        "source",
        "utd",
        "critic_params",
        "width",
        "lr",
    ]


def test_best_batch_size_statuses() -> None:
    assert best_batch_size(_batch_grid(best=1024.0)).iloc[0]["status"] == "best_at_edge"
    assert (
        best_batch_size(_batch_grid(best=256.0, grid=(256, 512))).iloc[0]["status"]
        == "too_few_batch_sizes"
    )
    never = best_batch_size(_batch_grid(best=256.0, levels=(400.0, 5000.0))).iloc[0]
    assert never["status"] == "not_reached" and np.isnan(never["B_star"]) and never["n_boot"] == 0
    two = _batch_grid(best=256.0, grid=(256, 512))
    assert best_batch_size(two, min_batch_sizes=2).iloc[0]["status"] in {"ok", "best_at_edge"}
    # an explicit lower threshold is reached
    assert (
        best_batch_size(_batch_grid(best=256.0, levels=(400.0, 5000.0)), threshold_idx=0).iloc[0][
            "status"
        ]
        == "ok"
    )


def test_best_batch_size_refuses_duplicate_configurations() -> None:
    boot = _batch_grid(best=256.0)
    with pytest.raises(ValueError, match="several configurations per batch_size value"):
        best_batch_size(pd.concat([boot, boot]))


def test_best_learning_rate_recovers_known_minimum() -> None:
    curves = []
    for i, lr in enumerate([3e-5, 1e-4, 3e-4, 1e-3, 3e-3]):
        tau = 1e5 * (1.0 + 0.5 * np.log(lr / 3e-4) ** 2)
        curves.append(Curve(_key(lr=lr), STEPS, _saturating(tau, noise=20.0, n_seeds=5, seed=i)))
    boot = crossing_tables(curves, _thresholds([400.0, 800.0]), n_boot=100).bootstrap
    row = best_learning_rate(boot).iloc[0]
    assert row["status"] == "ok" and row["n_learning_rates"] == 5
    assert 2e-4 <= row["lr_star"] <= 4.5e-4
    assert best_batch_size(boot)["status"].eq("too_few_batch_sizes").all()


def test_best_batch_size_on_simbav2(published_table) -> None:
    curves = preprocess(published_table("simbav2_model_scaling_linear20_with_base"))
    boot = crossing_tables(curves, compute_thresholds(curves), n_boot=100).bootstrap
    table = best_batch_size(boot)
    assert len(table) == 2 * 4 * 5  # env x utd x width
    assert (table["n_batch_sizes"] == 4).all()
    assert set(table["status"]) <= {"ok", "best_at_edge", "not_reached"}
    assert (table["status"] == "ok").sum() >= 10
    ok = table.dropna(subset=["B_star"])
    assert ok["B_star"].between(256 * (1 - 1e-9), 2048 * (1 + 1e-9)).all()
    # (B* is a geometric mean: a skewed bootstrap can put it outside the 5-95 % band)
    assert (ok["B_star_lo"] <= ok["B_star_hi"]).all()
