"""Tests of compute-optimal and budget-optimal allocation on known laws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from valuescale.analysis.allocation import (
    DEFAULT_K,
    ComputeModel,
    budget_fit_table,
    budget_optimal,
    budget_optimal_numeric,
    budget_optimal_table,
    compute_optimal,
    compute_optimal_line,
    compute_optimal_table,
    compute_to_threshold,
    delta_for,
    params_from_width,
    propose_allocation,
    propose_from_budget_lines,
    width_from_params,
)
from valuescale.analysis.data_efficiency import predict_D

LAW = {"D_min": 1e5, "a_J": 7e6, "alpha_J": 0.8, "b_J": 7e14, "beta_J": 0.6}
DELTA = 1e11


def brute_force_compute_optimum(law: dict[str, float], D0: float) -> tuple[float, float]:
    """Grid over σ; N solves D(σ, N) = D0 exactly; return the (σ, N) of least σN."""
    utd = np.geomspace(1e-2, 1e3, 400_001)
    rest = D0 - law["D_min"] - (law["a_J"] / utd) ** law["alpha_J"]
    ok = rest > 0
    n = law["b_J"] / rest[ok] ** (1 / law["beta_J"])
    i = int(np.argmin(utd[ok] * n))
    return float(utd[ok][i]), float(n[i])


@pytest.mark.parametrize("D0", [1.5e5, 3e5, 1e6])
def test_closed_form_compute_optimum_matches_brute_force(D0: float) -> None:
    utd, n = compute_optimal(LAW, D0)
    assert predict_D(LAW, utd, n) == pytest.approx(D0, rel=1e-12)
    utd_bf, n_bf = brute_force_compute_optimum(LAW, D0)
    assert utd == pytest.approx(utd_bf, rel=1e-3)
    assert n == pytest.approx(n_bf, rel=1e-3)
    # Lagrange condition alpha (a/σ)^alpha = beta (b/N)^beta
    lhs = LAW["alpha_J"] * (LAW["a_J"] / utd) ** LAW["alpha_J"]
    rhs = LAW["beta_J"] * (LAW["b_J"] / n) ** LAW["beta_J"]
    assert lhs == pytest.approx(rhs, rel=1e-10)


def test_compute_optimal_line_and_infeasible_targets() -> None:
    targets = np.geomspace(1.2e5, 1e7, 7)
    utd, n = compute_optimal(LAW, targets)
    slope, intercept = compute_optimal_line(LAW)
    assert slope == pytest.approx(LAW["alpha_J"] / LAW["beta_J"])
    np.testing.assert_allclose(np.log10(n), intercept + slope * np.log10(utd), rtol=1e-12)
    utd, n = compute_optimal(LAW, np.array([5e4, 1e5]))
    assert np.isnan(utd).all() and np.isnan(n).all()


def test_compute_conventions() -> None:
    assert DEFAULT_K == 2560
    assert compute_to_threshold(2, 1e6, 1e5) == pytest.approx(2560 * 2 * 1e6 * 1e5)
    real = ComputeModel(batch_convention="real")
    assert compute_to_threshold(2, 1e6, 1e5, model=real, batch_size=512) == pytest.approx(
        10 * 512 * 2 * 1e6 * 1e5
    )
    with pytest.raises(ValueError, match="batch size"):
        compute_to_threshold(2, 1e6, 1e5, model=real)
    with pytest.raises(ValueError, match="batch_convention"):
        ComputeModel(batch_convention="fake")


@pytest.mark.parametrize("delta", [1e9, 1e11, 2e12])
def test_budget_optimum_matches_grid_search(delta: float) -> None:
    exact = budget_optimal(LAW, delta)
    numeric = budget_optimal_numeric(LAW, delta)
    assert exact.status == "ok" and numeric.status == "ok"
    assert exact.budget == pytest.approx(numeric.budget, rel=1e-8)
    assert exact.utd == pytest.approx(numeric.utd, rel=1e-3)
    assert exact.critic_params == pytest.approx(numeric.critic_params, rel=1e-3)
    assert exact.budget == pytest.approx(exact.compute + delta * exact.D, rel=1e-12)
    assert exact.compute == pytest.approx(
        DEFAULT_K * exact.utd * exact.critic_params * exact.D, rel=1e-12
    )


def test_budget_optimum_with_real_batch_law_is_found_numerically() -> None:
    # C = 10 B(σ, N) σ N D with B shrinking in σ: the optimum moves to a larger σ than with k.
    def coefficient(utd: np.ndarray, n: np.ndarray) -> np.ndarray:
        return 10 * 512 / np.asarray(utd) ** 0.5

    accounting = budget_optimal_numeric(LAW, DELTA, compute_coefficient=10 * 512)
    real = budget_optimal_numeric(LAW, DELTA, compute_coefficient=coefficient)
    assert accounting.status == real.status == "ok"
    assert real.utd > accounting.utd
    assert real.budget < accounting.budget


def theory_laws(n: int = 20) -> list[dict[str, float]]:
    """D_min = 0, alpha = 0.5, beta = 1, a and b growing with the threshold."""
    return [
        {"D_min": 0.0, "a_J": 2.0 * s, "alpha_J": 0.5, "b_J": 1e6 * s, "beta_J": 1.0}
        for s in np.geomspace(1.0, 30.0, n)
    ]


def fits_frame(laws: list[dict[str, float]], scope: str = "cheetah-run") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "scope": scope,
                "agent": "bro",
                "variant": "per_env",
                "threshold_idx": i,
                "threshold": 10.0 * i,
                "status": "ok",
                **law,
            }
            for i, law in enumerate(laws)
        ]
    )


def test_budget_lines_match_theory_slopes() -> None:
    # With D_min = 0, D* ∝ F, C* ∝ F, σ* ∝ F^((1/β - 1/α)/2), N* ∝ F^((1/α - 1/β)/2).
    points = budget_optimal_table(fits_frame(theory_laws()), delta={"cheetah-run": DELTA})
    assert len(points) == 20 and (points["status"] == "ok").all()
    lines = budget_fit_table(points).set_index("quantity")
    expected = {"D": 1.0, "C": 1.0, "sigma": -0.5, "N": 0.5}
    for quantity, slope in expected.items():
        assert lines.loc[quantity, "slope"] == pytest.approx(slope, abs=1e-6)
        assert lines.loc[quantity, "r2"] == pytest.approx(1.0, abs=1e-9)
        assert lines.loc[quantity, "r2_heldout"] == pytest.approx(1.0, abs=1e-9)
    assert (lines["n_fit"] == 15).all() and (lines["n_heldout"] == 5).all()

    # Extrapolating the lines to a larger budget agrees with the exact optimum of the law
    # that has that budget as its F*.
    far = theory_laws(25)[-1]
    optimum = budget_optimal(far, DELTA)
    proposed = propose_from_budget_lines(lines.reset_index(), [optimum.budget], DELTA).iloc[0]
    assert proposed["utd"] == pytest.approx(optimum.utd, rel=1e-6)
    assert proposed["critic_params"] == pytest.approx(optimum.critic_params, rel=1e-6)
    assert proposed["D"] == pytest.approx(optimum.D, rel=1e-6)


def test_budget_lines_fit_well_with_positive_d_min() -> None:
    laws = [
        {"D_min": 3e4 * s, "a_J": 7e6 * s, "alpha_J": 0.8, "b_J": 7e14 * s, "beta_J": 0.6}
        for s in np.geomspace(1.0, 10.0, 20)
    ]
    points = budget_optimal_table(fits_frame(laws))
    assert (points["delta"] == 1e11).all()  # cheetah-run's delta from the task table
    lines = budget_fit_table(points)
    assert (lines["status"] == "ok").all()
    assert (lines["r2"] > 0.99).all()
    d_line = lines[lines["quantity"] == "D"].iloc[0]
    assert 0 < d_line["slope"] < 1.5


def test_propose_allocation_spends_the_budget_for_least_data() -> None:
    optimum = budget_optimal(LAW, DELTA)
    budgets = optimum.budget * np.array([0.5, 1.0, 2.0, 10.0])
    proposal = propose_allocation(LAW, budgets, DELTA)
    assert proposal.loc[0, "status"] == "infeasible" and np.isnan(proposal.loc[0, "D"])
    assert proposal.loc[1, "D"] == pytest.approx(optimum.D, rel=1e-9)
    assert (np.diff(proposal["D"].iloc[1:]) < 0).all()  # more budget, less data
    feasible = proposal.iloc[1:]
    spent = DEFAULT_K * feasible["utd"] * feasible["critic_params"] * feasible["D"]
    spent += DELTA * feasible["D"]
    np.testing.assert_allclose(spent, feasible["budget"], rtol=1e-9)
    # Brute force: among grid points within budget 2 F*, none needs less data.
    u, n = np.meshgrid(np.geomspace(0.1, 1e3, 600), np.geomspace(1e5, 1e11, 600))
    D = predict_D(LAW, u, n)
    within = DEFAULT_K * u * n * D + DELTA * D <= budgets[2]
    assert D[within].min() >= proposal.loc[2, "D"] * (1 - 1e-9)
    assert D[within].min() == pytest.approx(proposal.loc[2, "D"], rel=1e-2)


def test_failed_laws_give_statuses_not_exceptions() -> None:
    bad = budget_optimal({**LAW, "alpha_J": np.nan}, DELTA)
    assert bad.status == "failed" and bad.reason
    flat = budget_optimal({**LAW, "D_min": 0.0, "alpha_J": 2.0, "beta_J": 2.0}, DELTA)
    assert flat.status == "degenerate" and "interior" in flat.reason
    fits = fits_frame([LAW, {**LAW, "alpha_J": np.nan}])
    fits.loc[1, "status"] = "failed"
    assert len(budget_optimal_table(fits)) == 1
    lines = budget_fit_table(budget_optimal_table(fits))
    assert (lines["status"] == "failed").all() and lines["reason"].str.contains("need").all()


def test_compute_optimal_table_columns() -> None:
    fits = fits_frame([LAW]).assign(D_obs_min=1.5e5, D_obs_max=2e6)
    table = compute_optimal_table(fits, n_targets=4)
    assert len(table) == 4 and (table["status"] == "ok").all()
    for col in ("D_target", "utd_star", "critic_params_star", "compute_star", "line_slope"):
        assert col in table
    np.testing.assert_allclose(
        table["compute_star"],
        DEFAULT_K * table["utd_star"] * table["critic_params_star"] * table["D_target"],
    )
    assert table["D_target"].min() == pytest.approx(1.5e5)


def test_delta_lookup() -> None:
    assert delta_for("h1-crawl-v0") == 2e12
    assert delta_for("humanoidbench") == 5e11  # median of the suite
    assert delta_for("unknown-env") == 1e11
    assert delta_for("cheetah-run", {"cheetah-run": 7.0}) == 7.0


def test_width_from_params_round_trips() -> None:
    assert params_from_width(512, 70) == 2_286_792
    widths = np.array([128.0, 256.0, 1000.0, 4096.0])
    for d_in in (7, 70, 250):
        for depth in (1, 2, 3):
            n = params_from_width(widths, d_in, depth)
            np.testing.assert_allclose(width_from_params(n, d_in, depth), widths, rtol=1e-12)


def test_degenerate_fits_are_skipped_with_their_reason() -> None:
    fits = fits_frame([LAW, LAW]).assign(reason="", D_obs_min=1.5e5, D_obs_max=2e6)
    fits.loc[1, ["status", "reason"]] = ["degenerate", "alpha_J = 0.03 collapsed"]
    for table in (budget_optimal_table(fits), compute_optimal_table(fits, n_targets=3)):
        skipped = table[table["threshold_idx"] == 1]
        assert len(skipped) == 1 and skipped["status"].iloc[0] == "skipped"
        assert skipped["reason"].iloc[0] == "degenerate fit: alpha_J = 0.03 collapsed"
        assert (table.loc[table["threshold_idx"] == 0, "status"] == "ok").all()
    # the skipped row is no budget-optimal point of the lines
    lines = budget_fit_table(budget_optimal_table(fits))
    assert (lines["n_fit"] + lines["n_heldout"] <= 1).all()
    # every fit degenerate (a tiny study): skipped rows only, with every column, and no line
    fits["status"] = "degenerate"
    for table in (budget_optimal_table(fits), compute_optimal_table(fits, n_targets=3)):
        assert (table["status"] == "skipped").all() and len(table) == 2
        assert {"budget", "utd_star"} & set(table.columns)
    only_skipped = budget_optimal_table(fits)
    assert only_skipped["budget"].isna().all()
    lines = budget_fit_table(only_skipped)
    assert (lines["n_fit"] + lines["n_heldout"] <= 0).all()


def zigzag_laws(n: int = 20) -> list[dict[str, float]]:
    """Laws whose σ exponent alternates between thresholds: σ* zigzags along F."""
    laws = []
    for i, s in enumerate(np.geomspace(1.0, 10.0, n)):
        alpha = 0.5 if i % 2 else 1.2
        laws.append(
            {"D_min": 3e4 * s, "a_J": 2.0 * s, "alpha_J": alpha, "b_J": 7e14 * s, "beta_J": 0.6}
        )
    for law in laws:  # σ term of 1e5 x s at σ = 1, whatever the exponent
        law["a_J"] = (1e5 * law["D_min"] / 3e4) ** (1 / law["alpha_J"])
    return laws


def test_budget_lines_derive_sigma_and_n_from_the_laws() -> None:
    fits = fits_frame(zigzag_laws())
    points = budget_optimal_table(fits)
    lines = budget_fit_table(points, fits=fits).set_index("quantity")
    assert lines.loc["D", "method"] == "line" and lines.loc["D", "r2"] > 0.99
    assert (lines.loc[["sigma", "N"], "method"] == "derived").all()
    assert np.isfinite(lines.loc[["sigma", "N"], ["r2", "r2_direct"]].to_numpy(float)).all()
    # the laws carry σ*'s zigzag (R² 0.87 here, the misfit of the D* line); a line in log F
    # cannot (0.41)
    sigma = lines.loc["sigma"]
    assert sigma["r2"] > 0.8 and sigma["r2_direct"] < sigma["r2"] - 0.3
    # without the laws, σ and N fall back to the direct regression
    direct = budget_fit_table(points).set_index("quantity")
    assert direct.loc["sigma", "method"] == "direct"
    assert direct.loc["sigma", "r2"] == pytest.approx(lines.loc["sigma", "r2_direct"])
    # a proposal at the top budget derives σ, N from the given law at the D* line
    top = fits.iloc[-1][list(LAW)].astype(float).to_dict()
    budget = float(points["budget"].max())
    proposed = propose_from_budget_lines(lines.reset_index(), [budget], law=top).iloc[0]
    d_line = 10 ** (lines.loc["D", "intercept"] + lines.loc["D", "slope"] * np.log10(budget))
    utd, n = compute_optimal(top, d_line)
    assert proposed["utd"] == pytest.approx(float(utd)) and proposed["D"] == pytest.approx(d_line)
    assert proposed["critic_params"] == pytest.approx(float(n))
