"""The workflow's stage functions (docs/pipeline-api.md) on small real inputs: each writes its
named files with the documented columns; malformed input is a clear error and leaves nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from valuescale import catalog, pipeline
from valuescale.analysis.allocation import params_from_width
from valuescale.analysis.ingest import CURVE_COLUMNS, import_published, write_table
from valuescale.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
ENVS = ["h1-pole-v0", "humanoid-stand"]
SOURCES = [
    "fitted_bs",
    "interpolated_bs",
    "extrapolated_bs",
    "compute_optimal",
    "utd_scaling_bl",
    "n_scaling_bl",
]
HOLDOUT = [
    "interpolated_bs",
    "extrapolated_bs",
    "compute_optimal",
    "n_scaling_bl",
    "utd_scaling_bl",
    "side_critic",
    "overfitting",
]


def settings(stage: str, *, n_boot: int = 20, n_bootstrap: int = 0, **fits: Any) -> dict:
    """What ``analysis_settings(stage)`` in common.smk passes, with the schema's defaults."""
    envs = {e: {"j_min": t.j_min, "j_max": None, "delta": t.delta, "max_step": None}
            for e, t in TASKS.items()}  # fmt: skip
    fit_spec = {
        "n_starts": 4,
        "seed": 0,
        "n_bootstrap": n_bootstrap,
        "variants": ["per_env", "shared", "averaged"],
        "holdout_sources": HOLDOUT,
        **fits,
    }
    compute = {"flops_per_param_sample": 10, "batch_convention": "accounting",
               "accounting_batch": 256}  # fmt: skip
    if stage == "crossings":
        return {
            "envs": {e: {k: v[k] for k in ("j_min", "j_max", "max_step")} for e, v in envs.items()},
            "reset_interval": {"bro": 2500000, "simbav2": None},
            "thresholds": {
                "n": 20,
                "paper_j_max": False,
                "j_max_percentile": 20,
                "j_max_factor": 0.95,
                "round_to": 10,
            },  # fmt: skip
            "bootstrap": {"n": n_boot, "seed": 0},
            "batch_size": {"min_batch_sizes": 3},
        }
    if stage == "fits":
        return {"fits": fit_spec}
    if stage == "allocation":
        return {
            "envs": {e: {"delta": v["delta"]} for e, v in envs.items()},
            "compute": compute,
            "budget": {"n_heldout": 5},
            "fits": fit_spec,
        }
    if stage == "evaluation":
        return {"compute": compute, "fits": fit_spec, "bootstrap": {"n": n_boot, "seed": 0}}
    if stage == "proposal":
        return {
            "envs": {e: {"delta": v["delta"]} for e, v in envs.items()},
            "compute": compute,
            "proposal": {"budgets": [], "threshold_idx": None},
            "train": {"critic_depth": 2, "n_quantiles": 100, "steps": 1000000},
        }
    raise KeyError(stage)


@pytest.fixture(scope="module")
def study(tmp_path_factory, published_dir: Path) -> dict[str, Path]:
    """A small real study: the HumanoidBench-validation archives restricted to two envs, run
    through import -> merge -> crossings -> fits -> allocation."""
    root = tmp_path_factory.mktemp("study")
    t = root / "tables"
    parts = []
    for name in SOURCES:
        df = import_published(published_dir / f"{name}.zip")
        part = t / "published" / f"{name}.parquet"
        write_table(df[df["env"].isin(ENVS)], part)
        parts.append(part)
    paths = {k: t / f"{k}.csv" for k in (
        "thresholds", "best_batch_size", "fits_batch_size", "fits_data_efficiency",
        "compute_optimal", "budget_optimal", "budget_fits",
    )}  # fmt: skip
    paths.update(root=root, parts=parts, curves=t / "curves.parquet",
                 crossings=t / "crossings.parquet")  # fmt: skip
    pipeline.merge_curves(parts, paths["curves"])
    pipeline.crossings(
        paths["curves"],
        out_crossings=paths["crossings"],
        out_thresholds=paths["thresholds"],
        out_best_batch_size=paths["best_batch_size"],
        settings=settings("crossings"),
    )
    pipeline.fits(
        paths["crossings"],
        paths["best_batch_size"],
        out_batch_size=paths["fits_batch_size"],
        out_data_efficiency=paths["fits_data_efficiency"],
        settings=settings("fits"),
    )
    pipeline.allocation(
        paths["crossings"],
        paths["fits_data_efficiency"],
        paths["fits_batch_size"],
        out_compute_optimal=paths["compute_optimal"],
        out_budget_optimal=paths["budget_optimal"],
        out_budget_fits=paths["budget_fits"],
        settings=settings("allocation"),
    )
    return paths


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def test_import_and_merge_write_the_long_table(study: dict, published_dir: Path, tmp_path) -> None:
    out = tmp_path / "published" / "utd_scaling_bl.parquet"
    pipeline.import_published(published_dir / "utd_scaling_bl.zip", "utd_scaling_bl", out)
    df = pd.read_parquet(out)
    assert list(df.columns[: len(CURVE_COLUMNS)]) == CURVE_COLUMNS
    assert set(df["source"]) == {"utd_scaling_bl"} and df["value"].notna().all()
    merged = pd.read_parquet(study["curves"])
    assert set(merged["source"]) == set(SOURCES)
    assert set(merged["env"]) == set(ENVS)
    assert len(merged) == sum(len(pd.read_parquet(p)) for p in study["parts"])


def run_dir(root: Path, name: str, *, passive: bool, diverged: bool) -> Path:
    """A fake engine run folder: curves.parquet + run.json."""
    d = root / name
    d.mkdir(parents=True)
    rows = [
        {"env": "cartpole-swingup", "agent": "bro", "utd": 1.0, "width": 64,
         "critic_params": int(params_from_width(64, 6)), "batch_size": 64, "lr": 3e-4,
         "seed": seed, "step": step, "metric": metric, "value": float(step + seed)}
        for seed in (0, 1) for step in (1000, 2000)
        for metric in ("return", "validation_critic_loss")
    ]  # fmt: skip
    pd.DataFrame(rows).to_parquet(d / "curves.parquet", index=False)
    seeds = {"0": {"status": "ok"}, "1": {"status": "ok"}}
    if diverged:
        seeds["1"] = {"status": "diverged", "diverged_at_step": 1500}
    info = {
        "complete": True,
        "config": {"passive_critic": passive, "passive_critic_width": 32},
        "passive_critic_params": 12345 if passive else None,
        "seeds": seeds,
    }
    (d / "run.json").write_text(json.dumps(info))
    return d / "curves.parquet"


def test_aggregate_runs_reads_run_json(tmp_path, caplog) -> None:
    runs = [
        run_dir(tmp_path, "a", passive=True, diverged=True),
        run_dir(tmp_path, "b", passive=False, diverged=False),
    ]
    out = tmp_path / "tables" / "curves_own.parquet"
    with caplog.at_level(logging.WARNING, logger="valuescale.pipeline"):
        pipeline.aggregate_runs(runs, out)
    df = pd.read_parquet(out)
    assert set(df["source"]) == {"own"} and len(df) == 16
    a = df.iloc[:8]
    assert (a["passive_width"] == 32).all() and (a["passive_critic_params"] == 12345).all()
    assert df.iloc[8:]["passive_width"].isna().all()
    assert any("seed 1 is diverged" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("run_json", ["missing", "incomplete"])
def test_a_partial_run_is_never_aggregated(tmp_path, run_json) -> None:
    runs = [
        run_dir(tmp_path, "a", passive=False, diverged=False),
        run_dir(tmp_path, "b", passive=False, diverged=False),
    ]
    info = runs[1].with_name("run.json")
    if run_json == "missing":
        info.unlink()
    else:
        info.write_text(json.dumps({**json.loads(info.read_text()), "complete": False}))
    out = tmp_path / "tables" / "curves_own.parquet"
    with pytest.raises(ValueError, match=str(tmp_path / "b")):
        pipeline.aggregate_runs(runs, out)
    assert not out.exists()


def test_malformed_curves_are_named_and_leave_no_output(tmp_path) -> None:
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"env": ["x"], "step": [1]}).to_parquet(bad)
    out = tmp_path / "merged.parquet"
    with pytest.raises(ValueError, match=r"bad\.parquet.*'value'"):
        pipeline.merge_curves([bad], out)
    assert not out.exists()
    outs = {k: tmp_path / f"{k}.csv" for k in ("thresholds", "best")}
    with pytest.raises(ValueError, match=r"bad\.parquet"):
        pipeline.crossings(
            bad,
            out_crossings=tmp_path / "crossings.parquet",
            out_thresholds=outs["thresholds"],
            out_best_batch_size=outs["best"],
            settings=settings("crossings"),
        )
    assert not any(p.exists() for p in [*outs.values(), tmp_path / "crossings.parquet"])


# --------------------------------------------------------------------------------------------
# Crossings, fits, allocation
# --------------------------------------------------------------------------------------------


def test_crossings_stage_outputs(study: dict) -> None:
    cr = pd.read_parquet(study["crossings"])
    for column in ("env", "agent", "utd", "width", "critic_params", "batch_size", "lr",
                   "source", "threshold_idx", "threshold", "D", "D_std"):  # fmt: skip
        assert column in cr.columns
    assert set(cr["source"]) == set(SOURCES)
    assert cr.groupby(["env", "source", "utd", "critic_params", "batch_size"]).size().eq(20).all()
    assert np.isfinite(cr["D"]).mean() > 0.8
    assert {len(v) for v in cr["D_boot"]} == {20}  # the K bootstrap crossings of every row
    th = pd.read_csv(study["thresholds"])
    assert list(th.columns[:4]) == ["env", "agent", "threshold_idx", "threshold"]
    assert (cr["reset_dips"] == "ours").all() and (cr["seeds_remaining"] <= cr["n_seeds"]).all()
    lows = th[th["threshold_idx"] == 0].set_index("env")["threshold"]
    assert lows.to_dict() == {"h1-pole-v0": 300.0, "humanoid-stand": 300.0}  # paper J_min
    best = pd.read_csv(study["best_batch_size"])
    for column in ("env", "agent", "utd", "critic_params", "B_star", "B_star_lo", "B_star_hi",
                   "status"):  # fmt: skip
        assert column in best.columns
    # one batch size per (σ, N) in these archives: too few to pick a best one
    assert (best["status"] == "too_few_batch_sizes").all()


def test_fits_stage_outputs(study: dict) -> None:
    de = pd.read_csv(study["fits_data_efficiency"])
    assert set(de["source"]) == {"fitted_bs"}  # held-out sources are never fitted
    per_env = de[de["variant"] == "per_env"]
    assert set(per_env["scope"]) == set(ENVS) and len(per_env) == 40
    ok = per_env[per_env["status"] == "ok"]
    assert len(ok) >= 36
    for p in ("D_min", "a_J", "alpha_J", "b_J", "beta_J"):
        assert np.isfinite(ok[p]).all() and (ok[p] >= 0).all()
        assert {f"{p}_lo", f"{p}_hi"} <= set(de.columns)
    # two envs of different suites: shared exponents / averaging have nothing to pool
    assert set(de["variant"]) == {"per_env"}
    bs = pd.read_csv(study["fits_batch_size"])
    for column in ("scope", "a_B", "alpha_B", "b_B", "beta_B", "rel_error",
                   "loglinear_rel_error", "status"):  # fmt: skip
        assert column in bs.columns
    # fitted_bs ran each (σ, N) at the authors' rule: Eq. 6.1 / log-linear recover that rule
    run = bs[(bs["basis"] == "run_batch_size") & (bs["level"] == "env")].set_index("scope")
    assert set(run.index) == set(ENVS)
    assert (run["loglinear_rel_error"] < 0.1).all()


def test_fits_stage_applies_and_records_the_conventions(study: dict, tmp_path) -> None:
    """analysis.fits.exclude leaves grid points out; batch_choice and task_average are recorded."""
    out_de = tmp_path / "de.csv"
    spec = settings(
        "fits",
        variants=["per_env"],
        exclude=[{"env": "h1-pole-v0", "utd": [1, 2]}],
        batch_choice={"bro": "B_star"},
        task_average="authors",
        n_starts=1,
    )
    pipeline.fits(study["crossings"], study["best_batch_size"], out_batch_size=tmp_path / "bs.csv",
                  out_data_efficiency=out_de, settings=spec)  # fmt: skip
    de = pd.read_csv(out_de)
    pole = de[(de["scope"] == "h1-pole-v0") & (de["source"] == "fitted_bs")]
    assert len(pole) == 20 and (pole["utd_min"] > 2).all()
    stand = de[(de["scope"] == "humanoid-stand") & (de["source"] == "fitted_bs")]
    assert (stand["utd_min"] <= 2).any()  # another env: untouched
    assert (de["batch_choice"] == "B_star").all()


def test_fits_cap_bootstrap_and_give_cis(study: dict, tmp_path) -> None:
    out_bs, out_de = tmp_path / "bs.csv", tmp_path / "de.csv"
    pipeline.fits(
        study["crossings"],
        study["best_batch_size"],
        out_batch_size=out_bs,
        out_data_efficiency=out_de,
        settings=settings("fits", n_bootstrap=12),
    )
    de = pd.read_csv(out_de)
    ok = de[(de["status"] == "ok") & (de["n_boot_ok"] > 0)]
    assert len(ok) and (ok["n_boot_ok"] <= 12).all()
    inside = (ok["alpha_J_lo"] <= ok["alpha_J"] * 1.0001) & (
        ok["alpha_J"] <= ok["alpha_J_hi"] * 1.0001
    )
    assert inside.mean() > 0.8


def test_allocation_stage_outputs(study: dict) -> None:
    co = pd.read_csv(study["compute_optimal"])
    ok = co[co["status"] == "ok"]
    assert (
        len(ok) and np.isfinite(ok[["utd_star", "critic_params_star", "compute_star"]]).all().all()
    )
    assert np.allclose(ok["compute_star"], 2560 * ok["utd_star"] * ok["critic_params_star"]
                       * ok["D_target"])  # fmt: skip
    bo = pd.read_csv(study["budget_optimal"])
    good = bo[bo["status"] == "ok"]
    assert np.allclose(good["budget"], good["compute"] + good["delta"] * good["D"])
    bf = pd.read_csv(study["budget_fits"])
    assert list(bf.columns[:2]) == ["scope", "agent"]
    assert set(bf["quantity"]) == {"D", "C", "sigma", "N"}
    fitted = bf[bf["status"] == "ok"]
    assert np.isfinite(fitted[["slope", "intercept", "r2"]]).all().all()
    # the data needed at the budget-optimum grows with the budget, near-perfectly
    d_lines = fitted[fitted["quantity"] == "D"]
    assert (d_lines["slope"] > 0).all() and (d_lines["r2"] > 0.9).all()
    assert (fitted["budget_min"] < fitted["budget_max"]).all()


def test_allocation_real_batch_convention(study: dict, tmp_path) -> None:
    spec = settings("allocation")
    spec["compute"] = {**spec["compute"], "batch_convention": "real"}
    outs = {k: tmp_path / f"{k}.csv" for k in ("co", "bo", "bf")}
    pipeline.allocation(
        study["crossings"],
        study["fits_data_efficiency"],
        study["fits_batch_size"],
        out_compute_optimal=outs["co"],
        out_budget_optimal=outs["bo"],
        out_budget_fits=outs["bf"],
        settings=spec,
    )
    co = pd.read_csv(outs["co"])
    ok = co[co["status"] == "ok"]
    assert len(ok) > 0
    # k is 10 x the batch size of the rule at the optimum, not the accounting 2560
    assert (ok["k"] != 2560).all() and (ok["k"] > 10 * 16).all()
    bo = pd.read_csv(outs["bo"])
    assert (bo["status"] == "ok").mean() > 0.5


# --------------------------------------------------------------------------------------------
# Evaluation tables and proposal
# --------------------------------------------------------------------------------------------


def test_fit_errors_stage(study: dict) -> None:
    out = study["root"] / "tables" / "fit_errors.csv"
    pipeline.fit_errors(
        study["crossings"],
        study["fits_data_efficiency"],
        study["best_batch_size"],
        study["fits_batch_size"],
        out=out,
        settings=settings("evaluation"),
    )
    fe = pd.read_csv(out)
    assert list(fe.columns[:7]) == ["quantity", "variant", "set", "agent", "fit_source",
                                    "eval_source", "scope"]  # fmt: skip
    avg = fe[(fe["variant"] == "per_env") & (fe["scope"] == "average")].set_index("set")
    assert set(avg.index) == {"fitted", "interpolated", "extrapolated"}
    assert np.isfinite(avg["mean_rel_error"]).all() and (avg["mean_rel_error"] < 0.35).all()
    assert (avg["n_envs"] == 2).all()


def test_allocation_strategies_stage(study: dict, published_dir: Path, tmp_path) -> None:
    designs = sorted((published_dir / "design").glob("*.csv"))
    out = tmp_path / "allocation_strategies.csv"
    pipeline.allocation_strategies(
        study["crossings"], designs, out=out, settings=settings("evaluation")
    )
    table = pd.read_csv(out).set_index(["strategy", "scope"])
    assert list(pd.read_csv(out).columns[:5]) == ["strategy", "scope", "mean_ratio",
                                                  "median_ratio", "n"]  # fmt: skip
    for strategy in ("utd_only", "model_only"):
        row = table.loc[(strategy, "all")]
        assert np.isfinite(row["mean_ratio"]) and 0.5 < row["mean_ratio"] < 3.0 and row["n"] > 50
    # a malformed design table names itself and its column; nothing is written
    bad = tmp_path / "hb_compute_optimal_bad.csv"
    pd.read_csv(designs[0]).drop(columns="critic_width").to_csv(bad, index=False)
    out2 = tmp_path / "never.csv"
    with pytest.raises(ValueError, match=r"hb_compute_optimal_bad\.csv.*critic_width"):
        pipeline.allocation_strategies(
            study["crossings"], [bad], out=out2, settings=settings("evaluation")
        )
    assert not out2.exists()


def test_passive_critic_stage(published_dir: Path, tmp_path) -> None:
    part = tmp_path / "side_critic.parquet"
    pipeline.import_published(published_dir / "side_critic.zip", "side_critic", part)
    out = tmp_path / "passive_critic_slopes.csv"
    pipeline.passive_critic_slopes(part, out=out, settings=settings("evaluation"))
    table = pd.read_csv(out)
    assert {"env", "against", "slope"} <= set(table.columns)
    avg = table[(table["env"] == "average") & (table["metric"] == "passive_validation_critic_loss")]
    assert set(avg["against"]) == {"main_width", "passive_width"}
    assert np.isfinite(table["slope"]).all()


def test_passive_critic_stage_without_passive_runs(study: dict, tmp_path) -> None:
    out = tmp_path / "slopes.csv"
    pipeline.passive_critic_slopes(study["curves"], out=out, settings=settings("evaluation"))
    table = pd.read_csv(out)
    assert table.empty and {"env", "against", "slope"} <= set(table.columns)


def assert_catalogue_columns(key: str, path: Path) -> None:
    """The table at ``path`` has the catalogue's columns of ``key`` first and in order, then only
    catalogue extra columns, in their order (valuescale.catalog: the tables' one home)."""
    spec = catalog.TABLES[key]
    assert Path(path).name == Path(spec.file).name, key
    table = pd.read_parquet(path) if Path(path).suffix == ".parquet" else pd.read_csv(path)
    written = list(table.columns)
    assert written[: len(spec.columns)] == list(spec.columns), key
    extra = written[len(spec.columns) :]
    assert extra == [c for c in spec.extra_columns if c in extra], (key, extra)


def test_stages_write_the_catalogue_columns(study: dict, published_dir: Path, tmp_path) -> None:
    """What the stages write is what valuescale.catalog says (names, columns, order)."""
    written = [k for k in catalog.TABLES if k in study]  # curves ... budget_fits
    assert len(written) == 9
    for key in written:
        assert_catalogue_columns(key, study[key])
    de = pd.read_csv(study["fits_data_efficiency"])
    assert {"D_min_lo", "batch_choice"} <= set(de.columns)  # extras are really written
    ev = settings("evaluation")
    out = tmp_path / "allocation_strategies.csv"
    designs = sorted((published_dir / "design").glob("*.csv"))
    pipeline.allocation_strategies(study["crossings"], designs, out=out, settings=ev)
    assert_catalogue_columns("allocation_strategies", out)
    out = tmp_path / "passive_critic_slopes.csv"
    pipeline.passive_critic_slopes(study["curves"], out=out, settings=ev)
    assert_catalogue_columns("passive_critic_slopes", out)


def test_proposal_is_a_runnable_config_fragment(study: dict) -> None:
    import jsonschema

    out = study["root"] / "proposal.yaml"
    pipeline.proposal(
        study["fits_data_efficiency"],
        study["fits_batch_size"],
        study["compute_optimal"],
        study["budget_fits"],
        out=out,
        settings=settings("proposal"),
    )
    fragment = yaml.safe_load(out.read_text())
    blocks = fragment["grid"]
    assert blocks, out.read_text()
    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema).validate(fragment)
    assert {b["envs"][0] for b in blocks} <= set(ENVS)
    for block in blocks:
        assert block["agents"] == ["bro"]
        assert block["widths"][0] % 16 == 0 and block["batch_sizes"][0] % 16 == 0
    text = out.read_text()
    assert "# h1-pole-v0 / bro (fits on fitted_bs" in text


def test_proposal_at_given_budgets(study: dict, tmp_path) -> None:
    bo = pd.read_csv(study["budget_optimal"])
    optimum = bo[(bo["scope"] == "h1-pole-v0") & (bo["variant"] == "per_env")
                 & (bo["threshold_idx"] == 5)]["budget"].item()  # fmt: skip
    budgets = [float(f"{1.5 * optimum:.3g}"), float(f"{3 * optimum:.3g}")]
    spec = settings("proposal")
    spec["proposal"] = {"budgets": budgets, "threshold_idx": 5}
    out = tmp_path / "proposal.yaml"
    pipeline.proposal(
        study["fits_data_efficiency"],
        study["fits_batch_size"],
        study["compute_optimal"],
        study["budget_fits"],
        out=out,
        settings=spec,
    )
    text = out.read_text()
    assert "threshold 5:" in text
    assert all(f"F = {b:.3g} -> " in text for b in budgets)
    blocks = yaml.safe_load(text)["grid"]
    pole = [b for b in blocks if b["envs"] == ["h1-pole-v0"]]
    # more budget, more compute: the larger budget gets a larger σ N
    assert len(pole) == 2
    size = [b["utd"][0] * b["widths"][0] ** 2 for b in pole]
    assert size[1] > size[0]


def test_malformed_fits_table_names_file_and_column(study: dict, tmp_path) -> None:
    bad = tmp_path / "fits_bad.csv"
    pd.read_csv(study["fits_data_efficiency"]).drop(columns="alpha_J").to_csv(bad, index=False)
    outs = {k: tmp_path / f"{k}.csv" for k in ("co", "bo", "bf")}
    with pytest.raises(ValueError, match=r"fits_bad\.csv.*alpha_J"):
        pipeline.allocation(
            study["crossings"],
            bad,
            study["fits_batch_size"],
            out_compute_optimal=outs["co"],
            out_budget_optimal=outs["bo"],
            out_budget_fits=outs["bf"],
            settings=settings("allocation"),
        )
    assert not any(p.exists() for p in outs.values())
    text = tmp_path / "crossings_text.csv"
    pd.read_parquet(study["crossings"]).drop(columns="D_boot").assign(D="soon").to_csv(text)
    with pytest.raises(ValueError, match=r"crossings_text\.csv.*'D'"):
        pipeline.fit_errors(
            text,
            study["fits_data_efficiency"],
            study["best_batch_size"],
            study["fits_batch_size"],
            out=tmp_path / "fe.csv",
            settings=settings("evaluation"),
        )
    assert not (tmp_path / "fe.csv").exists()


def test_failed_write_removes_the_outputs_already_written(study: dict, tmp_path) -> None:
    outs = [tmp_path / "crossings.parquet", tmp_path / "thresholds.csv"]
    with pytest.raises(ValueError, match="unsupported table format"):
        pipeline.crossings(
            study["curves"],
            out_crossings=outs[0],
            out_thresholds=outs[1],
            out_best_batch_size=tmp_path / "best.txt",
            settings=settings("crossings", n_boot=2),
        )
    assert not any(p.exists() for p in outs)
    assert not list(tmp_path.iterdir())


def test_figure_delegates_to_plots(monkeypatch, tmp_path) -> None:
    import valuescale.plots as plots

    calls = []
    monkeypatch.setattr(plots, "render_figure", lambda *a: calls.append(a))
    pipeline.figure(
        "fig_budget",
        {"budget_optimal": "a.csv"},
        out_pdf=tmp_path / "f.pdf",
        out_png=tmp_path / "f.png",
        settings={"figures": {"dpi": 80}},
    )
    assert calls == [
        ("fig_budget", {"budget_optimal": "a.csv"}, tmp_path / "f.pdf", tmp_path / "f.png",
         {"figures": {"dpi": 80}})
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Integration: every published archive
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_study(tmp_path_factory, published_dir: Path) -> dict[str, Path]:
    """All published zips through every table stage (the workflow's published study)."""
    root = tmp_path_factory.mktemp("full")
    t = root / "tables"
    zips = sorted(published_dir.glob("*.zip"))
    parts = []
    for z in zips:
        parts.append(t / "published" / f"{z.stem}.parquet")
        pipeline.import_published(z, z.stem, parts[-1])
    p = {k: t / f"{k}.csv" for k in (
        "thresholds", "best_batch_size", "fits_batch_size", "fits_data_efficiency",
        "compute_optimal", "budget_optimal", "budget_fits", "fit_errors",
        "allocation_strategies", "passive_critic_slopes",
    )}  # fmt: skip
    p.update(curves=t / "curves.parquet", crossings=t / "crossings.parquet",
             proposal=root / "proposal.yaml")  # fmt: skip
    pipeline.merge_curves(parts, p["curves"])
    pipeline.crossings(p["curves"], out_crossings=p["crossings"], out_thresholds=p["thresholds"],
                       out_best_batch_size=p["best_batch_size"],
                       settings=settings("crossings", n_boot=30))  # fmt: skip
    pipeline.fits(p["crossings"], p["best_batch_size"], out_batch_size=p["fits_batch_size"],
                  out_data_efficiency=p["fits_data_efficiency"],
                  settings=settings("fits", n_bootstrap=10))  # fmt: skip
    pipeline.allocation(p["crossings"], p["fits_data_efficiency"], p["fits_batch_size"],
                        out_compute_optimal=p["compute_optimal"],
                        out_budget_optimal=p["budget_optimal"], out_budget_fits=p["budget_fits"],
                        settings=settings("allocation"))  # fmt: skip
    ev = settings("evaluation")
    pipeline.fit_errors(p["crossings"], p["fits_data_efficiency"], p["best_batch_size"],
                        p["fits_batch_size"], out=p["fit_errors"], settings=ev)  # fmt: skip
    pipeline.allocation_strategies(p["crossings"], sorted((published_dir / "design").glob("*.csv")),
                                   out=p["allocation_strategies"], settings=ev)  # fmt: skip
    pipeline.passive_critic_slopes(p["curves"], out=p["passive_critic_slopes"], settings=ev)
    pipeline.proposal(p["fits_data_efficiency"], p["fits_batch_size"], p["compute_optimal"],
                      p["budget_fits"], out=p["proposal"], settings=settings("proposal"))  # fmt: skip
    return p


DMC_ABLATION_ENVS = {
    "acrobot-swingup", "cheetah-run", "finger-turn", "fish-swim", "hopper-hop", "quadruped-run",
    "walker-run", "dog-run", "dog-trot", "dog-stand", "dog-walk", "humanoid-run",
    "humanoid-walk", "humanoid-stand",
}  # fmt: skip


@pytest.mark.slow
def test_published_study_fits_every_suite(full_study: dict) -> None:
    de = pd.read_csv(full_study["fits_data_efficiency"])
    ok = de[de["status"] == "ok"]
    per_env = ok[ok["variant"] == "per_env"]
    ablation = per_env[per_env["source"] == "dmc_bro_ablations"]
    assert set(ablation["scope"]) == DMC_ABLATION_ENVS  # pendulum-swingup has no thresholds
    assert len(ablation) >= 0.95 * 14 * 20
    simba = per_env[per_env["agent"] == "simbav2"]
    assert set(simba["scope"]) == {"h1-crawl-v0", "h1-stand-v0"}
    # no usable law keeps an exponent collapsed onto a missing D_min (the known real case, SimbaV2
    # h1-stand at the paper's J range: test_data_efficiency.py::test_published_simbav2_*)
    laws = ok[ok["variant"] != "loglinear"]
    span = np.minimum(
        laws["alpha_J"] * np.log(laws["utd_max"] / laws["utd_min"]),
        laws["beta_J"] * np.log(laws["critic_params_max"] / laws["critic_params_min"]),
    )
    assert not ((span < 0.2) & (laws["D_min"] < 0.01 * laws["D_obs_min"])).any()
    hb = per_env[per_env["source"] == "fitted_bs"]
    assert set(hb["scope"]) == {"h1-crawl-v0", "h1-pole-v0", "h1-stand-v0", "humanoid-stand"}
    averaged = ok[ok["variant"] == "averaged"]
    assert {"dmc-medium", "dmc-hard", "humanoidbench"} <= set(averaged["scope"])
    params = ["D_min", "a_J", "alpha_J", "b_J", "beta_J"]
    assert np.isfinite(ok[params]).all().all()
    bs = pd.read_csv(full_study["fits_batch_size"])
    simba_bs = bs[(bs["agent"] == "simbav2") & (bs["basis"] == "B_star")]
    assert (simba_bs["status"] == "ok").all() and len(simba_bs) == 3
    assert (simba_bs["rel_error"] < 0.5).all()


@pytest.mark.slow
def test_published_study_tables_are_finite(full_study: dict) -> None:
    fe = pd.read_csv(full_study["fit_errors"])
    hb = fe[(fe["fit_source"] == "fitted_bs") & (fe["variant"] == "per_env")
            & (fe["scope"] == "average")].set_index("set")  # fmt: skip
    assert hb.loc["fitted", "mean_rel_error"] < hb.loc["interpolated", "mean_rel_error"] < 0.3
    assert hb.loc["extrapolated", "mean_rel_error"] < 0.35
    assert np.isfinite(fe["mean_rel_error"]).all()
    st = pd.read_csv(full_study["allocation_strategies"]).set_index(["strategy", "scope"])
    # at equal budgets, scaling σ alone needs more data than the compute-optimal allocation
    assert st.loc[("utd_only", "all"), "mean_ratio"] > 1.05
    assert st.loc[("model_only", "all"), "mean_ratio"] > 0.95
    ps = pd.read_csv(full_study["passive_critic_slopes"])
    main = ps[(ps["env"] == "average") & (ps["against"] == "main_width")]
    assert (main["slope"] < 0).all() and len(main) == 2
    bf = pd.read_csv(full_study["budget_fits"])
    d = bf[(bf["quantity"] == "D") & (bf["status"] == "ok")]
    assert len(d) > 30 and d["r2"].median() > 0.95
    for name in ("compute_optimal", "budget_optimal"):
        table = pd.read_csv(full_study[name])
        skipped = table[table["status"] == "skipped"]  # one row per degenerate fit
        assert len(skipped) and skipped["reason"].str.startswith("degenerate fit: ").all()
        assert (table.loc[table["status"] != "skipped", "status"] == "ok").mean() > 0.8
    blocks = yaml.safe_load(full_study["proposal"].read_text())["grid"]
    assert {b["envs"][0] for b in blocks} >= {"h1-crawl-v0", "cheetah-run", "dog-run"}


def test_bootstrap_column_matches_the_keyed_merge(published_table) -> None:
    """The fast reshape of the bootstrap table into ``D_boot`` equals the keyed merge."""
    from valuescale.analysis.crossings import crossing_tables, with_bootstrap_column
    from valuescale.analysis.data_efficiency import attach_bootstrap_table
    from valuescale.analysis.preprocess import preprocess
    from valuescale.analysis.thresholds import compute_thresholds

    df = published_table("utd_scaling_bl")
    curves = preprocess(df)
    tables = crossing_tables(curves, compute_thresholds(curves, n_thresholds=5), n_boot=7)
    fast = with_bootstrap_column(tables, 7)
    slow = attach_bootstrap_table(tables.crossings, tables.bootstrap)
    assert len(fast) == len(slow) == len(tables.crossings)
    for a, b in zip(fast["D_boot"], slow["D_boot"], strict=True):
        np.testing.assert_array_equal(a, b)
    # a shuffled bootstrap table fails the layout check and falls back to the merge
    shuffled = type(tables)(tables.crossings, tables.bootstrap.sample(frac=1.0, random_state=0))
    again = with_bootstrap_column(shuffled, 7)
    for a, b in zip(again["D_boot"], slow["D_boot"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_study_writes_every_table_with_its_columns(tmp_path) -> None:
    """A study with no usable curves still writes every named output (the DAG is fixed)."""
    t = tmp_path
    empty = t / "curves.parquet"
    rows = pd.DataFrame(
        [{"env": "cartpole-swingup", "agent": "bro", "utd": 1.0, "width": 64, "critic_params": 1,
          "batch_size": 64, "lr": 3e-4, "seed": 0, "step": 1000, "metric": "critic_loss",
          "value": 1.0, "source": "own"}]
    )  # fmt: skip
    write_table(rows, empty)  # losses only: no return curves
    p = {k: t / f"{k}.csv" for k in (
        "thresholds", "best", "fits_bs", "fits_de", "co", "bo", "bf", "fe", "slopes",
    )}  # fmt: skip
    pipeline.crossings(empty, out_crossings=t / "crossings.parquet", out_thresholds=p["thresholds"],
                       out_best_batch_size=p["best"], settings=settings("crossings"))  # fmt: skip
    pipeline.fits(t / "crossings.parquet", p["best"], out_batch_size=p["fits_bs"],
                  out_data_efficiency=p["fits_de"], settings=settings("fits"))  # fmt: skip
    pipeline.allocation(t / "crossings.parquet", p["fits_de"], p["fits_bs"],
                        out_compute_optimal=p["co"], out_budget_optimal=p["bo"],
                        out_budget_fits=p["bf"], settings=settings("allocation"))  # fmt: skip
    pipeline.fit_errors(t / "crossings.parquet", p["fits_de"], p["best"], p["fits_bs"],
                        out=p["fe"], settings=settings("evaluation"))  # fmt: skip
    pipeline.passive_critic_slopes(empty, out=p["slopes"], settings=settings("evaluation"))
    pipeline.proposal(p["fits_de"], p["fits_bs"], p["co"], p["bf"], out=t / "proposal.yaml",
                      settings=settings("proposal"))  # fmt: skip
    assert len(pd.read_parquet(t / "crossings.parquet")) == 0
    keys = {"thresholds": "thresholds", "best": "best_batch_size", "fits_bs": "fits_batch_size",
            "fits_de": "fits_data_efficiency", "co": "compute_optimal", "bo": "budget_optimal",
            "bf": "budget_fits", "fe": "fit_errors", "slopes": "passive_critic_slopes"}  # fmt: skip
    for name, key in keys.items():
        table = pd.read_csv(p[name])
        assert table.empty and list(table.columns) == catalog.columns(key), key
    assert list(pd.read_parquet(t / "crossings.parquet").columns) == catalog.columns("crossings")
    assert yaml.safe_load((t / "proposal.yaml").read_text())["grid"] == []


def test_proposal_with_real_batch_convention(study: dict, tmp_path) -> None:
    spec = settings("proposal")
    spec["compute"] = {**spec["compute"], "batch_convention": "real"}
    out = tmp_path / "proposal.yaml"
    pipeline.proposal(
        study["fits_data_efficiency"],
        study["fits_batch_size"],
        study["compute_optimal"],
        study["budget_fits"],
        out=out,
        settings=spec,
    )
    text = out.read_text()
    assert "C_J = 10 x B x sigma x N x D_J" in text
    assert yaml.safe_load(text)["grid"]


def test_compute_optimal_numeric_matches_closed_form() -> None:
    from valuescale.analysis.allocation import compute_optimal, compute_optimal_numeric

    law = {"D_min": 4e4, "a_J": 3e5, "alpha_J": 1.0, "b_J": 2e11, "beta_J": 0.6}
    D0 = 3e5
    u, n = compute_optimal_numeric(law, D0, lambda u, n: np.full(np.shape(u), 2560.0))
    cu, cn = compute_optimal(law, D0)
    assert u == pytest.approx(float(cu), rel=1e-3) and n == pytest.approx(float(cn), rel=1e-3)
    from valuescale.analysis.data_efficiency import predict_D

    assert float(predict_D(law, u, n)) == pytest.approx(D0, rel=1e-9)
    # a batch size growing with N makes N dearer: the optimum moves to smaller N, larger σ
    u2, n2 = compute_optimal_numeric(law, D0, lambda u, n: 10.0 * np.sqrt(n))
    assert n2 < n and u2 > u
    assert float(predict_D(law, u2, n2)) == pytest.approx(D0, rel=1e-9)
    assert np.isnan(compute_optimal_numeric(law, 3e4, lambda u, n: 1.0)[0])


def test_own_runs_study_end_to_end(tmp_path) -> None:
    """The default study's path: own runs (one env, 3 σ x 3 widths, one batch size) ->
    aggregate -> merge -> crossings -> fits -> allocation -> proposal for that env."""
    truth = {"D_min": 2000.0, "a_J": 3000.0, "alpha_J": 1.0, "b_J": 4e4, "beta_J": 1.0}
    runs = []
    for utd in (0.5, 1.0, 2.0):
        for width in (32, 64, 128):
            n = int(params_from_width(width, 6))
            # return rises linearly and reaches 300 + 500 at the law's D (the top threshold)
            d_top = float(truth["D_min"] + (truth["a_J"] / utd) + (truth["b_J"] / n) * 1e3)
            rows = [
                {"env": "cartpole-balance", "agent": "bro", "utd": utd, "width": width,
                 "critic_params": n, "batch_size": 64, "lr": 3e-4, "seed": seed, "step": step,
                 "metric": "return", "value": min(1000.0, 300.0 + 500.0 * step / d_top) + seed}
                for seed in (0, 1) for step in range(500, 40001, 500)
            ]  # fmt: skip
            d = tmp_path / "runs" / f"u{utd}_w{width}"
            d.mkdir(parents=True)
            pd.DataFrame(rows).to_parquet(d / "curves.parquet", index=False)
            (d / "run.json").write_text(json.dumps({"complete": True, "config": {}, "seeds": {}}))
            runs.append(d / "curves.parquet")
    t = tmp_path / "tables"
    pipeline.aggregate_runs(runs, t / "curves_own.parquet")
    pipeline.merge_curves([t / "curves_own.parquet"], t / "curves.parquet")
    spec = settings("crossings")
    spec["envs"]["cartpole-balance"] = {"j_min": 300.0, "j_max": 800.0, "max_step": None}
    pipeline.crossings(t / "curves.parquet", out_crossings=t / "crossings.parquet",
                       out_thresholds=t / "thresholds.csv",
                       out_best_batch_size=t / "best.csv", settings=spec)  # fmt: skip
    pipeline.fits(t / "crossings.parquet", t / "best.csv", out_batch_size=t / "bs.csv",
                  out_data_efficiency=t / "de.csv", settings=settings("fits"))  # fmt: skip
    alloc = settings("allocation")
    alloc["envs"]["cartpole-balance"] = {"delta": 2.5e8}
    pipeline.allocation(t / "crossings.parquet", t / "de.csv", t / "bs.csv",
                        out_compute_optimal=t / "co.csv", out_budget_optimal=t / "bo.csv",
                        out_budget_fits=t / "bf.csv", settings=alloc)  # fmt: skip
    prop = settings("proposal")
    prop["envs"]["cartpole-balance"] = {"delta": 2.5e8}
    pipeline.proposal(t / "de.csv", t / "bs.csv", t / "co.csv", t / "bf.csv",
                      out=tmp_path / "proposal.yaml", settings=prop)  # fmt: skip
    de = pd.read_csv(t / "de.csv")
    per_env = de[de["variant"] == "per_env"]
    assert set(de["source"]) == {"own"} and (per_env["status"] == "ok").mean() > 0.8
    bs = pd.read_csv(t / "bs.csv")
    assert bs[["status", "B_geomean"]].values.tolist() == [["constant", 64.0]]
    blocks = yaml.safe_load((tmp_path / "proposal.yaml").read_text())["grid"]
    assert blocks and all(b["envs"] == ["cartpole-balance"] for b in blocks)
    assert all(b["batch_sizes"] == [64] for b in blocks)  # the runs' batch size
