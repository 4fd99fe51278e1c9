"""Optional live logging (``valuescale.livelog``): TensorBoard event files and W&B offline runs
of a real engine run, read back with each package's own reader; the restart marker of a resumed
run; the missing-package refusals of the CLI and of the workflow's DAG (that logging settings
retrain nothing: test_workflow_dag.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from studies import snakemake_without
from test_train import tiny

from valuescale.livelog import WANDB_ID_FILE, LiveLogSettings, open_live_log
from valuescale.train import run_training

TB_AND_WANDB = LiveLogSettings(
    tensorboard=True, wandb_project="valuescale-test", wandb_mode="offline"
)


def _tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a TensorBoard event folder, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _wandb_records(folder: Path) -> list[dict]:
    """The records of the W&B run in ``folder`` as W&B's own reader prints them."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_a_real_run_logs_to_tensorboard_and_wandb_offline(tmp_path: Path, monkeypatch) -> None:
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # not in $HOME
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    # test_train's tiny shapes (two seeds): the step functions come from the run's cache
    cfg = tiny(seeds=(0, 1), steps=600)
    out = tmp_path / "run"
    summary = run_training(cfg, out, progress=False, live=TB_AND_WANDB)
    assert summary["complete"]
    curves = pd.read_parquet(out / "curves.parquet")
    metrics = sorted(curves["metric"].unique())
    assert "return" in metrics and "critic_loss" in metrics

    # TensorBoard: one folder per seed, one series per curve metric, the same points
    assert sorted(p.name for p in (out / "tb").iterdir()) == ["seed0", "seed1"]
    for seed in (0, 1):
        series = _tb_scalars(out / "tb" / f"seed{seed}")
        assert sorted(series) == metrics
        for metric in metrics:
            rows = curves[(curves.seed == seed) & (curves.metric == metric)]
            assert [s for s, _ in series[metric]] == rows["step"].tolist(), metric
            np.testing.assert_array_equal(
                np.float32([v for _, v in series[metric]]), rows["value"].to_numpy(np.float32)
            )
        # the cell's settings and the seed, for TensorBoard's HParams dashboard
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.plugins.hparams import plugin_data_pb2

        acc = EventAccumulator(str(out / "tb" / f"seed{seed}"))
        acc.Reload()
        meta = acc.SummaryMetadata("_hparams_/session_start_info")
        hparams = plugin_data_pb2.HParamsPluginData.FromString(
            meta.plugin_data.content
        ).session_start_info.hparams
        assert hparams["critic_width"].number_value == 16
        assert hparams["seed"].number_value == seed
        assert hparams["env"].string_value == "pendulum-swingup"

    # W&B: one offline run for the job, the run's settings as its config, per-seed and mean keys
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = _wandb_records(run_dir)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["project"] == "valuescale-test"
    assert run["display_name"] == "pendulum-swingup/bro/utd1_w16_b16_lr3e-4/seeds0-1"
    assert run["run_group"] == "pendulum-swingup/bro/utd1_w16_b16_lr3e-4"
    assert run["run_id"] == (out / "wandb" / WANDB_ID_FILE).read_text().strip()
    config = run["config"]["update"]
    assert config["critic_width"] == 16 and config["seeds"] == [0, 1]
    assert config["critic_params"] == summary["critic_params"]
    history = {}
    for record in records:
        if record["type"] == "history":
            item = record["history"]["item"]
            history.setdefault(item["_step"], {}).update(item)
    returns = curves[curves.metric == "return"]
    assert sorted(s for s, row in history.items() if "mean/return" in row) == sorted(
        returns["step"].unique()
    )
    for row in returns.itertuples():
        assert history[row.step][f"seed{row.seed}/return"] == pytest.approx(row.value)
    for step, group in returns.groupby("step"):
        assert history[step]["mean/return"] == pytest.approx(group["value"].mean())
    import wandb

    wandb.teardown()  # the W&B service of this process


def test_a_resumed_run_marks_its_restart_for_tensorboard(tmp_path: Path) -> None:
    """A resumed run's restart marker drops what the killed process logged after its checkpoint
    (step 200 here); a fresh start replaces the event folders; a resumed run that had no event
    folders writes its checkpoint's rows first."""
    cfg = tiny(seeds=(3,), steps=600)
    settings = LiveLogSettings(tensorboard=True)

    def logged(start_step: int, resumed: bool, points: dict[int, float]) -> None:
        live = open_live_log(settings, cfg, tmp_path, start_step=start_step, resumed=resumed)
        steps = list(points)
        live.log({"seed": [3] * len(steps), "step": steps, "metric": ["return"] * len(steps),
                  "value": list(points.values())}, 0)  # fmt: skip
        live.close()

    logged(0, False, {100: 1.0, 200: 2.0, 300: 3.0, 400: 4.0})  # killed at 400; checkpoint at 200
    logged(200, True, {300: 30.0, 500: 50.0})
    assert _tb_scalars(tmp_path / "tb" / "seed3")["return"] == [
        (100, 1.0), (200, 2.0), (300, 30.0), (500, 50.0)
    ]  # fmt: skip
    logged(0, False, {100: 7.0})  # stale state discarded: trained again from step 0
    assert _tb_scalars(tmp_path / "tb" / "seed3")["return"] == [(100, 7.0)]

    # logging turned on for a resumed run: the checkpoint's rows first, then the new ones
    shutil.rmtree(tmp_path / "tb")
    earlier = {"seed": [3, 3], "step": [100, 200], "metric": ["return"] * 2, "value": [1.0, 2.0]}
    live = open_live_log(settings, cfg, tmp_path, start_step=200, resumed=True, rows=earlier)
    live.log({"seed": [3], "step": [300], "metric": ["return"], "value": [3.0]}, 0)
    live.close()
    assert _tb_scalars(tmp_path / "tb" / "seed3")["return"] == [(100, 1.0), (200, 2.0), (300, 3.0)]


def test_the_cli_refuses_logging_whose_package_is_missing(monkeypatch, capsys) -> None:
    from valuescale.train import main

    base = ["--env", "cartpole-balance", "--out", "unused"]
    for flag, package in (("--tensorboard", "tensorboard"), ("--wandb-project=p", "wandb")):
        monkeypatch.setitem(sys.modules, package, None)  # `import <package>` fails
        with pytest.raises(SystemExit) as info:
            main([*base, flag])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag.split('=')[0]}:" in err
        assert f"pip install 'valuescale[{package}]'" in err, err
    with pytest.raises(SystemExit):
        main([*base, "--wandb-entity", "team"])
    assert "argument --wandb-entity: needs --wandb-project" in capsys.readouterr().err


def test_the_workflow_refuses_logging_whose_package_is_missing_at_dag_time(tmp_path) -> None:
    # A Snakemake process of its own in which both packages cannot be imported.
    config = {"grid": [{"envs": ["cartpole-balance"], "agents": ["bro"], "utd": [1],
                        "widths": [32], "batch_sizes": [64], "lrs": [3e-4]}],
              "logging": {"tensorboard": True, "wandb": {"project": "p", "mode": "offline"}}}  # fmt: skip
    proc = snakemake_without(tmp_path, config, ["tensorboard", "wandb"], "-n")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid config key 'logging.tensorboard'" in output, output[-3000:]
    assert "pip install 'valuescale[tensorboard]'" in output
    assert "Job stats" not in output  # no job planned
    assert not (tmp_path / "results").exists()
