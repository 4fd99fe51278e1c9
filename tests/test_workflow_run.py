"""Real workflow runs: published-zip fetching and verification, kill-and-resume of training, and the
default study end to end with its report.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_PUBLISHED = ROOT.parent / "shared" / "data" / "published"
HAS_PIPELINE = importlib.util.find_spec("valuescale.pipeline") is not None


def snakemake_cmd(workdir: Path, config: dict, *args: str) -> list[str]:
    cfg = workdir / "study.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
    return cmd + ["--directory", str(workdir), "--configfile", str(cfg), *args]


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True, timeout=None):
    proc = subprocess.run(
        snakemake_cmd(workdir, config, *args),
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


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


# --------------------------------------------------------------------------- kill and resume


def tiny_training_study(steps: int) -> dict:
    return {
        "seeds": [0],
        "grid": [
            {
                "envs": ["cartpole-balance"],
                "utd": [1],
                "widths": [16, 24],
                "batch_sizes": [16],
                "lrs": [3.0e-4],
            }
        ],
        "train": {
            "steps": steps,
            "warmup_steps": 200,
            "eval_interval": 500,
            "eval_episodes": 1,
            "replay_size": steps,
            "checkpoint_every": 500,
            "log_interval": 250,
            "actor_width": 16,
            "n_quantiles": 4,
            "max_episode_steps": 250,
        },
        "analysis": {"envs": {"cartpole-balance": {"j_min": 100.0}}},
    }


@pytest.mark.slow
def test_killed_workflow_resumes_the_interrupted_cell_and_redoes_no_finished_cell(tmp_path):
    config = tiny_training_study(steps=6000)
    runs = tmp_path / "results" / "runs" / "cartpole-balance" / "bro"
    first = runs / "utd1_w16_b16_lr3e-4" / "seeds0-0"
    second = runs / "utd1_w24_b16_lr3e-4" / "seeds0-0"
    targets = [str((d / "curves.parquet").relative_to(tmp_path)) for d in (first, second)]
    # -c1: the cells run one after the other (w16 first: the order of the targets)
    cmd = snakemake_cmd(tmp_path, config, "-c1", *targets)
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 600
        finished = None
        while time.monotonic() < deadline and proc.poll() is None:
            for done, running in [(first, second), (second, first)]:
                run_json = done / "run.json"
                if run_json.is_file() and json.loads(run_json.read_text()).get("complete"):
                    if (running / "checkpoint.pkl").is_file():
                        finished = (done, running)
            if finished:
                break
            time.sleep(0.2)
        assert finished, "never saw one finished cell and one checkpointed cell"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the engine it started
        proc.wait()
    done, interrupted = finished
    done_mtime = (done / "curves.parquet").stat().st_mtime_ns
    time.sleep(1)

    snakemake(tmp_path, config, "--unlock")
    snakemake(tmp_path, config, "-c1", "--rerun-incomplete", *targets, timeout=600)
    assert (done / "curves.parquet").stat().st_mtime_ns == done_mtime, "a finished cell was redone"
    summary = json.loads((interrupted / "run.json").read_text())
    assert summary["complete"] and summary["env_steps"] == 6000
    assert len(summary["resumed_at_steps"]) == 1 and 0 < summary["resumed_at_steps"][0] < 6000
    assert not (interrupted / "checkpoint.pkl").exists()
    # and nothing is left to do
    proc = snakemake(tmp_path, config, "-n", *targets)
    assert "Nothing to be done" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the default study


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_PIPELINE, reason="valuescale.pipeline (the analysis stages) not there yet"
)
def test_default_study_end_to_end_with_report(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    snakemake(tmp_path, config, "--cores", "2", "results/figures/fig_scaling.pdf", timeout=3600)
    assert (tmp_path / "results" / "figures" / "fig_scaling.pdf").stat().st_size > 0
    # the train jobs compiled into the shared cache (config key compilation_cache)
    assert len(list((tmp_path / "resources" / "xla-cache").glob("*-cache"))) >= 10
    # everything the study makes, then the report
    snakemake(tmp_path, config, "--cores", "2", timeout=3600)
    tables = tmp_path / "results" / "tables"
    for name in ["fits_data_efficiency.csv", "compute_optimal.csv", "thresholds.csv"]:
        assert (tables / name).stat().st_size > 0
    import pandas as pd

    fits = pd.read_csv(tables / "fits_data_efficiency.csv")
    assert (fits["status"] == "ok").any(), fits[["variant", "threshold_idx", "status"]]
    assert (tmp_path / "results" / "proposal.yaml").is_file()
    proc = snakemake(tmp_path, config, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    snakemake(tmp_path, config, "--report", "results/report.html", timeout=600)
    html = (tmp_path / "results" / "report.html").read_text(errors="replace")
    for name in ["fig_scaling.png", "fig_data_efficiency.png", "fits_data_efficiency.csv"]:
        assert name in html, name
