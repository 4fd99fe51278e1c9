"""Stale run folders: a checkpoint or run.json the engine cannot use (other training settings) stops
the engine, or is deleted first with ``--discard-stale`` (the train rule); a resumable one is kept
(``valuescale.rundir``, the engine and the train rule)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from studies import snakemake

from valuescale.checkpoint import CHECKPOINT_NAME, save_checkpoint
from valuescale.config import TrainConfig
from valuescale.rundir import discard_stale, stale_reason
from valuescale.train import main, parse_cli

ROOT = Path(__file__).resolve().parents[1]

CFG = TrainConfig(env="cartpole-balance", critic_width=16, steps=600, checkpoint_every=300)


def fill(out: Path, ckpt_cfg: TrainConfig | None, t: int = 300, run_json: dict | None = None):
    """A run folder as the engine leaves it: checkpoint (synthetic), run.json, curves.parquet."""
    out.mkdir(parents=True, exist_ok=True)
    if ckpt_cfg is not None:
        save_checkpoint(out / CHECKPOINT_NAME, {"config": ckpt_cfg.to_dict(), "t": t})
    summary = run_json or {"complete": False, "config": (ckpt_cfg or CFG).to_dict()}
    (out / "run.json").write_text(json.dumps(summary))
    (out / "curves.parquet").write_bytes(b"PAR1")
    return out


def names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


ALL = ["checkpoint.pkl", "curves.parquet", "run.json"]


@pytest.mark.parametrize(
    "ckpt_cfg",
    [
        CFG,
        # the engine resumes across these: more steps, another checkpoint interval
        dataclasses.replace(CFG, steps=400),
        dataclasses.replace(CFG, checkpoint_every=100),
    ],
)
def test_a_resumable_checkpoint_is_kept(tmp_path, ckpt_cfg):
    out = fill(tmp_path / "run", ckpt_cfg)
    assert stale_reason(out, CFG) is None
    assert discard_stale(out, CFG) == []
    assert names(out) == ALL


@pytest.mark.parametrize(
    ("ckpt_cfg", "t", "why"),
    [
        (dataclasses.replace(CFG, n_quantiles=4), 300, r"n_quantiles: 4 there vs 100 now"),
        (dataclasses.replace(CFG, lr=1e-3, seeds=(0, 1)), 300, r"lr: 0\.001 there.*seeds"),
        (CFG, 700, r"env step 700, past the asked steps \(600\)"),
    ],
)
def test_a_checkpoint_the_engine_refuses_is_discarded(tmp_path, caplog, ckpt_cfg, t, why):
    out = fill(tmp_path / "run", ckpt_cfg, t=t)
    (out / "other.txt").write_text("kept")
    assert re.search(why, stale_reason(out, CFG))
    with caplog.at_level("WARNING", logger="valuescale.rundir"):
        removed = discard_stale(out, CFG)
    assert sorted(Path(p).name for p in removed) == ALL
    assert names(out) == ["other.txt"]
    assert re.search(why, caplog.text) and "discarding stale state" in caplog.text


def test_unreadable_checkpoint_is_discarded(tmp_path):
    out = fill(tmp_path / "run", None)
    (out / CHECKPOINT_NAME).write_bytes(b"not a pickle")
    assert "unreadable" in stale_reason(out, CFG)
    discard_stale(out, CFG)
    assert names(out) == []


@pytest.mark.parametrize(
    ("summary", "stale"),
    [
        ({"complete": True, "config": CFG.to_dict()}, False),  # the engine returns it as is
        ({"complete": False, "config": CFG.to_dict()}, False),  # the engine starts afresh
        ({"complete": True, "config": dataclasses.replace(CFG, steps=500).to_dict()}, True),
        ({"complete": True, "config": dataclasses.replace(CFG, tau=0.01).to_dict()}, True),
        ({"complete": False, "config": dataclasses.replace(CFG, tau=0.01).to_dict()}, True),
    ],
)
def test_run_json_without_checkpoint(tmp_path, summary, stale):
    out = fill(tmp_path / "run", None, run_json=summary)
    assert (stale_reason(out, CFG) is not None) == stale
    discard_stale(out, CFG)
    assert names(out) == ([] if stale else ["curves.parquet", "run.json"])


def test_the_engine_stops_on_stale_state_unless_told_to_discard_it(tmp_path, capsys):
    """Without --discard-stale the engine exits 2 naming the file and the differing setting, and
    changes nothing (it stops before JAX is imported); the train rule passes the flag."""
    argv = ["--env", "cartpole-balance", "--width", "16", "--steps", "600"]
    out = fill(tmp_path / "run", dataclasses.replace(CFG, n_quantiles=4))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*argv, "--checkpoint-every", "300", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pkl was written with other settings" in err, err
    assert "n_quantiles: 4 there vs 100 now" in err and "--discard-stale" in err, err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".engine.lock"}
    assert after == before
    _, run, cfg = parse_cli([*argv, "--checkpoint-every", "300", "--out", str(out)])
    assert cfg == CFG and run["discard_stale"] is False


def test_a_complete_run_whose_outputs_were_deleted_is_put_back_not_trained_again(tmp_path, capsys):
    """Snakemake deletes the outputs of a job it reruns (``--rerun-incomplete`` after it was
    killed while its orphaned engine finished the run): the engine puts back the copy it kept in
    ``.complete/`` and exits 0 without training; with other settings that copy is stale and goes
    with the rest (``--discard-stale``)."""
    from valuescale.checkpoint import COMPLETE_DIR
    from valuescale.rundir import keep_complete_outputs

    argv = ["--env", "cartpole-balance", "--width", "16", "--steps", "600"]
    argv += ["--checkpoint-every", "300"]
    summary = {
        "complete": True,
        "config": CFG.to_dict(),
        "env_steps": 600,
        "gradient_steps": 500,
        "wall_time_s": 1.0,
        "seeds": {"0": {"status": "ok"}},
    }
    out = fill(tmp_path / "run", None, run_json=summary)
    keep_complete_outputs(out)
    kept = {n: (out / n).read_bytes() for n in ("curves.parquet", "run.json")}
    for name in kept:
        (out / name).unlink()
    assert main([*argv, "--out", str(out), "--wait", "--discard-stale"]) == 0
    assert "put back from .complete" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in kept} == kept  # the run's own bytes, untrained
    assert not (out / CHECKPOINT_NAME).exists()

    (out / "run.json").unlink()  # a partial deletion is put back as well
    assert main([*argv, "--out", str(out)]) == 0
    assert (out / "run.json").read_bytes() == kept["run.json"]

    for name in kept:
        (out / name).unlink()
    other = dataclasses.replace(CFG, n_quantiles=4)
    assert stale_reason(out, other) is None  # judged only once put back
    removed = discard_stale(out, other)
    assert removed == [] and not (out / "run.json").exists()
    from valuescale.rundir import restore_complete_outputs

    assert restore_complete_outputs(out)
    removed = discard_stale(out, other)
    assert str(out / COMPLETE_DIR) in removed and names(out) == []


# --------------------------------------------------------------------------- through the workflow

RUN = "results/runs/cartpole-balance/bro/utd1_w16_b16_lr3e-4/seeds0-0"
LOG = "results/logs/train/cartpole-balance/bro/utd1_w16_b16_lr3e-4/seeds0-0.log"


def study(eval_interval: int) -> dict:
    return {
        "compilation_cache": os.environ["JAX_COMPILATION_CACHE_DIR"],  # the run's (conftest.py)
        "seeds": [0],
        "grid": [
            {
                "envs": ["cartpole-balance"],
                "utd": [1],
                "widths": [16],
                "batch_sizes": [16],
                "lrs": [3.0e-4],
            }
        ],
        "train": {
            "steps": 400,
            "warmup_steps": 100,
            "eval_interval": eval_interval,
            "eval_episodes": 1,
            "replay_size": 400,
            "checkpoint_every": 200,
            "log_interval": 100,
            "actor_width": 16,
            "n_quantiles": 4,
            "max_episode_steps": 100,
        },
        "analysis": {"envs": {"cartpole-balance": {"j_min": 100.0}}},
    }


def run_snakemake(workdir: Path, config: dict, *args: str) -> str:
    """``snakemake -c1`` to completion; its output."""
    proc = snakemake(workdir, config, "-c1", *args, timeout=300)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, TrainConfig]:
    """A real checkpoint at env step 200 of the train job of ``study(200)``, with exactly the
    engine config the workflow passes (read from the dry-run's shell command): a folder holding
    ``checkpoint.pkl`` and ``replay/``, and that config."""
    import valuescale.engine as engine

    tmp = tmp_path_factory.mktemp("checkpoint")
    text = run_snakemake(tmp / "plan", study(200), "-n", "-p", f"{RUN}/curves.parquet")
    argv = re.search(r"args='([^']*)'", text).group(1).split()
    _, run, cfg = parse_cli(argv)
    assert run["discard_stale"] and cfg.eval_interval == 200 and cfg.checkpoint_every == 200
    kept = tmp / "kept"  # the run folder's checkpoint and replay chunks as the first one left them
    save = engine.save_checkpoint

    def save_and_keep(path, payload):
        save(path, payload)
        if not kept.exists():
            shutil.copytree(path.parent, kept, ignore=shutil.ignore_patterns(".engine.lock"))

    mp = pytest.MonkeyPatch()
    mp.setattr(engine, "save_checkpoint", save_and_keep)
    try:
        engine.run_training(cfg, tmp / "run", progress=False)
    finally:
        mp.undo()
    return kept, cfg


@pytest.mark.slow
@pytest.mark.parametrize(("eval_interval", "resumed"), [(200, [200]), (100, [])])
def test_train_job_resumes_a_matching_checkpoint_and_discards_a_stale_one(
    tmp_path, checkpoint, eval_interval, resumed
):
    run = tmp_path / RUN
    shutil.copytree(checkpoint[0], run)
    run_snakemake(tmp_path, study(eval_interval), f"{RUN}/curves.parquet")
    summary = json.loads((run / "run.json").read_text())
    assert summary["complete"] and summary["env_steps"] == 400
    assert summary["config"]["eval_interval"] == eval_interval
    assert summary["resumed_at_steps"] == resumed
    assert names(run) == [".complete", "curves.parquet", "run.json"]
    log = (tmp_path / LOG).read_text()
    if resumed:
        assert "discarding" not in log and "resumed" in log
    else:
        assert "discarding stale state" in log and "eval_interval: 200 there vs 100 now" in log


def _flip_a_chunk_byte(run: Path) -> tuple[Path, str]:
    """Flip one byte inside the rewards' rows of the train replay's chunk (its size unchanged, so
    only its CRC tells)."""
    import numpy as np

    (chunk,) = (run / "replay" / "train").iterdir()
    with np.load(chunk) as z:
        rows = z["rewards"].tobytes()
    data = bytearray(chunk.read_bytes())
    at = bytes(data).find(rows)
    assert at > 0
    data[at + len(rows) // 2] ^= 0x40
    chunk.write_bytes(bytes(data))
    return chunk, "is unreadable"


def _truncate_the_checkpoint(run: Path) -> tuple[Path, str]:
    path = run / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:-100])
    return path, "is unreadable"


def _delete_a_chunk(run: Path) -> tuple[Path, str]:
    (chunk,) = (run / "replay" / "train").iterdir()
    chunk.unlink()
    return chunk, "is missing"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_flip_a_chunk_byte, _truncate_the_checkpoint, _delete_a_chunk])
def test_a_damaged_checkpoint_is_named_then_discarded_on_request(
    tmp_path, checkpoint, caplog, damage
):
    """A real checkpoint with a flipped byte in a replay chunk, truncated, or missing a chunk:
    the engine stops (OutDirConflict, exit 2 from the CLI) naming the damaged file and leaves the
    folder as it was; with --discard-stale it deletes the checkpoint and its chunks and trains
    afresh to completion."""
    from valuescale.train import OutDirConflict, run_training

    kept, cfg = checkpoint
    run = tmp_path / "run"
    shutil.copytree(kept, run)
    path, what = damage(run)
    before = sorted((p.relative_to(run), p.read_bytes()) for p in run.rglob("*") if p.is_file())
    with pytest.raises(OutDirConflict, match=re.escape(f"{path} {what}")):
        run_training(cfg, run, progress=False)
    after = sorted((p.relative_to(run), p.read_bytes()) for p in run.rglob("*") if p.is_file())
    assert after == before
    with caplog.at_level("WARNING", logger="valuescale.rundir"):
        summary = run_training(cfg, run, progress=False, discard_stale=True)
    assert summary["complete"] and summary["env_steps"] == 400
    assert summary["resumed_at_steps"] == []
    assert "discarding stale state" in caplog.text and str(path) in caplog.text
    assert names(run) == [".complete", "curves.parquet", "run.json"]
