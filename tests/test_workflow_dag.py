"""The workflow's DAG: readable round-tripping paths, seed packing, and "only stale targets rebuild".

Staleness is checked on a study that looks fully built: every output the DAG would make is created
as a placeholder file, then `snakemake --touch` marks it up to date and records the provenance
(params, input lists) that the rerun triggers compare. A changed config is then dry-run and the
scheduled jobs are read from Snakemake's job listing.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from studies import snakemake

ROOT = Path(__file__).resolve().parents[1]
SHARED_PUBLISHED = ROOT.parent / "shared" / "data" / "published"

STUDY = {
    "results_dir": "results",
    "seeds": 2,
    "seeds_per_job": 2,
    "grid": [
        {
            "envs": ["cartpole-swingup", "cartpole-balance"],
            "agents": ["bro"],
            "utd": [1, 2],
            "widths": [32, 64],
            "batch_sizes": [64],
            "lrs": [3.0e-4],
        }
    ],
    "train": {"steps": 2000, "warmup_steps": 500, "eval_interval": 500, "replay_size": 2000},
    "analysis": {
        "envs": {"cartpole-swingup": {"j_min": 100.0}, "cartpole-balance": {"j_min": 300.0}}
    },
}
N_TRAIN = 2 * 2 * 2  # envs x utd x widths, seeds 0-1 in one job


def planned_jobs(workdir: Path, config: dict, *targets: str) -> list[tuple[str, list[str]]]:
    """(rule, outputs) of every job a dry run schedules."""
    proc = snakemake(workdir, config, "-n", *targets)
    jobs, rule = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        match = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line.strip())
        if match:
            rule = match.group(1)
            jobs.append((rule, []))
        elif line.strip().startswith("output:") and jobs:
            jobs[-1][1].extend(p.strip() for p in line.split(":", 1)[1].split(","))
    if not jobs:
        assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return jobs


def train_dirs(jobs) -> set[str]:
    return {os.path.dirname(outs[0]) for rule, outs in jobs if rule == "train"}


def rules(jobs) -> set[str]:
    return {rule for rule, _ in jobs}


def materialize(workdir: Path, config: dict) -> None:
    """Make the study look built: placeholders for all outputs, then --touch records them."""
    proc = snakemake(workdir, config, "--summary")
    lines = [line for line in proc.stdout.splitlines() if "\t" in line]
    assert lines[0].startswith("output_file"), proc.stdout
    for line in lines[1:]:
        path = workdir / line.split("\t")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    snakemake(workdir, config, "--touch", "--forceall", "-c1", "--quiet", "all")


@pytest.fixture(scope="module")
def built_study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("built")
    materialize(workdir, STUDY)
    return workdir


@pytest.fixture
def study(built_study, tmp_path) -> Path:
    """A private copy of the built study (outputs and Snakemake's provenance records)."""
    workdir = tmp_path / "study"
    shutil.copytree(built_study, workdir, symlinks=True)
    return workdir


def changed(**edits) -> dict:
    config = copy.deepcopy(STUDY)
    for dotted, value in edits.items():
        keys = dotted.split("__")
        node = config
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[keys[-1]] = value
    return config


# --------------------------------------------------------------------------- paths and seeds


def test_fresh_study_trains_every_cell_once(tmp_path):
    jobs = planned_jobs(tmp_path, STUDY)
    dirs = train_dirs(jobs)
    assert len(dirs) == N_TRAIN
    assert "results/runs/cartpole-swingup/bro/utd1_w32_b64_lr3e-4/seeds0-1" in dirs
    assert {"aggregate", "merge_curves", "crossings", "fits", "allocation", "proposal"} <= rules(
        jobs
    )


def test_wildcard_formats_round_trip(tmp_path):
    config = changed(
        grid=[
            {
                "envs": ["cartpole-swingup"],
                "utd": [0.25, 0.5, 1, 1.5, 2.0],
                "widths": [64.0],
                "batch_sizes": [32],
                "lrs": [3.0e-4, 1.0e-3, 1.5e-4, 1.0],
            }
        ],
        seeds_per_job=None,
    )
    dirs = train_dirs(planned_jobs(tmp_path, config))
    names = {Path(d).parent.name for d in dirs}
    utds = ["0.25", "0.5", "1", "1.5", "2"]
    lrs = ["3e-4", "1e-3", "1.5e-4", "1e0"]
    assert names == {f"utd{u}_w64_b32_lr{lr}" for u in utds for lr in lrs}
    # the engine gets back exactly the configured numbers
    target = "results/runs/cartpole-swingup/bro/utd0.25_w64_b32_lr1.5e-4/seeds0-1/curves.parquet"
    proc = snakemake(tmp_path, config, "-n", "-p", target)
    command = next(line for line in proc.stdout.splitlines() if "valuescale.train" in line)
    assert "--utd 0.25 " in command and "--lr 1.5e-4 " in command and "--seeds 0,1 " in command
    assert float("1.5e-4") == 1.5e-4 and float("0.25") == 0.25
    # a non-canonical spelling of the same cell is not a target: one path per cell
    other = "results/runs/cartpole-swingup/bro/utd0.250_w64_b32_lr1.5e-4/seeds0-1/curves.parquet"
    assert snakemake(tmp_path, config, "-n", other, check=False).returncode != 0


@pytest.mark.parametrize(
    ("seeds", "per_job", "blocks"),
    [
        (5, None, ["seeds0-4"]),
        (5, 2, ["seeds0-1", "seeds2-3", "seeds4-4"]),
        (5, 1, [f"seeds{i}-{i}" for i in range(5)]),
        ([0, 1, 5, 6, 7], None, ["seeds0-1", "seeds5-7"]),
        ([0, 1, 5, 6, 7], 4, ["seeds0-1", "seeds5-7"]),
        ([3, 4, 5], 2, ["seeds3-3", "seeds4-5"]),
    ],
)
def test_seed_packing(tmp_path, seeds, per_job, blocks):
    config = changed(seeds=seeds, seeds_per_job=per_job)
    config["grid"][0].update(envs=["cartpole-swingup"], utd=[1], widths=[32])
    dirs = train_dirs(planned_jobs(tmp_path, config))
    assert sorted(Path(d).name for d in dirs) == sorted(blocks)


def test_results_dir_is_the_study_root(tmp_path):
    config = changed(results_dir="results/other_study")
    proc = snakemake(tmp_path, config, "--summary")
    files = [line.split("\t")[0] for line in proc.stdout.splitlines()[1:] if "\t" in line]
    assert files and all(f.startswith("results/other_study/") for f in files), files


# --------------------------------------------------------------------------- staleness


def test_noop_rerun_schedules_nothing(study):
    assert planned_jobs(study, STUDY) == []


def test_adding_a_utd_trains_only_the_new_cells(study):
    jobs = planned_jobs(study, changed(grid__0__utd=[1, 2, 4]))
    dirs = train_dirs(jobs)
    assert dirs == {
        f"results/runs/{env}/bro/utd4_w{w}_b64_lr3e-4/seeds0-1"
        for env in ["cartpole-swingup", "cartpole-balance"]
        for w in [32, 64]
    }
    assert {"aggregate", "crossings", "fits"} <= rules(jobs)
    assert not any(rule.startswith("published") for rule in rules(jobs))


def test_adding_a_width_trains_only_the_new_cells(study):
    dirs = train_dirs(planned_jobs(study, changed(grid__0__widths=[32, 64, 128])))
    assert dirs == {
        f"results/runs/{env}/bro/utd{u}_w128_b64_lr3e-4/seeds0-1"
        for env in ["cartpole-swingup", "cartpole-balance"]
        for u in [1, 2]
    }


def test_adding_seeds_trains_only_the_new_seeds(study):
    jobs = planned_jobs(study, changed(seeds=4))
    dirs = train_dirs(jobs)
    assert len(dirs) == N_TRAIN and all(d.endswith("/seeds2-3") for d in dirs)
    assert "aggregate" in rules(jobs)


def test_changing_an_analysis_setting_reruns_analysis_not_training(study):
    jobs = planned_jobs(study, changed(analysis__bootstrap={"n": 50}))
    assert "crossings" in rules(jobs) and "fits" in rules(jobs) and "figure" in rules(jobs)
    assert not {"train", "aggregate", "merge_curves"} & rules(jobs)


def test_changing_delta_reruns_only_allocation_and_after(study):
    config = changed()
    config["analysis"]["envs"]["cartpole-swingup"]["delta"] = 3.0e10
    jobs = planned_jobs(study, config)
    assert "allocation" in rules(jobs) and "proposal" in rules(jobs)
    assert not {"train", "aggregate", "crossings", "fits"} & rules(jobs)


def test_changing_figure_settings_redraws_only_figures(study):
    jobs = planned_jobs(study, changed(analysis__figures={"dpi": 300}))
    assert rules(jobs) == {"figure", "all"}


def test_changing_a_training_hyperparameter_retrains(study):
    jobs = planned_jobs(study, changed(train__warmup_steps=600))
    assert len(train_dirs(jobs)) == N_TRAIN
    assert {"aggregate", "crossings"} <= rules(jobs)


def test_per_env_override_retrains_only_that_env(study):
    config = changed(train_overrides={"cartpole-balance": {"steps": 3000}})
    dirs = train_dirs(planned_jobs(study, config))
    assert len(dirs) == N_TRAIN // 2 and all("/cartpole-balance/" in d for d in dirs)


def test_operational_settings_and_spelling_do_not_retrain(study):
    config = changed(train__checkpoint_every=1000)
    config["train"]["discount"] = 0.99  # the schema default, written out
    config["train"]["tau"] = 0.005
    assert planned_jobs(study, config) == []


def test_settings_added_later_are_passed_only_away_from_their_default(study):
    """The BRO settings the train block gained with the agent configs (common.smk's
    LATER_TRAIN_SETTINGS) at their defaults leave a built study's params as they were (nothing
    retrains); set to another value, they are passed and retrain."""
    config = changed()
    config["train"].update(kappa=1.0, pessimism=0.0, critic_lr=None)
    assert planned_jobs(study, config) == []
    config["train"]["kappa"] = 0.5
    assert len(train_dirs(planned_jobs(study, config))) == N_TRAIN
    assert all("--kappa 0.5 " in c for c in train_commands(study, config))


def train_commands(workdir: Path, config: dict) -> list[str]:
    """The engine flags of every train job a dry run schedules (`-p` prints the commands)."""
    proc = snakemake(workdir, config, "-n", "-p")
    return re.findall(r"args='(--env [^']*)'", proc.stdout + proc.stderr)


@pytest.mark.parametrize(
    "setting, flag",
    [
        (None, "--compilation-cache resources/xla-cache"),
        (True, "--compilation-cache resources/xla-cache"),
        ("/scratch/xla/", "--compilation-cache /scratch/xla"),
        (False, None),
    ],
)
def test_train_jobs_share_a_compilation_cache(tmp_path, setting, flag):
    config = copy.deepcopy(STUDY)
    if setting is not None:
        config["compilation_cache"] = setting
    commands = train_commands(tmp_path, config)
    assert len(commands) == N_TRAIN, commands
    for command in commands:
        if flag is None:
            assert "--compilation-cache" not in command, command
        else:
            assert flag in command, command


def test_changing_the_compilation_cache_does_not_retrain(study):
    assert planned_jobs(study, changed(compilation_cache=False)) == []
    assert planned_jobs(study, changed(compilation_cache="/tmp/elsewhere")) == []


def test_live_logging_reaches_the_engine_and_retrains_nothing(study):
    # the packages are installed with the test extra (test_livelog.py: refused without them)
    logging = {"tensorboard": True, "wandb": {"project": "my-project", "mode": "offline"}}
    assert planned_jobs(study, changed(logging=logging)) == []
    commands = train_commands(study, changed(logging=logging, train__warmup_steps=600))
    assert len(commands) == N_TRAIN
    for command in commands:
        assert "--tensorboard --wandb-project my-project --wandb-mode offline" in command, command


def test_changing_the_grid_of_one_block_keeps_other_blocks(study):
    config = changed()
    extra = dict(config["grid"][0], envs=["cartpole-swingup"], utd=[1], batch_sizes=[128])
    config["grid"].append(extra)
    dirs = train_dirs(planned_jobs(study, config))
    assert dirs == {
        f"results/runs/cartpole-swingup/bro/utd1_w{w}_b128_lr3e-4/seeds0-1" for w in [32, 64]
    }


# --------------------------------------------------------------------------- published data


def _published_config(source: Path) -> dict:
    config = yaml.safe_load((ROOT / "config" / "published.yaml").read_text())
    config["published_source"] = str(source)
    return config


@pytest.mark.skipif(
    not SHARED_PUBLISHED.is_dir() and not os.environ.get("CI"),
    reason="../shared/data/published not present",
)
def test_published_study_skips_missing_optional_zips_and_their_outputs(tmp_path):
    assert SHARED_PUBLISHED.is_dir(), "CI needs ../shared/data/published"
    config = _published_config(SHARED_PUBLISHED)
    proc = snakemake(tmp_path, config, "-n")
    out = proc.stdout + proc.stderr
    assert "model_scaling_const_lr.zip is not in" in out and "overfitting.zip is not in" in out
    jobs = planned_jobs(tmp_path, config)
    fetched = {Path(outs[0]).stem for rule, outs in jobs if rule == "published_fetch"}
    assert fetched == {
        "fitted_bs",
        "interpolated_bs",
        "extrapolated_bs",
        "compute_optimal",
        "n_scaling_bl",
        "utd_scaling_bl",
        "side_critic",
        "simbav2_model_scaling_linear20_with_base",
        "dmc_bro_ablations",
    }
    assert "train" not in rules(jobs)
    outputs = {Path(o).name for _, outs in jobs for o in outs}
    # model_scaling_const_lr is missing: only the figure that needs it is skipped
    assert "fig_batch_size.pdf" not in outputs
    assert {"fig_scaling.pdf", "fig_passive_critic.pdf", "fig_overfitting.pdf"} <= outputs
    assert {"fit_errors.csv", "allocation_strategies.csv", "passive_critic_slopes.csv"} <= outputs
    assert all(o.startswith(("results/published/", "resources/")) for _, outs in jobs for o in outs)


def test_local_source_without_optional_zips_keeps_other_outputs(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "side_critic.zip").write_bytes(b"placeholder")
    config = _published_config(source)
    config["published"]["zips"] = {
        "side_critic": {"needed_by": ["passive_critic_slopes", "fig_passive_critic"]},
        "model_scaling_const_lr": {"optional": True, "needed_by": ["fig_batch_size"]},
    }
    workdir = tmp_path / "work"
    workdir.mkdir()
    jobs = planned_jobs(workdir, config)
    outputs = {Path(o).name for _, outs in jobs for o in outs}
    assert "side_critic.zip" in outputs and "model_scaling_const_lr.zip" not in outputs
    assert "fig_passive_critic.png" in outputs and "fig_batch_size.png" not in outputs
    # fit_errors / allocation_strategies need archives this study does not list
    assert "fit_errors.csv" not in outputs and "allocation_strategies.csv" not in outputs


# --------------------------------------------------------------------------- quality


def test_lint_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_rules_are_snakefmt_formatted():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    if snakefmt is None:
        if os.environ.get("CI"):
            pytest.fail("snakefmt is not installed (it is in the test extra)")
        pytest.skip("snakefmt is not installed (it is in the test extra)")
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    proc = subprocess.run(
        [snakefmt, "--check", "--config", str(ROOT / "pyproject.toml"), *map(str, files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
