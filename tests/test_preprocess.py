"""Per-configuration preprocessing: pivot, truncation, reset-dip removal, isotonic regression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import isotonic_regression

from valuescale.analysis.ingest import coerce_table
from valuescale.analysis.preprocess import (
    CONFIG_KEYS,
    config_curves,
    curves_table,
    isotonic,
    preprocess,
    remove_reset_dips,
    remove_reset_dips_authors,
    seed_mean,
)


def _long(
    values: dict[int, dict[int, float]],
    utd: float = 1.0,
    batch_size: int = 256,
    agent: str = "bro",
    passive_width: int | None = None,
) -> pd.DataFrame:
    """Long table of one configuration from {seed: {step: return}}."""
    rows = [
        {
            "env": "cheetah-run",
            "agent": agent,
            "utd": utd,
            "width": 64,
            "critic_params": 30_000,
            "batch_size": batch_size,
            "lr": 3e-4,
            "seed": seed,
            "step": step,
            "metric": "return",
            "value": value,
            "source": "own",
            "passive_width": passive_width,
        }
        for seed, curve in values.items()
        for step, value in curve.items()
    ]
    return pd.DataFrame(rows)


def test_config_curves_pivots_steps_by_seeds() -> None:
    df = pd.concat(
        [
            _long({0: {10: 1.0, 20: 2.0, 30: 3.0}, 1: {10: 5.0, 30: 7.0}}),
            _long({0: {10: 9.0}}, batch_size=512),
        ]
    )
    loss = _long({0: {10: 99.0}}).assign(metric="critic_loss")
    got = list(config_curves(coerce_table(pd.concat([df, loss]))))
    assert [key["batch_size"] for key, _, _ in got] == [256, 512]
    key, steps, matrix = got[0]
    assert list(key) == CONFIG_KEYS and key["width"] == 64 and key["source"] == "own"
    np.testing.assert_array_equal(steps, [10, 20, 30])
    np.testing.assert_array_equal(matrix, [[1.0, 5.0], [2.0, np.nan], [3.0, 7.0]])
    np.testing.assert_allclose(seed_mean(matrix), [3.0, 2.0, 5.0])


def test_runs_differing_only_outside_the_key_are_pooled_as_seeds() -> None:
    df = pd.concat(
        [
            _long({0: {10: 1.0}, 1: {10: 2.0}}, passive_width=512),
            _long({0: {10: 3.0}, 1: {10: 4.0}}, passive_width=1024),
        ]
    )
    (key, steps, matrix), *rest = list(config_curves(coerce_table(df)))
    assert rest == []
    assert matrix.shape == (1, 4)
    np.testing.assert_array_equal(np.sort(matrix[0]), [1.0, 2.0, 3.0, 4.0])


def test_two_values_at_one_step_is_an_error() -> None:
    df = pd.concat([_long({0: {10: 1.0}}), _long({0: {10: 2.0}})])
    with pytest.raises(ValueError, match="two 'return' values at one step"):
        list(config_curves(df))


def test_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match=r"missing column\(s\) \['lr'\]"):
        list(config_curves(_long({0: {10: 1.0}}).drop(columns=["lr"])))


def test_isotonic_matches_scipy_and_is_monotone() -> None:
    rng = np.random.default_rng(3)
    y = np.cumsum(rng.normal(size=80)) + rng.normal(scale=3.0, size=80)
    fit = isotonic(y)
    assert np.all(np.diff(fit) >= 0)
    np.testing.assert_allclose(fit, isotonic_regression(y).x)
    # least squares: no better monotone fit among small perturbations of the blocks
    assert np.sum((fit - y) ** 2) <= np.sum((np.maximum.accumulate(y) - y) ** 2)
    with pytest.raises(ValueError, match="NaN"):
        isotonic(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        isotonic(np.ones((2, 2)))


def test_remove_reset_dips_on_a_crafted_curve() -> None:
    steps = np.arange(1, 13) * 100  # 100 .. 1200
    mean = np.array([10, 20, 30, 40, 5, 15, 45, 50, 60, 2, 3, 4], dtype=float)
    # resets every 400 steps: at 400 (eval at 400 counts as before it), 800, 1200
    keep = remove_reset_dips(steps, mean, reset_every=400.0)
    # after 400: level 40 -> drop 500 (5), 600 (15); 700 (45) recovers
    # after 800: level 50 (step 800) -> 900 (60) recovers at once
    # the dip at 1000.. belongs to no reset listed before it -> kept
    np.testing.assert_array_equal(keep, [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1])
    keep = remove_reset_dips(steps, mean, reset_every=900.0)
    # reset at 900: level 60 -> never recovers: everything after is dropped
    np.testing.assert_array_equal(keep, [1] * 9 + [0, 0, 0])
    assert remove_reset_dips(steps, mean, None).all()
    assert remove_reset_dips(steps, mean, np.inf).all()
    assert remove_reset_dips(steps, mean, 5000.0).all()
    with pytest.raises(ValueError, match="reset_every must be positive"):
        remove_reset_dips(steps, mean, -1.0)


def test_reset_level_is_the_last_kept_point_before_each_reset() -> None:
    steps = np.array([100, 200, 300, 400, 500, 600])
    mean = np.array([50, 60, 10, 20, 55, 70], dtype=float)
    # resets at 250 and 450: after 250 drop until >= 60; the reset at 450 sees the same level
    keep = remove_reset_dips(steps, mean, reset_every=250.0)
    np.testing.assert_array_equal(keep, [1, 1, 0, 0, 0, 1])


def test_authors_reset_rule_places_an_on_step_evaluation_after_the_reset_when_it_dips() -> None:
    steps = np.arange(1, 9) * 100
    mean = np.array([10, 20, 30, 2, 8, 25, 35, 40], dtype=float)
    # reset at 400, whose evaluation already shows the dip. Before: drop 2 - 8 = -6; after:
    # drop 30 - 2 = 28 -> after; level 30 (the evaluation at 300): keep from 35 on.
    np.testing.assert_array_equal(
        remove_reset_dips_authors(steps, mean, 400.0), [1, 1, 1, 0, 0, 0, 1, 1]
    )
    # ours counts the on-step evaluation as before the reset: level 2, nothing dropped
    assert remove_reset_dips(steps, mean, 400.0).all()


def test_authors_reset_rule_levels_are_raw_and_a_dead_segment_is_dropped_whole() -> None:
    steps = np.arange(1, 13) * 100
    mean = np.array([10, 20, 30, 50, 5, 10, 20, 25, 40, 45, 55, 60], dtype=float)
    # resets at 400, 800, 1200. Before (50-5) + (25-40) = 30 beats after (30-50) + (20-25) +
    # (55-60) = -30; the reset at 1200 has no evaluation after it. Segment 500..800 never reaches
    # 50: dropped whole; segment 900.. starts afresh with the raw level 25 (evaluation at 800).
    np.testing.assert_array_equal(
        remove_reset_dips_authors(steps, mean, 400.0), [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    )
    # ours keeps dropping until the kept level 50 is reached, across the reset at 800
    np.testing.assert_array_equal(
        remove_reset_dips(steps, mean, 400.0), [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    )
    assert remove_reset_dips_authors(steps, mean, None).all()
    assert remove_reset_dips_authors(steps, mean, 5000.0).all()
    with pytest.raises(ValueError, match="reset_every must be positive"):
        remove_reset_dips_authors(steps, mean, 0.0)


def test_authors_reset_rule_truncates_the_reset_step() -> None:
    # 2.5M / 3 gradient steps: the authors reset at int(833,333.3) = 833,333, where an evaluation
    # lies; it shows the dip, so it counts as after the reset (level 50 at 833,000)
    steps = np.array([833_000, 833_333, 834_000, 835_000])
    mean = np.array([50.0, 5.0, 20.0, 60.0])
    np.testing.assert_array_equal(remove_reset_dips_authors(steps, mean, 2.5e6 / 3), [1, 0, 0, 1])
    # ours resets at 833,333.3: the evaluation at 833,333 is before it and sets the level (5)
    assert remove_reset_dips(steps, mean, 2.5e6 / 3).all()


def test_preprocess_reset_rule_is_chosen_by_name() -> None:
    curve = dict(zip(range(100, 900, 100), [10, 20, 30, 2, 8, 25, 35, 40], strict=True))
    df = coerce_table(_long({0: curve}, utd=4.0))  # resets every 1600 / 4 = 400 env steps
    (ours,) = preprocess(df, reset_interval={"bro": 1600.0})
    (theirs,) = preprocess(df, reset_interval={"bro": 1600.0}, reset_rule="authors")
    assert len(ours.steps) == 8
    np.testing.assert_array_equal(theirs.steps, [100, 200, 300, 700, 800])
    with pytest.raises(ValueError, match="unknown reset-dip rule 'mine'"):
        preprocess(df, reset_rule="mine")


def test_preprocess_truncates_and_removes_dips_by_agent() -> None:
    curve = {
        s: v
        for s, v in zip(
            range(100, 1300, 100), [10, 20, 30, 40, 5, 15, 45, 50, 60, 70, 80, 90], strict=True
        )
    }
    bro = _long({0: curve, 1: curve}, utd=4.0)  # BRO resets every 1600 / 4 = 400 env steps
    simba = _long({0: curve}, utd=4.0, agent="simbav2")
    df = coerce_table(pd.concat([bro, simba]))
    by_agent = {c.key["agent"]: c for c in preprocess(df, reset_interval={"bro": 1600.0})}
    np.testing.assert_array_equal(
        by_agent["bro"].steps, [100, 200, 300, 400, 700, 800, 900, 1000, 1100, 1200]
    )
    assert len(by_agent["simbav2"].steps) == 12  # SimbaV2 never resets
    assert by_agent["bro"].returns.shape == (10, 2)
    truncated = preprocess(df, max_step={"cheetah-run": 300}, reset_interval=None)
    assert all(c.steps.max() == 300 for c in truncated)
    assert preprocess(df, max_step={"cheetah-run": 50}) == []


def test_preprocess_real_curve_drops_post_reset_evaluations(published_table) -> None:
    """fitted_bs, h1-crawl, σ = 8, W = 128, B = 32: resets every 312.5k env steps."""
    df = published_table("fitted_bs")
    df = df[(df["env"] == "h1-crawl-v0") & (df["utd"] == 8) & (df["width"] == 128)]
    (curve,) = preprocess(df)
    assert curve.key["batch_size"] == 32 and curve.n_seeds > 1
    all_steps = np.arange(1, 41) * 25_000
    dropped = sorted(set(all_steps) - set(curve.steps))
    # the first evaluations after 312.5k, 625k and 937.5k, until the mean recovers
    assert dropped[:2] == [325_000, 350_000]
    assert 650_000 in dropped and 950_000 in dropped
    assert all(any(0 < s - r <= 150_000 for r in (312_500, 625_000, 937_500)) for s in dropped)


def test_curves_table_columns_and_monotone_isotonic(published_table) -> None:
    df = published_table("utd_scaling_bl")
    curves = preprocess(df)
    table = curves_table(curves)
    assert list(table.columns) == CONFIG_KEYS + [
        "step",
        "n_seeds",
        "mean_return",
        "isotonic_return",
    ]
    assert len(table) == sum(len(c.steps) for c in curves)
    for _, group in table.groupby(CONFIG_KEYS):
        assert np.all(np.diff(group["isotonic_return"].to_numpy()) >= -1e-9)
    assert (table["n_seeds"] >= 1).all()
