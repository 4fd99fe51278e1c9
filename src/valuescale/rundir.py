"""What of a run folder the engine can use: the one resumability check.

``python -m valuescale.train`` (``run_training``) resumes from ``<out>/checkpoint.pkl``, returns a
complete run as it is, or starts afresh. It refuses a folder holding state it cannot use
(``stale_reason``): a checkpoint or run.json written with a config that differs in anything but
``RESUMABLE_CHANGES`` (``steps``, ``checkpoint_every``), a checkpoint past the asked ``steps``, an
unreadable file, or a complete run of another length. By default that is an ``OutDirConflict``
(exit 2); with ``--discard-stale`` (the workflow's train rule, whose users change training
settings on purpose) the engine deletes that state instead (``discard_stale``: checkpoint,
replay chunks, progress and outputs, with one log line saying why) and starts afresh, while it holds the folder.
JAX is not imported here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from valuescale.atomic import atomic_write_bytes
from valuescale.checkpoint import (
    CHECKPOINT_NAME,
    COMPLETE_DIR,
    OUTPUT_NAMES,
    PROGRESS_NAMES,
    load_checkpoint,
)
from valuescale.config import RESUMABLE_CHANGES, TrainConfig
from valuescale.replay_store import REPLAY_DIR, missing

log = logging.getLogger("valuescale.rundir")

RUN_FILES: tuple[str, ...] = (CHECKPOINT_NAME, *OUTPUT_NAMES, *PROGRESS_NAMES)
"""What a stale run folder loses: the engine's state, progress and outputs (and the ``replay/``
chunks of its checkpoint and the ``COMPLETE_DIR`` copy of its outputs; nothing else)."""


def keep_complete_outputs(out_dir: str | os.PathLike) -> None:
    """Copy a complete run's outputs into ``<out_dir>/COMPLETE_DIR`` (atomically, each file).
    The engine calls it after writing the outputs and before removing its checkpoint, so at every
    moment the run can be had back without training it again."""
    out = Path(out_dir)
    for name in OUTPUT_NAMES:
        atomic_write_bytes(kept_path(out, name), (out / name).read_bytes())


def kept_path(out_dir: str | os.PathLike, name: str) -> Path:
    """Where ``keep_complete_outputs`` keeps the output ``name``: ``COMPLETE_DIR/<name>.kept``
    (another name, so that a search for ``run.json`` or ``*.parquet`` does not find it twice)."""
    return Path(out_dir) / COMPLETE_DIR / f"{name}.kept"


def restore_complete_outputs(out_dir: str | os.PathLike) -> bool:
    """Put back the outputs of a complete run whose output files were deleted (Snakemake deletes
    the outputs of a job it reruns) from ``COMPLETE_DIR``; True when it did. It does nothing
    while a checkpoint is there (the run resumes from it) or when every output is in place. The
    caller holds the folder; ``stale_reason`` then judges the restored run.json as any other."""
    out = Path(out_dir)
    if (out / CHECKPOINT_NAME).exists() or all((out / n).exists() for n in OUTPUT_NAMES):
        return False
    if not all(kept_path(out, n).is_file() for n in OUTPUT_NAMES):
        return False
    for name in OUTPUT_NAMES:
        atomic_write_bytes(out / name, kept_path(out, name).read_bytes())
    log.info(
        "%s: the outputs of a complete run were missing; put back from %s (not trained again)",
        out,
        COMPLETE_DIR,
    )
    return True


def config_differences(cfg: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """Fields (sorted) in which ``saved`` (a ``TrainConfig.to_dict()``) differs from ``cfg`` in a
    way the engine does not resume across, as ``"name: <there> there vs <now> now"``.

    ``saved`` is read with today's defaults for the settings it lacks (a run written before a
    setting existed resumes when the new setting keeps its default)."""
    current = cfg.to_dict()
    try:
        saved = {**TrainConfig.from_dict(saved).to_dict(), **saved}
    except (ValueError, TypeError):  # not a config of today's settings: compared as it is
        pass
    keys = sorted(
        k
        for k in set(current) | set(saved)
        if k not in RESUMABLE_CHANGES and current.get(k) != saved.get(k)
    )
    return [f"{k}: {saved.get(k)!r} there vs {current.get(k)!r} now" for k in keys]


def stale_reason(out_dir: str | os.PathLike, cfg: TrainConfig) -> str | None:
    """Why the engine cannot start ``cfg`` in ``out_dir`` (None: it resumes from the checkpoint,
    returns the complete run, or starts afresh without conflict)."""
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    run_json = out / "run.json"
    if ckpt_path.exists():
        try:
            ckpt = load_checkpoint(ckpt_path)
        except (ValueError, OSError) as e:
            return f"{CHECKPOINT_NAME} is unreadable ({e})"
        differ = config_differences(cfg, ckpt.get("config") or {})
        if differ:
            return f"{CHECKPOINT_NAME} was written with other settings ({'; '.join(differ)})"
        for name, record in (ckpt.get("replay") or {}).items():
            reason = missing(out / REPLAY_DIR / name, record)
            if reason is not None:
                return f"{CHECKPOINT_NAME} cannot be resumed: {reason}"
        t = int(ckpt.get("t", 0))
        if cfg.steps < t:
            return f"{CHECKPOINT_NAME} is at env step {t}, past the asked steps ({cfg.steps})"
        return None
    if run_json.exists():
        try:
            previous = json.loads(run_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            return f"run.json is not valid JSON ({e})"
        if not isinstance(previous, dict):
            return "run.json is not a run summary"
        differ = config_differences(cfg, previous.get("config") or {})
        if differ:
            state = "complete" if previous.get("complete") else "incomplete"
            return f"run.json ({state}) was written with other settings ({'; '.join(differ)})"
        if previous.get("complete"):
            steps = (previous.get("config") or {}).get("steps")
            if steps != cfg.steps:
                return f"run.json holds a complete run of {steps} steps (asked for {cfg.steps})"
    return None


def discard_stale(out_dir: str | os.PathLike, cfg: TrainConfig) -> list[str]:
    """Delete ``out_dir``'s checkpoint, progress and outputs when the engine cannot start ``cfg``
    there (see ``stale_reason``), logging why; return the removed paths (empty when the folder is
    usable as it is: a matching checkpoint is kept, so the run resumes). The caller holds the
    folder (``checkpoint.hold_run_folder``)."""
    reason = stale_reason(out_dir, cfg)
    return [] if reason is None else discard(out_dir, reason)


def discard(out_dir: str | os.PathLike, reason: str) -> list[str]:
    """Delete ``out_dir``'s checkpoint, replay chunks, progress and outputs (``RUN_FILES``, the
    temporary files of their killed writers, ``replay/``), logging ``reason``; return the removed
    paths. The caller holds the folder."""
    out = Path(out_dir)
    removed = []
    for name in RUN_FILES:
        # the file and any temporary file a killed writer left of it (valuescale.atomic's names)
        for path in (out / name, *out.glob(f".{name}.*.tmp")):
            if path.is_file():
                path.unlink()
                removed.append(str(path))
    for folder in (REPLAY_DIR, COMPLETE_DIR):
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)
            removed.append(str(out / folder))
    log.warning(
        "discarding stale state in %s: %s; removed %s",
        out,
        reason,
        ", ".join(Path(p).name for p in removed),
    )
    return removed
