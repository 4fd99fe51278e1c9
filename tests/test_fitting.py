"""Tests of the generic positive-law fitter, the batch-size law and the learning-rate rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from valuescale.analysis.batch_size_fit import (
    BatchSizeProblem,
    LearningRateProblem,
    fit_batch_size_law,
    fit_batch_size_table,
    fit_learning_rate_law,
    fit_learning_rate_table,
    predict_batch_size,
    predict_learning_rate,
    usable_batch_rows,
)
from valuescale.analysis.data_efficiency import DataEfficiencyProblem, fit_data_efficiency
from valuescale.analysis.fitting import (
    FitResult,
    LogRescale,
    ScaledProblem,
    fit_loglinear,
    fit_scaled,
    predict_loglinear,
    unscale_power_term,
)

UTD_GRID = np.array([1.0, 2.0, 4.0, 8.0])
PARAMS_GRID = np.array([5e5, 2e6, 8e6, 3.2e7])
TRUE_B = {"a_B": 2000.0, "alpha_B": 0.4, "b_B": 3e3, "beta_B": 0.6}


def grid(utd: np.ndarray, critic_params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u, n = np.meshgrid(utd, critic_params, indexing="ij")
    return u.ravel(), n.ravel()


def test_log_rescale_maps_data_range_to_half_and_two() -> None:
    x = np.array([3.0, 30.0, 300.0, np.nan, -1.0])
    rescale = LogRescale.from_values(x)
    scaled = np.exp(rescale.log_apply(np.array([3.0, 30.0, 300.0])))
    np.testing.assert_allclose(scaled, [0.5, 1.0, 2.0])


def test_unscale_power_term_gives_the_same_term_in_original_units() -> None:
    x = np.array([1.0, 2.0, 8.0])
    rescale = LogRescale.from_values(x)
    x_scaled = np.exp(rescale.log_apply(x))
    a_s, alpha_s, log_s = 0.7, 1.3, np.log(1234.0)
    a, alpha = unscale_power_term(np.array(a_s), np.array(alpha_s), rescale, log_s)
    np.testing.assert_allclose((a / x) ** alpha, np.exp(log_s) * (a_s / x_scaled) ** alpha_s)


@pytest.mark.parametrize("kind", ["de", "shared", "batch", "lr"])
def test_analytic_jacobian_matches_finite_differences(kind: str) -> None:
    rng = np.random.default_rng(0)
    u, n = grid(UTD_GRID, PARAMS_GRID)
    y = rng.uniform(1e5, 1e6, u.size)
    if kind == "de":
        problem = DataEfficiencyProblem(u, n, y)
    elif kind == "shared":
        problem = DataEfficiencyProblem(u, n, y, group=np.arange(u.size) % 3)
    elif kind == "batch":
        problem = BatchSizeProblem(u, n, y)
    else:
        problem = LearningRateProblem(u, y)
    theta = problem.starts(rng, 3)
    _, jac = problem.log_predict(theta)
    eps = 1e-6
    for p in range(problem.n_params):
        plus, minus = theta.copy(), theta.copy()
        plus[:, p] += eps
        minus[:, p] -= eps
        numeric = (problem.log_predict(plus)[0] - problem.log_predict(minus)[0]) / (2 * eps)
        np.testing.assert_allclose(jac[:, :, p], numeric, rtol=1e-5, atol=1e-7)


def test_degenerate_inputs_return_status_and_reason_not_exceptions() -> None:
    two = fit_data_efficiency(np.array([1.0, 2.0]), np.array([1e6, 2e6]), np.array([3e5, 2e5]))
    assert two.status == "failed" and "2 usable points" in two.reason
    assert np.isnan(two.params["alpha_J"])

    u, n = grid(UTD_GRID, PARAMS_GRID)
    all_nan = fit_data_efficiency(u, n, np.full(u.size, np.nan))
    assert all_nan.status == "failed" and all_nan.reason

    constant = fit_data_efficiency(u, n, np.full(u.size, 2e5))
    assert constant.status == "degenerate" and "constant" in constant.reason

    single_utd = fit_data_efficiency(np.full(u.size, 2.0), n, np.linspace(1e5, 4e5, u.size))
    assert single_utd.status == "degenerate" and "utd" in single_utd.reason

    bad_b = fit_batch_size_law(u, n, np.full(u.size, np.nan))
    assert bad_b.status == "failed" and bad_b.reason


def test_fit_result_row_has_ci_columns() -> None:
    result = FitResult({"a": 1.0}, 0.1, "ok", "", 5, {"a": 0.5}, {"a": 2.0})
    row = result.row()
    assert (row["a"], row["a_lo"], row["a_hi"], row["n_points"]) == (1.0, 0.5, 2.0, 5)


def test_loglinear_recovers_exact_coefficients_and_flags_collinearity() -> None:
    u, n = grid(UTD_GRID, PARAMS_GRID)
    y = np.exp(3.0) * u**-0.5 * n**0.25
    fit = fit_loglinear({"utd": u, "critic_params": n}, y)
    assert fit.status == "ok"
    assert fit.params["log_intercept"] == pytest.approx(3.0)
    assert fit.params["slope_utd"] == pytest.approx(-0.5)
    assert fit.params["slope_critic_params"] == pytest.approx(0.25)
    np.testing.assert_allclose(predict_loglinear(fit.params, {"utd": u, "critic_params": n}), y)
    collinear = fit_loglinear({"utd": u, "critic_params": u * 10}, y)
    assert collinear.status == "degenerate"


def test_batch_size_law_is_recovered_with_ci() -> None:
    rng = np.random.default_rng(1)
    u, n = grid(UTD_GRID, PARAMS_GRID)
    truth = predict_batch_size(TRUE_B, u, n)
    B = truth * np.exp(rng.normal(0, 0.03, u.size))
    boot = B * np.exp(rng.normal(0, 0.03, (100, u.size)))
    fit = fit_batch_size_law(u, n, B, boot)
    assert fit.status == "ok", fit.reason
    assert fit.params["alpha_B"] == pytest.approx(TRUE_B["alpha_B"], rel=0.15)
    assert fit.params["beta_B"] == pytest.approx(TRUE_B["beta_B"], rel=0.3)
    np.testing.assert_allclose(predict_batch_size(fit.params, u, n), truth, rtol=0.05)
    assert fit.n_boot_ok >= 90
    assert fit.lo["alpha_B"] < fit.params["alpha_B"] < fit.hi["alpha_B"]


def test_batch_size_table_beats_loglinear_on_eq61_data() -> None:
    rng = np.random.default_rng(2)
    rows = []
    for env in ("h1-crawl-v0", "h1-pole-v0", "cheetah-run"):
        for u in UTD_GRID:
            for n in PARAMS_GRID:
                B = predict_batch_size(TRUE_B, u, n) * np.exp(rng.normal(0, 0.03))
                rows.append(
                    {
                        "env": env,
                        "agent": "bro",
                        "utd": u,
                        "critic_params": n,
                        "width": np.nan,
                        "B_star": B,
                        "B_star_lo": B / 1.1,
                        "B_star_hi": B * 1.1,
                        "n_batch_sizes": 5,
                        "status": "ok",
                    }
                )
    # Unusable rows (too few batch sizes; optimum not reached) must be ignored, and edge rows
    # are dropped while enough interior rows remain.
    rows.append({**rows[0], "B_star": 1e6, "n_batch_sizes": 2})
    rows.append({**rows[0], "B_star": 1e6, "status": "not_reached"})
    rows.append({**rows[0], "B_star": 1e6, "status": "best_at_edge"})
    table = fit_batch_size_table(pd.DataFrame(rows), n_boot=20)
    assert set(table["scope"]) == {
        "h1-crawl-v0",
        "h1-pole-v0",
        "cheetah-run",
        "humanoidbench",
        "all",
    }
    assert (table["status"] == "ok").all()
    assert (table["rel_error"] < table["loglinear_rel_error"]).all()
    assert (table["rel_error"] < 0.06).all()
    assert {"a_B_lo", "alpha_B_hi", "log_intercept"} <= set(table.columns)
    assert (table["n_at_edge"] == 0).all()
    assert len(usable_batch_rows(pd.DataFrame(rows))) == len(rows) - 2
    # With too few interior rows, edge rows are used and counted.
    few = pd.DataFrame(rows[:16]).assign(status="best_at_edge")
    few.loc[:2, "status"] = "ok"
    edge_fit = fit_batch_size_table(few, n_boot=0)
    assert edge_fit.loc[0, "n_at_edge"] == 13 and edge_fit.loc[0, "n_points"] == 16


def test_learning_rate_rules() -> None:
    utd = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    lr = (2e-3 / utd) ** 0.4
    fit = fit_learning_rate_law(utd, lr)
    assert fit.status == "ok", fit.reason
    assert fit.params["alpha_eta"] == pytest.approx(0.4, rel=1e-3)
    np.testing.assert_allclose(predict_learning_rate(fit.params, utd), lr, rtol=1e-3)

    best_lr = pd.DataFrame(
        {
            "env": "cheetah-run",
            "agent": "bro",
            "utd": np.repeat(utd, 2),
            "critic_params": np.tile([1e6, 4e6], utd.size),
            "batch_size": 256,
            "lr_star": np.repeat(3e-4 / utd**0.5, 2),
            "status": "ok",
        }
    )
    best_lr.loc[0, ["lr_star", "status"]] = (1.0, "too_few_learning_rates")  # ignored
    table = fit_learning_rate_table(best_lr)
    power = table[table["law"] == "power_utd"].iloc[0]
    assert power["alpha_eta"] == pytest.approx(0.5, rel=1e-3)
    loglin = table[table["law"] == "loglinear"].iloc[0]
    # log B is constant here: the log-linear design is rank deficient but still predicts.
    assert loglin["slope_utd"] == pytest.approx(-0.5, abs=1e-6)


class PowerProblem(ScaledProblem):
    """y = c x^-k in rescaled units: a minimal law through the generic fitter."""

    names = ("c", "k")
    exponents = (1,)

    def __init__(self, x: np.ndarray, y: np.ndarray, overflow: bool = False) -> None:
        self.rescale = LogRescale.from_values(x)
        self.log_x = self.rescale.log_apply(x)
        self.log_scale = float(np.log(np.mean(y)))
        self.log_y_offset = np.full(len(y), self.log_scale)
        self.overflow = overflow

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, k = theta[:, :1], theta[:, 1:2]
        jac = np.stack(
            [np.broadcast_to(1 / c, (len(theta), self.log_x.size)), -self.log_x + 0 * k], -1
        )
        return np.log(c) - k * self.log_x, jac

    def starts(self, rng: np.random.Generator, n_starts: int) -> np.ndarray:
        return np.exp(rng.uniform(-1, 1, (n_starts, 2)))

    def unscale(self, theta: np.ndarray) -> np.ndarray:
        c = np.exp(self.log_scale + np.log(theta[:, 0]) - theta[:, 1] * self.rescale.log_c)
        if self.overflow:
            c = c * np.inf
        return np.column_stack([c, self.rescale.p * theta[:, 1]])


def test_generic_fitter_on_a_custom_law_and_overflow_guard() -> None:
    x = np.geomspace(1.0, 100.0, 12)
    y = 5.0 * x**-0.7 * np.exp(np.random.default_rng(0).normal(0, 0.01, x.size))
    fit = fit_scaled(
        PowerProblem(x, y), y, y * np.exp(np.random.default_rng(1).normal(0, 0.01, (50, x.size)))
    )
    assert fit.status == "ok" and fit.n_boot_ok == 50
    assert fit.params["k"] == pytest.approx(0.7, rel=0.02)
    assert fit.params["c"] == pytest.approx(5.0, rel=0.05)
    assert fit.lo["k"] < 0.7 < fit.hi["k"]
    bad = fit_scaled(PowerProblem(x, y, overflow=True), y)
    assert bad.status == "degenerate" and "overflow" in bad.reason
