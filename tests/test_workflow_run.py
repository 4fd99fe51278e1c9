"""Real workflow runs: published-zip fetching and verification, the default study end to end (every
cell, table and figure, its report), and kill-and-resume of a study's training.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from studies import (
    README_TARGET,
    RETRAINED,
    SHARED_STEPS,
    copy_study,
    forget_cell,
    run_dirs,
    snakemake,
    snakemake_cmd,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_PUBLISHED = ROOT.parent / "shared" / "data" / "published"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- published zips


def published_study(source: Path, zips: dict) -> dict:
    return {"grid": [], "published_source": str(source), "published": {"zips": zips}}


@pytest.fixture
def small_zip() -> Path:
    if not SHARED_PUBLISHED.is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI needs ../shared/data/published")
        pytest.skip("../shared/data/published not present")
    return SHARED_PUBLISHED / "utd_scaling_bl.zip"


def test_fetch_copies_and_verifies_a_known_checksum(tmp_path, small_zip):
    expected = sha256(small_zip)
    config = published_study(SHARED_PUBLISHED, {"utd_scaling_bl": {"sha256": expected}})
    snakemake(tmp_path, config, "-c1", "resources/published/utd_scaling_bl.zip")
    fetched = tmp_path / "resources" / "published" / "utd_scaling_bl.zip"
    assert sha256(fetched) == expected
    log = (tmp_path / "results" / "logs" / "published_fetch" / "utd_scaling_bl.log").read_text()
    assert expected in log


def test_fetch_refuses_a_corrupt_zip_and_leaves_nothing(tmp_path, small_zip):
    source = tmp_path / "source"
    source.mkdir()
    data = bytearray(small_zip.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (source / "utd_scaling_bl.zip").write_bytes(bytes(data))
    config = published_study(source, {"utd_scaling_bl": {"sha256": sha256(small_zip)}})
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, config, "-c1", "resources/published/utd_scaling_bl.zip", check=False)
    assert proc.returncode != 0
    log = (work / "results" / "logs" / "published_fetch" / "utd_scaling_bl.log").read_text()
    assert "SHA-256 mismatch" in log and sha256(small_zip) in log
    assert not list((work / "resources" / "published").glob("utd_scaling_bl.zip*"))


def test_fetch_records_an_unknown_checksum_then_holds_to_it(tmp_path, small_zip):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copyfile(small_zip, source / "overfitting.zip")
    config = published_study(source, {"overfitting": {"sha256": None, "optional": True}})
    work = tmp_path / "work"
    work.mkdir()
    target = "resources/published/overfitting.zip"
    snakemake(work, config, "-c1", target)
    record = work / "resources" / "published" / "checksums" / "overfitting.sha256"
    assert record.read_text().split()[0] == sha256(small_zip)
    # the source changes: a fresh fetch is checked against the recorded checksum
    (work / target).unlink()
    (source / "overfitting.zip").write_bytes(small_zip.read_bytes() + b"x")
    proc = snakemake(work, config, "-c1", target, check=False)
    assert proc.returncode != 0
    assert not (work / target).exists()


# --------------------------------------------------------------------------- the default study
# All of these read the shared study (tests/studies.py): the README's default config, trained
# once per pytest run, shorter than the default only in train.steps (SHARED_STEPS).


@pytest.mark.slow
def test_readme_default_study_end_to_end(default_study, tmp_path):
    """The README's first command on the default config (shorter runs, see tests/studies.py),
    then the rest of the study: every train job complete, every table, D_J fits that are ok only
    when sound (the allocation skipping the others), a figure, and nothing left to do."""
    first, rest = default_study.stages
    assert first.args[-1] == README_TARGET
    assert README_TARGET in first.files_after
    # the train jobs compiled into the study's shared cache (config key compilation_cache)
    cache = [f for f in first.files_after if f.startswith("resources/xla-cache/")]
    assert sum(f.endswith("-cache") for f in cache) >= 10, cache
    config = default_study.config
    grid = config["grid"][0]
    runs = default_study.complete_runs()
    assert len(runs) == len(grid["utd"]) * len(grid["widths"]) * len(grid["batch_sizes"])
    for run in runs:
        assert run["complete"] and run["env_steps"] == SHARED_STEPS
        assert run["seeds"] == {str(s): {"status": "ok"} for s in range(config["seeds"])}
    print(f"shared study: {first.seconds:.0f} s to {README_TARGET}, then {rest.seconds:.0f} s")

    tables = default_study.workdir / "results" / "tables"
    for name in ["fits_data_efficiency.csv", "compute_optimal.csv", "thresholds.csv"]:
        assert (tables / name).stat().st_size > 0
    # A fit is ok only when sound: 3,000 steps are too few for this grid's law (the 20,000-step
    # default's, all 20 thresholds ok, is measured by benchmarks/default_study.py), so what the
    # short study gives must say why when it is not ok, and the allocation must skip every
    # degenerate fit.
    fits = pd.read_csv(tables / "fits_data_efficiency.csv")
    assert len(fits) == 20 and set(fits["status"]) <= {"ok", "degenerate", "failed"}
    not_ok = fits[fits["status"] != "ok"]
    assert not_ok["reason"].fillna("").str.strip().ne("").all(), not_ok[["threshold_idx", "reason"]]
    allocation = pd.read_csv(tables / "compute_optimal.csv")
    skipped = allocation[allocation["status"] == "skipped"]["threshold_idx"]
    assert set(skipped) == set(fits[fits["status"] == "degenerate"]["threshold_idx"])
    allocated = allocation[allocation["status"] == "ok"]["threshold_idx"]
    assert set(allocated) <= set(fits[fits["status"] == "ok"]["threshold_idx"])
    assert (default_study.workdir / "results" / "proposal.yaml").is_file()
    for name in ["fig_scaling", "fig_data_efficiency", "fig_learning_curves"]:
        for ext in ("pdf", "png"):
            assert f"results/figures/{name}.{ext}" in rest.files_after, name
    proc = snakemake(default_study.workdir, config, "-n", config_file=tmp_path / "study.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_default_study_tables_cover_every_cell_seed_and_evaluation(default_study):
    """The study table holds every evaluation of every seed of every cell of the default grid,
    and the crossings table every (cell, threshold). (Learning itself is asserted on a longer
    run in test_train.py::test_short_run_learns: at SHARED_STEPS the default cells are still
    near the random return.)"""
    config = default_study.config
    grid = config["grid"][0]
    tables = default_study.workdir / "results" / "tables"
    returns = pd.read_parquet(tables / "curves.parquet").query("metric == 'return'")
    interval = config["train"]["eval_interval"]
    evals = set(range(interval, SHARED_STEPS + 1, interval))
    per_cell = returns.groupby(["utd", "width", "seed"])["step"].apply(set)
    assert len(per_cell) == len(grid["utd"]) * len(grid["widths"]) * config["seeds"]
    assert all(steps >= evals for steps in per_cell), per_cell
    assert np.isfinite(returns["value"]).all()
    crossings = pd.read_parquet(tables / "crossings.parquet")
    cells = crossings.groupby(["utd", "width"])["threshold_idx"].nunique()
    assert len(cells) == 9 and (cells == cells.max()).all() and cells.max() > 1, cells


@pytest.mark.slow
def test_report_of_the_default_study(default_study, tmp_path):
    report = tmp_path / "report.html"
    snakemake(
        default_study.workdir,
        default_study.config,
        "--report",
        str(report),
        timeout=600,
        config_file=tmp_path / "study.yaml",
    )
    html = report.read_text(errors="replace")
    for name in ["fig_scaling.png", "fig_data_efficiency.png", "fits_data_efficiency.csv"]:
        assert name in html, name
    # the study summary page (test_summary.py renders it), embedded as built
    page = (default_study.workdir / "results" / "summary.html").read_bytes()
    assert base64.b64encode(page).decode() in html and "Study summary" in html


@pytest.mark.slow
def test_killed_workflow_resumes_the_interrupted_cell_and_redoes_no_finished_cell(
    default_study, tmp_path
):
    """One cell of the built study is forgotten and retrained; Snakemake and its job are killed
    (SIGKILL to the whole process group) after the cell's first checkpoint. The rerun resumes
    that cell from its checkpoint, touches no other cell, and gives exactly the curves and the
    study table of the uninterrupted build."""
    study = copy_study(default_study.workdir, tmp_path / "study")
    forget_cell(study, RETRAINED)
    config = copy.deepcopy(default_study.config)
    config["train"]["checkpoint_every"] = 1000  # operational: no other cell goes stale
    finished = {d: (d / "curves.parquet").stat().st_mtime_ns for d in run_dirs(study)}
    target = f"{RETRAINED}/curves.parquet"
    planned = snakemake(study, config, "-n", "results/tables/curves.parquet")
    assert planned.stdout.count("rule train:") == 1, planned.stdout

    proc = subprocess.Popen(
        snakemake_cmd(study, config, "-c1", target),
        cwd=study,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (study / RETRAINED / "checkpoint.pkl").is_file(),
            proc,
            timeout=600,
            what="a checkpoint of the retrained cell",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the engine it started
        proc.wait()
    # nothing of the unfinished cell is under an output name, so nothing can aggregate it
    assert not (study / RETRAINED / "curves.parquet").exists()
    assert not (study / RETRAINED / "run.json").exists()

    snakemake(study, config, "--unlock")
    snakemake(study, config, "-c1", "--rerun-incomplete", "results/tables/curves.parquet",
              timeout=900)  # fmt: skip
    for run, mtime in finished.items():
        assert (run / "curves.parquet").stat().st_mtime_ns == mtime, f"{run} was redone"
    summary = json.loads((study / RETRAINED / "run.json").read_text())
    assert summary["complete"] and summary["env_steps"] == SHARED_STEPS
    assert len(summary["resumed_at_steps"]) == 1
    assert 0 < summary["resumed_at_steps"][0] < SHARED_STEPS
    assert not (study / RETRAINED / "checkpoint.pkl").exists()
    original = default_study.workdir
    for name in (f"{RETRAINED}/curves.parquet", "results/tables/curves.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(study / name),
            pd.read_parquet(original / name),
            check_exact=True,
            obj=name,
        )
    proc = snakemake(study, config, "-n", "results/tables/curves.parquet")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_snakemake_killed_alone_leaves_an_engine_whose_run_the_rerun_takes_as_it_is(
    default_study, tmp_path
):
    """kill -9 of the Snakemake process alone, mid-cell: its train job's engine outlives it and
    finishes the cell (nothing of it under an output name until then). ``--unlock`` and
    ``--rerun-incomplete`` then rerun that job, and Snakemake deletes its outputs first; the
    engine puts back the copy of the complete run it kept (``.complete/``) instead of training
    the cell again. The cell was trained once, never resumed, and its curves and the study table
    equal the uninterrupted build's. (A rerun started while the engine still trains waits for it:
    ``test_checkpoint.py::test_a_waiting_engine_enters_the_folder_when_its_holder_ends``.)"""
    from valuescale.checkpoint import run_folder_holder

    study = copy_study(default_study.workdir, tmp_path / "study")
    forget_cell(study, RETRAINED)
    config = copy.deepcopy(default_study.config)
    config["train"]["checkpoint_every"] = 1000  # operational: no other cell goes stale
    finished = {d: (d / "curves.parquet").stat().st_mtime_ns for d in run_dirs(study)}
    run = study / RETRAINED
    proc = subprocess.Popen(
        snakemake_cmd(study, config, "-c1", f"{RETRAINED}/curves.parquet"),
        cwd=study,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: (run / "checkpoint.pkl").is_file(), proc, timeout=600,
                 what="a checkpoint of the retrained cell")  # fmt: skip
        engine = int(run_folder_holder(run))
        os.kill(proc.pid, signal.SIGKILL)  # Snakemake only: its job lives on
        proc.wait()
        assert not (run / "curves.parquet").exists() and not (run / "run.json").exists()
        deadline = time.monotonic() + 600
        while run_folder_holder(run) is not None:  # the orphaned engine finishes the cell
            assert time.monotonic() < deadline, "the orphaned engine did not finish"
            time.sleep(0.2)
    finally:
        if _group_alive(proc.pid):  # the test failed midway: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
    assert engine != proc.pid
    orphan_run = (run / "run.json").read_bytes()
    assert json.loads(orphan_run)["resumed_at_steps"] == []

    snakemake(study, config, "--unlock")
    rerun = snakemake(study, config, "-c1", "--rerun-incomplete", "results/tables/curves.parquet",
                      timeout=900)  # fmt: skip
    assert rerun.stdout.count("rule train:") + rerun.stderr.count("rule train:") == 1
    log = (study / RETRAINED.replace("results/runs", "results/logs/train")).with_suffix(".log")
    assert "put back from .complete" in log.read_text(errors="replace")
    assert (run / "run.json").read_bytes() == orphan_run  # the engine's own run, not a new one
    for d, mtime in finished.items():
        assert (d / "curves.parquet").stat().st_mtime_ns == mtime, f"{d} was redone"
    original = default_study.workdir
    for name in (f"{RETRAINED}/curves.parquet", "results/tables/curves.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(study / name), pd.read_parquet(original / name), check_exact=True,
            obj=name,
        )  # fmt: skip
    proc = snakemake(study, config, "-n", "results/tables/curves.parquet")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
