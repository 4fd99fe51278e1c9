"""Tests of the data-efficiency law fits (Eq. 7.1) on synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from valuescale.analysis.data_efficiency import (
    DE_PARAMS,
    attach_bootstrap,
    attach_bootstrap_table,
    average_over_envs,
    bootstrap_matrix,
    env_medians,
    exclude_points,
    fit_data_efficiency,
    fit_data_efficiency_many,
    fit_data_efficiency_table,
    fit_shared_exponents,
    fit_shared_exponents_many,
    flag_degenerate,
    mean_relative_error,
    predict_D,
    prediction_errors,
    select_fit_points,
)
from valuescale.analysis.fitting import DegeneracyRules

UTD_GRID = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
PARAMS_GRID = np.geomspace(2.5e5, 4e7, 6)
NOISE = 0.05


def law(d_min: float, alpha: float, beta: float, term: float = 3e5) -> dict[str, float]:
    """Eq. 7.1 whose σ and N terms both equal ``term`` at σ = 1 and N = 1e6."""
    return {
        "D_min": d_min,
        "a_J": term ** (1 / alpha),
        "alpha_J": alpha,
        "b_J": 1e6 * term ** (1 / beta),
        "beta_J": beta,
    }


TRUE = law(5e4, 1.0, 0.7)


def grid() -> tuple[np.ndarray, np.ndarray]:
    u, n = np.meshgrid(UTD_GRID, PARAMS_GRID, indexing="ij")
    return u.ravel(), n.ravel()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_env_fit_recovers_synthetic_law(seed: int) -> None:
    rng = np.random.default_rng(seed)
    u, n = grid()
    truth = predict_D(TRUE, u, n)
    D = truth * np.exp(rng.normal(0, NOISE, u.size))
    fit = fit_data_efficiency(u, n, D)
    assert fit.status == "ok", fit.reason
    assert fit.params["alpha_J"] == pytest.approx(TRUE["alpha_J"], rel=0.15)
    assert fit.params["beta_J"] == pytest.approx(TRUE["beta_J"], rel=0.15)
    rel = np.abs(predict_D(fit.params, u, n) / truth - 1)
    assert rel.mean() < 0.05 and rel.max() < 0.10
    assert fit.loss == pytest.approx(NOISE**2, rel=0.5)
    assert list(fit.params) == list(DE_PARAMS)


def test_bootstrap_ci_brackets_fit_and_truth() -> None:
    rng = np.random.default_rng(3)
    u, n = grid()
    D = predict_D(TRUE, u, n) * np.exp(rng.normal(0, NOISE, u.size))
    boot = D * np.exp(rng.normal(0, NOISE, (100, u.size)))
    boot[rng.random(boot.shape) < 0.02] = np.nan  # resamples that never reached J
    fit = fit_data_efficiency(u, n, D, boot)
    assert fit.n_boot == 100 and fit.n_boot_ok >= 90
    for name in ("alpha_J", "beta_J"):
        assert fit.lo[name] < fit.params[name] < fit.hi[name]
        assert fit.lo[name] < TRUE[name] < fit.hi[name]


def _same_result(a, b) -> bool:
    """Two FitResults equal bit for bit (NaN equal to NaN)."""
    same = (
        a.status == b.status and a.reason == b.reason and (a.n, a.n_boot_ok) == (b.n, b.n_boot_ok)
    )
    for got, want in ((a.params, b.params), (a.lo, b.lo), (a.hi, b.hi)):
        same &= np.array_equal(list(got.values()), list(want.values()), equal_nan=True)
    return bool(same and np.array_equal(a.loss, b.loss, equal_nan=True))


def test_batched_fits_equal_fits_one_at_a_time() -> None:
    """The batched optimisation (several thresholds' starts and bootstrap refits in one
    Levenberg-Marquardt run) gives each fit exactly the result of fitting it alone."""
    rng = np.random.default_rng(7)
    u, n = grid()
    requests = []
    for j, true in enumerate([TRUE, law(1e5, 0.6, 1.2), law(2e4, 2.0, 0.4), TRUE]):
        D = predict_D(true, u, n) * np.exp(rng.normal(0, NOISE, u.size))
        D[rng.random(u.size) < 0.1 * j] = np.nan  # thresholds some configurations miss
        boot = D * np.exp(rng.normal(0, NOISE, (30, u.size)))
        requests.append((u, n, D, boot))
    requests.append((u[:5], n[:5], requests[0][2][:5], None))  # another point count, no CIs
    batched = fit_data_efficiency_many(requests, n_starts=4)
    alone = [fit_data_efficiency(*r, n_starts=4) for r in requests]
    assert [f.status for f in batched] == [f.status for f in alone]
    assert all(_same_result(a, b) for a, b in zip(batched, alone, strict=True))
    group = np.repeat([0, 1], u.size)
    shared = [
        (np.tile(u, 2), np.tile(n, 2), np.concatenate([r[2], r[2] * 2.0]), group, None)
        for r in requests[:3]
    ]
    batched_shared = fit_shared_exponents_many(shared, n_starts=4)
    for got, request in zip(batched_shared, shared, strict=True):
        want = fit_shared_exponents(*request[:4], n_starts=4)
        assert all(_same_result(a, b) for a, b in zip(got, want, strict=True))


def test_shared_exponents_fit_three_envs() -> None:
    rng = np.random.default_rng(4)
    laws = [law(5e4, 1.0, 0.7, 3e5), law(2e5, 1.0, 0.7, 6e5), law(1e5, 1.0, 0.7, 1.5e5)]
    u, n = grid()
    us, ns, Ds, groups, truths = [], [], [], [], []
    for g, true in enumerate(laws):
        truth = predict_D(true, u, n)
        us.append(u)
        ns.append(n)
        truths.append(truth)
        Ds.append(truth * np.exp(rng.normal(0, NOISE, u.size)))
        groups.append(np.full(u.size, g))
    fits = fit_shared_exponents(
        np.concatenate(us), np.concatenate(ns), np.concatenate(Ds), np.concatenate(groups)
    )
    assert len(fits) == 3 and all(f.status == "ok" for f in fits)
    assert len({f.params["alpha_J"] for f in fits}) == 1  # shared
    assert fits[0].params["alpha_J"] == pytest.approx(1.0, rel=0.1)
    assert fits[0].params["beta_J"] == pytest.approx(0.7, rel=0.1)
    for fit, truth in zip(fits, truths, strict=True):
        rel = np.abs(predict_D(fit.params, u, n) / truth - 1)
        assert rel.mean() < 0.05
        assert fit.n == u.size


def test_average_over_envs_is_exact_for_scaled_copies() -> None:
    u, n = grid()
    base = predict_D(TRUE, u, n)
    scales = [0.5, 1.0, 4.0]
    frames = [
        pd.DataFrame({"env": f"e{i}", "utd": u, "critic_params": n * (1 + 0.01 * i), "D": c * base})
        for i, c in enumerate(scales)
    ]
    points = pd.concat(frames, ignore_index=True)
    points.loc[0, "D"] = np.nan  # one env misses one grid point: dropped for every env
    points["width"] = np.tile(np.arange(u.size), 3)  # match envs on (utd, width)
    boot = np.repeat(points["D"].to_numpy()[None, :], 4, axis=0)
    avg, avg_boot = average_over_envs(points, boot, scope="suite")
    assert len(avg) == u.size - 1 and (avg["env"] == "suite").all()
    # D_e = c_e f  ->  mean_e(D_e / med_e) * median(med_e) = f * median(c)
    np.testing.assert_allclose(avg["D"], np.median(scales) * base[1:], rtol=1e-12)
    np.testing.assert_allclose(avg_boot, np.repeat(avg["D"].to_numpy()[None, :], 4, axis=0))
    # A resample where one env missed one point loses that point only.
    boot[0, 5] = np.nan
    _, avg_boot = average_over_envs(points, boot, scope="suite")
    assert np.isnan(avg_boot[0]).sum() == 1 and np.isfinite(avg_boot[1:]).all()
    # averaged N is the geometric mean of the envs' N
    np.testing.assert_allclose(
        avg["critic_params"], n[1:] * np.exp(np.mean(np.log([1, 1.01, 1.02])))
    )


def synthetic_crossings(rng: np.random.Generator, noise: float = NOISE) -> pd.DataFrame:
    """Crossing rows of 3 dmc-medium envs, 2 thresholds, 3 batch sizes (128 is best)."""
    rows = []
    u_grid, n_grid = UTD_GRID[1:], PARAMS_GRID[1:]
    for e, env in enumerate(("cheetah-run", "walker-run", "hopper-hop")):
        for t in range(2):
            true = law(5e4 * (1 + e) * (1 + t), 1.0, 0.7, 3e5 * (1 + t))
            for u in u_grid:
                for w, n in enumerate(n_grid):
                    for B in (64, 128, 256):
                        D = predict_D(true, u, n) * np.exp(rng.normal(0, noise))
                        D *= 1 + 0.3 * abs(np.log2(B / 128))
                        rows.append(
                            {
                                "env": env,
                                "agent": "bro",
                                "utd": u,
                                "width": 256 * 2**w,
                                "critic_params": n,
                                "batch_size": B,
                                "lr": 3e-4,
                                "source": "synthetic",
                                "threshold_idx": t,
                                "threshold": 100.0 * (t + 1),
                                "D": D,
                                "D_std": 0.05 * D,
                                "D_boot_nan_frac": 0.0,
                            }
                        )
    return pd.DataFrame(rows)


def test_select_fit_points_uses_b_star_or_min_d() -> None:
    crossings = synthetic_crossings(np.random.default_rng(5), noise=0.0)
    points = select_fit_points(crossings)
    assert (points["batch_size"] == 128).all() and (points["batch_choice"] == "min_D").all()
    assert len(points) == len(crossings) // 3
    keys = ["env", "agent", "utd", "critic_params"]
    bstar = crossings[keys].drop_duplicates().assign(B_star=200.0)  # closest in log: 256
    bstar.loc[bstar.index[0], "B_star"] = np.nan  # falls back to min D
    points = select_fit_points(crossings, bstar)
    assert (points["batch_choice"] == "B_star").sum() == len(points) - 2
    assert (points.loc[points["batch_choice"] == "B_star", "batch_size"] == 256).all()
    assert (points.loc[points["batch_choice"] == "min_D", "batch_size"] == 128).all()
    assert set(points["suite"]) == {"dmc-medium"}


def test_bootstrap_matrix_prefers_real_resamples() -> None:
    crossings = synthetic_crossings(np.random.default_rng(6)).head(4)
    keys = ["env", "agent", "utd", "critic_params", "batch_size"]
    boot = {
        tuple(r): np.full((7, 2), float(i + 1))
        for i, r in enumerate(crossings[keys].itertuples(index=False))
    }
    with_boot = attach_bootstrap(crossings, boot, keys)
    matrix = bootstrap_matrix(with_boot)
    assert matrix.shape == (7, 4)
    np.testing.assert_array_equal(matrix[0], [1, 2, 3, 4])
    parametric = bootstrap_matrix(crossings, n_boot=500, seed=0)
    assert parametric.shape == (500, 4)
    cv = np.std(np.log(parametric), axis=0)
    np.testing.assert_allclose(cv, 0.05, rtol=0.15)
    assert bootstrap_matrix(crossings.drop(columns=["D_std"])) is None


def test_fit_table_all_variants_and_prediction_errors() -> None:
    crossings = synthetic_crossings(np.random.default_rng(7))
    # An env that never reaches threshold 1: its fits must fail with a reason, not raise.
    never = crossings[(crossings["env"] == "cheetah-run")].assign(env="fish-swim")
    never.loc[never["threshold_idx"] == 1, "D"] = np.nan
    crossings = pd.concat([crossings, never], ignore_index=True)
    points = select_fit_points(crossings)
    fits = fit_data_efficiency_table(points, n_boot=30)
    for col in ("scope", "variant", "threshold_idx", "D_min", "alpha_J_lo", "beta_J_hi", "status"):
        assert col in fits
    counts = fits.groupby("variant").size().to_dict()
    assert counts == {"per_env": 8, "loglinear": 8, "shared": 8, "averaged": 2}
    failed = fits[(fits["scope"] == "fish-swim") & (fits["threshold_idx"] == 1)]
    assert set(failed["variant"]) == {"per_env", "loglinear", "shared"}
    assert (failed["status"] == "failed").all() and failed["reason"].str.len().min() > 0
    # The other envs still share exponents and average without it.
    averaged = fits[(fits["variant"] == "averaged") & (fits["threshold_idx"] == 1)].iloc[0]
    assert averaged["envs"] == "cheetah-run,hopper-hop,walker-run"
    good = fits.drop(failed.index)
    assert (good["status"] == "ok").all(), good.loc[good["status"] != "ok", "reason"].tolist()
    shared = good[good["variant"] == "shared"]
    assert shared.groupby("threshold_idx")["alpha_J"].nunique().eq(1).all()
    assert shared["alpha_J"].between(0.8, 1.2).all()

    errors = prediction_errors(good, points, "per_env")
    summary = mean_relative_error(errors)
    assert (summary["mean_rel_error"] < 0.06).all()
    baseline = mean_relative_error(prediction_errors(good, points, "loglinear"))
    assert (baseline["mean_rel_error"] > summary["mean_rel_error"]).all()


def test_select_points_per_source_and_learning_rate_with_long_bootstrap() -> None:
    crossings = synthetic_crossings(np.random.default_rng(8), noise=0.0)
    crossings = crossings[crossings["env"] == "cheetah-run"]
    other_lr = crossings.assign(lr=1e-3, D=crossings["D"] * 1.5)  # a worse learning rate
    held_out = crossings.assign(source="interpolated", D=crossings["D"] * 2.0)
    all_rows = pd.concat([crossings, other_lr, held_out], ignore_index=True)
    keys = ["env", "agent", "source", "utd", "critic_params", "lr"]
    bstar = all_rows[keys].drop_duplicates().assign(B_star=64.0)
    points = select_fit_points(all_rows, bstar, sources=["synthetic"])
    assert set(points["source"]) == {"synthetic"} and (points["lr"] == 3e-4).all()
    assert (points["batch_size"] == 64).all() and len(points) == len(crossings) // 3

    # The long bootstrap table (one row per resample) becomes a D_boot array per row.
    config = [*keys[:5], "width", "batch_size", "lr", "threshold_idx"]
    long = pd.concat(
        [crossings[config].assign(boot_idx=k, D=crossings["D"] * (1 + k)) for k in (2, 0, 1)]
    )
    with_boot = attach_bootstrap_table(crossings, long)
    first = with_boot.iloc[0]
    np.testing.assert_allclose(first["D_boot"], first["D"] * np.array([1.0, 2.0, 3.0]))

    fits = fit_data_efficiency_table(
        select_fit_points(all_rows, sources=["synthetic", "interpolated"]),
        variants=("per_env",),
        n_boot=0,
    )
    assert set(fits["source"]) == {"synthetic", "interpolated"}
    held_points = select_fit_points(all_rows, sources=["interpolated"])
    with pytest.raises(ValueError, match="fit_source"):
        prediction_errors(fits, held_points)
    errors = prediction_errors(fits, held_points, fit_source="synthetic")
    # held-out D is doubled: |D - 2D| / 2D = 0.5 (the fits on exact data are near exact)
    np.testing.assert_allclose(errors["rel_error"], 0.5, rtol=1e-3)


# --------------------------------------------------------------------------- the authors' conventions


def _pts(env: str, D_by_point: dict[int, list[float]]) -> list[dict]:
    """Rows of one env: point i at (σ = 2^i, N = 1e6 * 2^i), D per threshold index."""
    return [
        {
            "env": env,
            "agent": "bro",
            "utd": float(2**i),
            "critic_params": 1e6 * 2**i,
            "threshold_idx": t,
            "D": D,
        }
        for i, ds in D_by_point.items()
        for t, D in enumerate(ds)
    ]


def test_authors_task_average_by_hand() -> None:
    points = pd.DataFrame(
        _pts("a", {1: [100, 300], 2: [200, 400]})
        + _pts("b", {1: [1000, np.nan], 2: [2000, 4000], 3: [500, 1000]})
    )
    medians = env_medians(points)
    # a: median(100, 200, 300, 400); b: point 1 never reaches the top threshold -> left out
    assert medians == {"a": 250.0, "b": 1500.0}
    scale = np.median([250.0, 1500.0])  # 875
    expected = {
        0: [100 / 250, np.mean([200 / 250, 2000 / 1500]), 500 / 1500],
        1: [300 / 250, np.mean([400 / 250, 4000 / 1500]), 1000 / 1500],
    }
    kept = points[~((points["env"] == "b") & (points["utd"] == 2.0))]  # b's point 1 left out
    for t, values in expected.items():
        avg, _ = average_over_envs(
            kept[kept["threshold_idx"] == t].reset_index(drop=True), None, "s", medians=medians
        )
        np.testing.assert_allclose(avg.sort_values("utd")["D"], scale * np.array(values))
    # today's per-threshold rule averages only points both envs reached at that threshold
    avg, _ = average_over_envs(points[points["threshold_idx"] == 0].reset_index(drop=True))
    np.testing.assert_allclose(
        avg["D"],
        np.median([150, 1500])
        * np.mean([[100 / 150, 200 / 150], [1000 / 1500, 2000 / 1500]], axis=0),
    )


def test_authors_task_average_in_the_fit_table_recovers_scaled_copies() -> None:
    u, n = grid()
    scales = [0.5, 1.0, 4.0]
    rows = []
    for e, (env, c) in enumerate(
        zip(("cheetah-run", "walker-run", "hopper-hop"), scales, strict=True)
    ):
        for t, term in enumerate((2e5, 3e5)):
            D = c * predict_D(law(5e4, 1.0, 0.7, term), u, n)
            if e == 2 and t == 1:
                D[0] = np.nan  # hopper-hop's point 0 never reaches the top threshold
            rows.append(
                pd.DataFrame(
                    {"env": env, "agent": "bro", "utd": u, "critic_params": n, "D": D}
                ).assign(threshold_idx=t, threshold=100.0 * (t + 1))
            )
    points = pd.concat(rows, ignore_index=True)
    table = fit_data_efficiency_table(
        points, variants=("averaged",), n_boot=0, n_starts=2, task_average="authors"
    )
    assert list(table["task_average"]) == ["authors", "authors"]
    medians = {
        k: float(v) for k, v in (x.split("=") for x in table["norm_medians"].iloc[0].split(";"))
    }
    f = np.concatenate([predict_D(law(5e4, 1.0, 0.7, term), u, n) for term in (2e5, 3e5)])
    assert medians["cheetah-run"] == pytest.approx(0.5 * np.median(f))
    assert medians["hopper-hop"] == pytest.approx(4.0 * np.median(np.delete(f, [0, u.size])))
    top = table[table["threshold_idx"] == 1].iloc[0]
    assert top["status"] == "ok" and top["n_points"] == u.size  # point 0 from the other envs
    per_threshold = fit_data_efficiency_table(points, variants=("averaged",), n_boot=0, n_starts=2)
    assert set(per_threshold["task_average"]) == {"per_threshold"}
    assert per_threshold["n_points"].iloc[1] == u.size - 1  # point 0 not reached by every env
    with pytest.raises(ValueError, match="unknown task_average 'mine'"):
        fit_data_efficiency_table(points, variants=("averaged",), task_average="mine")


def test_exclude_points_by_suite_agent_and_value() -> None:
    rows = [
        {"env": env, "agent": agent, "source": "x", "utd": u, "width": w, "critic_params": n}
        for env, agent in (("cheetah-run", "bro"), ("dog-run", "bro"), ("h1-crawl-v0", "simbav2"))
        for u in (1.0, 2.0)
        for w, n in ((128, 550_000), (2048, 1_050_000))
    ]
    df = pd.DataFrame(rows)
    rules = [
        {"suite": "dmc-medium", "critic_params": [550_000]},
        {"suite": ["dmc-hard"], "critic_params": [550_000], "utd": [1]},
        {"agent": "simbav2", "width": [2048]},
    ]
    kept = exclude_points(df, rules)
    left = {(r.env, r.utd, r.critic_params) for r in kept.itertuples()}
    assert left == {
        ("cheetah-run", 1.0, 1_050_000),
        ("cheetah-run", 2.0, 1_050_000),
        ("dog-run", 2.0, 1_050_000),
        ("h1-crawl-v0", 1.0, 550_000),
        ("h1-crawl-v0", 2.0, 550_000),
    }
    assert exclude_points(df, []) is df
    with pytest.raises(ValueError, match=r"exclude\[0\].*unknown key\(s\) \['sigma'\]"):
        exclude_points(df, [{"sigma": [1]}])
    with pytest.raises(ValueError, match="names none of"):
        exclude_points(df, [{"suite": "dmc-hard"}])


def test_min_d_top_takes_the_batch_size_best_at_the_top_threshold() -> None:
    rows = []
    # (σ = 1): B = 64 is best at threshold 0, B = 128 at the top (1); σ = 2 has 2 batch sizes only;
    # σ = 4: nobody reaches the top, B = 256 is best at threshold 0
    table = {
        1.0: {64: [100, 900], 128: [200, 500], 256: [300, 700]},
        2.0: {64: [100, 400], 128: [200, 300]},
        4.0: {64: [500, np.nan], 128: [400, np.nan], 256: [300, np.nan]},
    }
    for u, by_b in table.items():
        for B, ds in by_b.items():
            for t, D in enumerate(ds):
                rows.append(
                    {
                        "env": "h1-crawl-v0",
                        "agent": "simbav2",
                        "source": "s",
                        "utd": u,
                        "critic_params": 604_362,
                        "batch_size": B,
                        "lr": 1e-4,
                        "threshold_idx": t,
                        "threshold": 100.0 * t,
                        "D": D,
                    }
                )
    crossings = pd.DataFrame(rows)
    points = select_fit_points(crossings, batch_choice={"simbav2": "min_D_top"})
    chosen = points.groupby("utd")["batch_size"].unique().to_dict()
    assert {u: list(b) for u, b in chosen.items()} == {1.0: [128], 4.0: [256]}
    assert (points["batch_choice"] == "min_D_top").all()
    np.testing.assert_array_equal(points[points["utd"] == 1.0]["D"], [200, 500])
    # the default rule takes the smallest D per threshold (64 at threshold 0)
    default = select_fit_points(crossings)
    assert (
        default[(default["utd"] == 1.0) & (default["threshold_idx"] == 0)]["batch_size"].item()
        == 64
    )
    with pytest.raises(ValueError, match="unknown batch choice"):
        select_fit_points(crossings, batch_choice={"simbav2": "nearest"})


# --------------------------------------------------------------------------------------------
# Degenerate fits
# --------------------------------------------------------------------------------------------


def _points_table(kinds: dict[str, np.ndarray], seeds: int) -> pd.DataFrame:
    """Crossing-like points of several synthetic envs, one 'threshold' per noise seed."""
    u, n = grid()
    frames = []
    for env, truth in kinds.items():
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            D = truth * np.exp(rng.normal(0, NOISE, u.size))
            frames.append(
                pd.DataFrame(
                    {
                        "env": env,
                        "agent": "bro",
                        "utd": u,
                        "critic_params": n,
                        "threshold_idx": seed,
                        "threshold": 100.0 * (seed + 1),
                        "D": D,
                        "D_std": NOISE * D,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def test_a_term_absent_from_the_data_gives_a_degenerate_fit() -> None:
    u, n = grid()
    kinds = {
        "sigma_only": 5e4 + (2e5 / u) ** 0.8,  # D does not depend on N
        "params_only": 5e4 + (3e13 / n) ** 0.6,  # D does not depend on σ
        "sound": predict_D(TRUE, u, n),
    }
    table = fit_data_efficiency_table(
        _points_table(kinds, seeds=3), variants=("per_env",), n_boot=20, n_starts=4
    )
    by_env = {env: rows for env, rows in table.groupby("scope")}
    assert (by_env["sound"]["status"] == "ok").all(), by_env["sound"]["reason"].tolist()
    # the reason names the missing term (or its parameters, sent to a bound)
    for env, names in (
        ("sigma_only", ("N term", "b_J", "beta_J")),
        ("params_only", ("σ term", "a_J", "alpha_J")),
    ):
        rows = by_env[env]
        assert (rows["status"] == "degenerate").all(), rows[["status", "reason"]]
        assert all(any(name in r for name in names) for r in rows["reason"]), rows["reason"]


def _fit_row(**values: float) -> dict:
    base = {
        "scope": "h1-stand-v0",
        "agent": "simbav2",
        "variant": "per_env",
        "threshold_idx": 0,
        "status": "ok",
        "reason": "",
        "loss": 0.01,
        "utd_min": 1.0,
        "utd_max": 8.0,
        "critic_params_min": 6e5,
        "critic_params_max": 3.6e7,
        "D_obs_min": 2.4e5,
        **law(5e4, 0.7, 0.9),
    }
    return {**base, **values}


def test_collapsed_exponent_and_loss_outlier_are_degenerate() -> None:
    # The published SimbaV2 h1-stand fit at threshold 19: D_min ~ 0, alpha_J ~ 0.03, a_J ~ 1e168.
    collapsed = _fit_row(
        threshold_idx=19,
        D_min=1.66e-3,
        a_J=8.3e168,
        alpha_J=0.0328,
        b_J=4.56e10,
        beta_J=1.15,
        loss=0.085,
    )
    rows = [_fit_row(threshold_idx=i, loss=0.01 + 0.001 * i) for i in range(4)]
    # a sound law whose loss is far above the other thresholds'
    rows.append(_fit_row(threshold_idx=4, loss=0.09))
    # alpha_J as small but D_min well above 0 (the σ term ~1e5, changing 6 % over σ 1-8): the
    # floor is there, nothing collapsed
    rows.append(_fit_row(threshold_idx=5, alpha_J=0.03, a_J=1e166, D_min=1e5))
    table = flag_degenerate(pd.DataFrame([*rows, collapsed]))
    status = table.set_index("threshold_idx")["status"]
    reason = table.set_index("threshold_idx")["reason"]
    assert status[19] == "degenerate" and "alpha_J = 0.0328 collapsed" in reason[19]
    assert status[4] == "degenerate" and "x the median" in reason[4]
    assert (status[[0, 1, 2, 3, 5]] == "ok").all(), reason.to_dict()
    # the rules are configurable: a looser loss limit keeps threshold 4
    loose = flag_degenerate(pd.DataFrame(rows), DegeneracyRules(loss_factor=20.0))
    assert (loose["status"] == "ok").all()


def test_degeneracy_rules_from_settings_name_bad_keys() -> None:
    assert DegeneracyRules.from_settings(None) == DegeneracyRules()
    assert DegeneracyRules.from_settings({"ci_decades": 3}).ci_decades == 3.0
    with pytest.raises(ValueError, match="unknown key.*'ci_decade'"):
        DegeneracyRules.from_settings({"ci_decade": 3})
    with pytest.raises(ValueError, match="loss_factor must be > 0"):
        DegeneracyRules.from_settings({"loss_factor": 0})


def test_published_simbav2_h1_stand_top_fits_are_degenerate(published_table) -> None:
    """The known real case: the SimbaV2 h1-stand laws at thresholds 18-19 of the published study
    (the paper's J range 200-660) collapse onto D_min ~ 0 (alpha_J 0.03-0.07, a_J up to 1e168)."""
    from valuescale.analysis.best_config import best_batch_size
    from valuescale.analysis.crossings import crossing_tables
    from valuescale.analysis.preprocess import preprocess
    from valuescale.analysis.thresholds import compute_thresholds
    from valuescale.tasks import TASKS

    env = "h1-stand-v0"
    df = published_table("simbav2_model_scaling_linear20_with_base")
    curves = preprocess(df[df["env"] == env], reset_interval={"simbav2": None})
    spec = TASKS[env]
    thresholds = compute_thresholds(curves, j_min={env: spec.j_min}, j_max={env: spec.j_max})
    tables = crossing_tables(curves, thresholds, n_boot=100)
    points = select_fit_points(tables.crossings, best_batch_size(tables.bootstrap))
    table = fit_data_efficiency_table(points, variants=("per_env",), n_boot=0, n_starts=8)
    top = table.set_index("threshold_idx").loc[[18, 19]]
    assert (top["status"] == "degenerate").all(), top[["alpha_J", "D_min", "reason"]]
    assert top["reason"].str.contains("collapsed").all(), top["reason"].tolist()
