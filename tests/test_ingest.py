"""Ingest of the published archives and of our own runs; the atomic table writer."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from valuescale.analysis.ingest import (
    CURVE_COLUMNS,
    TABLE_COLUMNS,
    PublishedDataError,
    import_published,
    import_published_dir,
    import_runs,
    normalise_metric,
    read_sha256sums,
    read_table,
    sha256_file,
    verify_sha256,
    write_table,
)

STEMS = [
    "compute_optimal",
    "dmc_bro_ablations",
    "extrapolated_bs",
    "fitted_bs",
    "interpolated_bs",
    "n_scaling_bl",
    "side_critic",
    "simbav2_model_scaling_linear20_with_base",
    "utd_scaling_bl",
]
HB = {"h1-crawl-v0", "h1-pole-v0", "h1-stand-v0"}
HB4 = HB | {"humanoid-stand"}
DMC15 = {
    "acrobot-swingup",
    "cheetah-run",
    "finger-turn",
    "fish-swim",
    "hopper-hop",
    "quadruped-run",
    "walker-run",
    "dog-run",
    "dog-trot",
    "dog-stand",
    "dog-walk",
    "humanoid-run",
    "humanoid-walk",
    "humanoid-stand",
    "pendulum-swingup",
}
# zip stem -> (envs, utds, widths that must be present)
EXPECTED = {
    "fitted_bs": (HB4, {1, 2, 4, 8}, {128, 256, 512, 1024, 2048}),
    "interpolated_bs": (HB4, {3, 6, 12}, {176, 368, 720, 1456, 2896}),
    "extrapolated_bs": (HB4, {1, 2, 4, 8, 16}, {128, 256, 512, 1024, 2048, 4096}),
    "compute_optimal": (HB4, {1, 2, 3, 4, 5, 7, 10, 11, 18}, {240, 1552, 3024}),
    "n_scaling_bl": (HB4, {2}, {256, 4240}),
    "utd_scaling_bl": (HB4, {1, 3, 17}, {512}),
    "side_critic": (HB, {2}, {512, 1024, 2048}),
    "simbav2_model_scaling_linear20_with_base": (
        {"h1-crawl-v0", "h1-stand-v0"},
        {1, 2, 4, 8},
        {128, 256, 512, 1024, 2048},
    ),
    "dmc_bro_ablations": (DMC15, {1, 2, 5, 10, 15}, set()),
}


def bro_critic_params(width: int, d_in: int) -> int:
    """method.md: N = 2 (4 W^2 + (d_in + 115) W + 100) for depth 2."""
    return 2 * (4 * width**2 + (d_in + 115) * width + 100)


# --------------------------------------------------------------------------- real archives


@pytest.mark.parametrize("stem", STEMS)
def test_every_published_zip_imports(published_table, stem: str) -> None:
    df = published_table(stem)
    envs, utds, widths = EXPECTED[stem]
    assert len(df) > 0
    assert list(df.columns) == TABLE_COLUMNS
    assert df["value"].notna().all() and np.isfinite(df["value"]).all()
    assert (df["source"] == stem).all()
    assert set(df["env"]) == envs
    assert utds <= set(df["utd"])
    assert widths <= set(df["width"].dropna().astype(int))
    assert (df["critic_params"] > 0).all() and (df["batch_size"] > 0).all()
    assert (df["step"] > 0).all() or stem.startswith("simbav2")
    assert "return" in set(df["metric"])
    assert str(df["width"].dtype) == "Int64" and df["critic_params"].dtype == np.int64
    assert df["utd"].dtype == np.float64 and df["step"].dtype == np.int64
    assert df["metric"].dtype == "str" and df["env"].dtype == "str"
    key = ["env", "utd", "critic_params", "batch_size", "lr", "passive_width", "metric"]
    assert not df.duplicated(key + ["seed", "step"]).any()


def test_bro_critic_params_follow_the_formula(published_table) -> None:
    df = published_table("fitted_bs")
    configs = df[["env", "width", "critic_params"]].drop_duplicates()
    for row in configs.itertuples():
        d_in = 88 if row.env == "humanoid-stand" else 70  # 67 + 21; HumanoidBench 51 + 19
        assert row.critic_params == bro_critic_params(int(row.width), d_in), row
    assert {2_286_792, 2_305_224} <= set(configs["critic_params"])


def test_simbav2_sizes_metrics_and_seed_means(published_table) -> None:
    df = published_table("simbav2_model_scaling_linear20_with_base")
    assert set(df["agent"]) == {"simbav2"}
    assert set(df["metric"]) == {"return", "critic_loss", "validation_critic_loss"}
    w512 = df.loc[df["width"] == 512, "critic_params"].unique()
    assert list(w512) == [9_101_514]
    assert set(df["batch_size"]) == {256, 512, 1024, 2048}
    assert (df["lr"] == 1e-4).all()
    # the first evaluation is at step 0, every 20k steps after
    steps = np.sort(df["step"].unique())
    assert steps[0] == 0 and np.all(np.diff(steps) == 20_000)
    # columns are 5-seed means kept as seeds 0..k-1
    seeds = df.groupby(["env", "utd", "width", "batch_size"])["seed"].agg(["min", "max", "nunique"])
    assert (seeds["min"] == 0).all() and (seeds["nunique"] == seeds["max"] + 1).all()


def test_ablation_layout_dmc_only(published_table, caplog) -> None:
    df = published_table("dmc_bro_ablations")
    assert not df["env"].str.startswith("myo-").any()
    assert not df["env"].str.endswith("goal-observable").any()
    assert df["width"].isna().all()
    assert set(df["critic_params"]) == {550_000, 1_050_000, 2_830_000, 4_920_000, 26_310_000}
    assert set(df["batch_size"]) == {1024} and set(df["lr"]) == {3e-4}
    assert set(df["seed"]) == set(range(10))
    assert df["step"].min() == 25_000 and df["step"].max() == 1_000_000
    # 15 DMC tasks x 5 utd x 5 sizes x 10 seeds x 40 evaluations
    assert len(df) == 15 * 5 * 5 * 10 * 40


def test_ablation_skip_is_logged(published_dir: Path, caplog) -> None:
    with caplog.at_level("INFO", logger="valuescale.analysis.ingest"):
        import_published(published_dir / "dmc_bro_ablations.zip")
    assert "skipped 625 MetaWorld/MyoSuite members" in caplog.text


def test_side_critic_passive_columns(published_table) -> None:
    df = published_table("side_critic")
    metrics = set(df["metric"])
    assert {"passive_critic_loss", "passive_validation_critic_loss"} <= metrics
    assert "separate_critic_loss" not in metrics
    assert df["passive_width"].notna().all()
    sizes = df[["passive_width", "passive_critic_params"]].drop_duplicates()
    expected = {(w, bro_critic_params(w, 70)) for w in (512, 1024, 2048)}
    assert {tuple(map(int, r)) for r in sizes.to_numpy()} == expected
    # losses are logged every 5k steps, returns every 25k (NaN rows in between are dropped)
    assert set(df.loc[df["metric"] == "return", "step"] % 25_000) == {0}
    assert (df.loc[df["metric"] == "critic_loss", "step"] % 25_000 != 0).any()


def test_runs_without_passive_critic_have_no_passive_rows(published_table) -> None:
    df = published_table("fitted_bs")
    assert set(df["metric"]) == {"return", "critic_loss", "validation_critic_loss"}
    assert df["passive_width"].isna().all()


@pytest.mark.parametrize(
    ("design", "stem"),
    [
        ("hb_compute_optimal_250509", "compute_optimal"),
        ("hb_n_scaling_250531", "n_scaling_bl"),
        ("hb_utd_scaling_250531", "utd_scaling_bl"),
    ],
)
def test_allocation_runs_match_design_tables(
    published_dir: Path, published_table, design: str, stem: str
) -> None:
    table = pd.read_csv(published_dir / "design" / f"{design}.csv")
    expected = {
        (r.env_name, float(r.utd), int(r.critic_width), int(r.batch_size_rounded))
        for r in table.itertuples()
    }
    df = published_table(stem)
    runs = df.loc[df["metric"] == "return", ["env", "utd", "width", "batch_size"]]
    got = {(e, float(u), int(w), int(b)) for e, u, w, b in runs.drop_duplicates().to_numpy()}
    assert got == expected


def test_sha256sums_verify(published_dir: Path) -> None:
    sums = read_sha256sums(published_dir / "SHA256SUMS")
    assert set(sums) == {f"{s}.zip" for s in STEMS}
    verify_sha256(published_dir / "fitted_bs.zip", sums["fitted_bs.zip"])
    with pytest.raises(PublishedDataError, match="fitted_bs.zip: SHA-256 mismatch"):
        verify_sha256(published_dir / "fitted_bs.zip", sums["side_critic.zip"])


def test_import_published_dir_concatenates_verified_zips(published_dir: Path) -> None:
    df = import_published_dir(published_dir, names=["utd_scaling_bl", "n_scaling_bl"])
    assert set(df["source"]) == {"utd_scaling_bl", "n_scaling_bl"}
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        import_published_dir(published_dir, names=["nope"])


# --------------------------------------------------------------------------- crafted archives


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


BRO_NAME = (
    "demo/w64p{params}/utd_2/cheetah-run/{metric}/"
    "bs_256_lr_0.0003_hard_False_1000_targnoise_none_0_sep_False_w512p1_nstep_1_usenstep_False.npy"
)


def _bro_array(n_steps: int = 4, n_seeds: int = 3) -> np.ndarray:
    steps = 25_000.0 * np.arange(1, n_steps + 1)
    values = np.arange(n_steps * n_seeds, dtype=float).reshape(n_steps, n_seeds)
    return np.column_stack([steps, values])


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_crafted_bro_zip_rows_padding_and_metric_names(tmp_path: Path) -> None:
    array = _bro_array()
    array[3, 2] = np.nan  # padding of seed 1 at the last step
    array[:, 3] = np.nan  # an all-NaN seed column
    members = {
        BRO_NAME.format(params=1234, metric="return"): _npy(array),
        BRO_NAME.format(params=1234, metric="eval\N{SAUROPOD}avg_return"): _npy(_bro_array()),
        "demo/": b"",
        "demo/.DS_Store": b"junk",
    }
    df = import_published(_write_zip(tmp_path / "demo.zip", members), name="mine")
    assert set(df["source"]) == {"mine"}
    assert set(df["metric"]) == {"return", "eval/avg_return"}
    ret = df[df["metric"] == "return"]
    assert len(ret) == 4 + 3  # seed 0: 4 steps, seed 1: 3 steps, seed 2: none
    assert set(ret["seed"]) == {0, 1}
    row = ret[(ret["seed"] == 1) & (ret["step"] == 75_000)].iloc[0]
    assert row["value"] == array[2, 2]
    assert row["width"] == 64 and row["critic_params"] == 1234 and row["utd"] == 2.0
    assert row["batch_size"] == 256 and row["lr"] == pytest.approx(3e-4)


def test_metric_name_normalisation() -> None:
    assert normalise_metric("avg_return") == "return"
    assert normalise_metric("val_critic_loss") == "validation_critic_loss"
    assert normalise_metric("separate_critic_loss") == "passive_critic_loss"
    assert normalise_metric("sep_validation_critic_loss") == "passive_validation_critic_loss"
    assert normalise_metric("critic_loss") == "critic_loss"
    assert normalise_metric("a\N{SAUROPOD}b") == "a/b"


def test_crafted_ablation_zip(tmp_path: Path, caplog) -> None:
    returns = np.linspace(0, 900, 30).reshape(3, 10)
    members = {
        "ablations_rr/rr5_sm/cheetah-run.npy": _npy(returns),
        "ablations_rr/rr5_sm/finger-turn_hard.npy": _npy(returns),
        "ablations_rr/rr5_sm/reach-v2-goal-observable.npy": _npy(returns.astype(np.int64)),
        "ablations_rr/rr5_sm/myo-reach.npy": _npy(returns),
    }
    with caplog.at_level("INFO", logger="valuescale.analysis.ingest"):
        df = import_published(_write_zip(tmp_path / "abl.zip", members))
    assert "skipped 2 MetaWorld/MyoSuite" in caplog.text
    assert set(df["env"]) == {"cheetah-run", "finger-turn"}
    assert set(df["step"]) == {25_000, 50_000, 75_000}
    assert set(df["critic_params"]) == {2_830_000} and set(df["utd"]) == {5.0}
    cheetah = df[(df["env"] == "cheetah-run") & (df["seed"] == 3)].sort_values("step")
    np.testing.assert_array_equal(cheetah["value"], returns[:, 3])


def test_truncated_zip_is_refused(tmp_path: Path) -> None:
    good = _write_zip(tmp_path / "good.zip", {BRO_NAME.format(params=1, metric="return"): b"x"})
    data = good.read_bytes()
    bad = tmp_path / "truncated.zip"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(PublishedDataError, match="truncated.zip: not a readable zip"):
        import_published(bad)


def test_corrupt_member_is_named(tmp_path: Path) -> None:
    name = BRO_NAME.format(params=1, metric="return")
    payload = _npy(_bro_array(50, 5))
    path = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(name, payload)
    raw = bytearray(path.read_bytes())
    start = raw.find(payload)
    raw[start + len(payload) // 2] ^= 0xFF  # flip a byte inside the stored member
    path.write_bytes(bytes(raw))
    with pytest.raises(PublishedDataError) as info:
        import_published(path)
    assert "corrupt.zip" in str(info.value) and name in str(info.value)


def test_member_that_is_not_npy_data_is_named(tmp_path: Path) -> None:
    name = BRO_NAME.format(params=1, metric="return")
    path = _write_zip(tmp_path / "garbage.zip", {name: b"definitely not an npy file"})
    with pytest.raises(PublishedDataError, match="cannot be read") as info:
        import_published(path)
    assert name in str(info.value)


@pytest.mark.parametrize(
    "member",
    [
        "demo/w64/utd_2/cheetah-run/return/bs_256_lr_0.0003.npy",
        "demo/w64p12/utd_x/cheetah-run/return/bs_256.npy",
        "ablations_rr/rr5_huge/cheetah-run.npy",
        "demo/notes.txt",
    ],
)
def test_unparseable_member_path_is_named(tmp_path: Path, member: str) -> None:
    path = _write_zip(tmp_path / "paths.zip", {member: _npy(_bro_array())})
    with pytest.raises(PublishedDataError, match="matches none of the published layouts") as info:
        import_published(path)
    assert "paths.zip" in str(info.value) and member in str(info.value)


def test_unknown_ablation_task_is_refused(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "abl.zip", {"ablations_rr/rr1_s/pong.npy": _npy(np.ones((3, 2)))})
    with pytest.raises(PublishedDataError, match="'pong' is neither a DeepMind Control"):
        import_published(path)


def test_unsupported_run_variant_is_refused(tmp_path: Path) -> None:
    name = BRO_NAME.format(params=1, metric="return").replace("nstep_1", "nstep_3")
    path = _write_zip(tmp_path / "variant.zip", {name: _npy(_bro_array())})
    with pytest.raises(PublishedDataError, match="nstep='3'"):
        import_published(path)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.arange(5.0), "expected a 2-D array, got shape \\(5,\\)"),
        (np.ones((2, 3, 4)), "expected a 2-D array"),
        (25_000.0 * np.arange(1, 4)[:, None], "step column and at least one seed column"),
        (np.column_stack([[25_000.0, 25_000.0], [1.0, 2.0]]), "not strictly increasing"),
        (np.column_stack([[np.nan, 25_000.0], [1.0, 2.0]]), "finite whole numbers"),
        (np.array([["a", "b"], ["c", "d"]]), "expected a numeric array"),
    ],
)
def test_wrong_array_shape_or_type_is_named(tmp_path: Path, array: np.ndarray, message) -> None:
    name = BRO_NAME.format(params=1, metric="return")
    path = _write_zip(tmp_path / "shape.zip", {name: _npy(array)})
    with pytest.raises(PublishedDataError, match=message) as info:
        import_published(path)
    assert "shape.zip" in str(info.value) and name in str(info.value)


def test_ablation_array_must_be_2d(tmp_path: Path) -> None:
    member = "ablations_rr/rr1_s/cheetah-run.npy"
    path = _write_zip(tmp_path / "abl.zip", {member: _npy(np.ones(40))})
    with pytest.raises(PublishedDataError, match="expected a 2-D array") as info:
        import_published(path)
    assert member in str(info.value)


def test_duplicate_curves_are_refused(tmp_path: Path) -> None:
    members = {
        BRO_NAME.format(params=7, metric="return"): _npy(_bro_array()),
        BRO_NAME.format(params=7, metric="avg_return"): _npy(_bro_array()),
    }
    with pytest.raises(PublishedDataError, match="two members hold the same curves"):
        import_published(_write_zip(tmp_path / "dup.zip", members))


def test_read_sha256sums_formats_and_errors(tmp_path: Path) -> None:
    digest = "ab" * 32
    good = tmp_path / "SUMS"
    good.write_text(f"# comment\n{digest}  a.zip\n\n{digest.upper()} *b c.zip\n")
    assert read_sha256sums(good) == {"a.zip": digest, "b c.zip": digest}
    bad = tmp_path / "BAD"
    bad.write_text(f"{digest}  a.zip\nnot-a-digest b.zip\n")
    with pytest.raises(ValueError, match="BAD: line 2"):
        read_sha256sums(bad)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(payload) == expected
    verify_sha256(payload, expected.upper())


# --------------------------------------------------------------------------- own runs, writer


def _own_curves(utd: float, n_seeds: int = 2) -> pd.DataFrame:
    steps = np.arange(1, 4) * 5_000
    rows = [
        {
            "env": "cheetah-run",
            "agent": "bro",
            "utd": utd,
            "width": 64,
            "critic_params": bro_critic_params(64, 23),
            "batch_size": 128,
            "lr": 3e-4,
            "seed": seed,
            "step": int(step),
            "metric": metric,
            "value": float(seed + step / 1000) if metric == "return" else np.nan,
        }
        for seed in range(n_seeds)
        for step in steps
        for metric in ("return", "validation_critic_loss")
    ]
    return pd.DataFrame(rows)


def test_import_runs_concatenates_parquet_cells(tmp_path: Path) -> None:
    paths = []
    for utd in (1, 2):
        path = tmp_path / f"utd{utd}" / "curves.parquet"
        write_table(_own_curves(utd), path)
        paths.append(path)
    df = import_runs(paths)
    assert list(df.columns) == TABLE_COLUMNS
    assert set(df["source"]) == {"own"} and set(df["utd"]) == {1.0, 2.0}
    assert set(df["metric"]) == {"return"}  # the all-NaN loss rows are dropped
    assert len(df) == 2 * 2 * 3
    assert df["passive_width"].isna().all() and str(df["width"].dtype) == "Int64"
    assert import_runs([]).columns.tolist() == TABLE_COLUMNS


def test_import_runs_errors_name_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "curves.parquet"
    write_table(_own_curves(1).drop(columns=["critic_params"]), path)
    with pytest.raises(
        ValueError, match=r"curves.parquet: missing required column\(s\) \['critic_params'\]"
    ):
        import_runs([path])
    broken = _own_curves(1)
    broken["seed"] = "first"
    write_table(broken, path)
    with pytest.raises(ValueError, match="curves.parquet: column 'seed' cannot be cast"):
        import_runs([path])
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        import_runs([tmp_path / "missing.parquet"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_table_round_trip(tmp_path: Path, suffix: str) -> None:
    df = _own_curves(1).dropna()
    path = tmp_path / "deep" / f"table{suffix}"
    write_table(df, path)
    back = read_table(path)
    assert list(back.columns) == CURVE_COLUMNS
    np.testing.assert_allclose(back["value"], df["value"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_table_leaves_nothing_partial_on_error(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    write_table(pd.DataFrame({"a": [1, 2]}), path)
    before = path.read_bytes()
    unserialisable = pd.DataFrame({"a": [object(), object()]})
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's error type is an implementation detail
        write_table(unserialisable, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]
    with pytest.raises(ValueError, match="unsupported table format '.xlsx'"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx")
