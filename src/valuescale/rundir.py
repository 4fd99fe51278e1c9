"""Clear a run folder of state the engine would refuse, before a training run starts in it.

``python -m valuescale.train`` resumes from ``<out>/checkpoint.pkl`` and stops with
``OutDirConflict`` (exit 2) when the folder holds a checkpoint or a run.json it cannot use: written
with a config that differs in anything but ``RESUMABLE_CHANGES`` (``steps``, ``checkpoint_every``),
a checkpoint past the asked ``steps``, an unreadable file, or a complete run of another length.
The workflow changes training settings on purpose (the user edits ``train:``), so before each train
job it calls ``python -m valuescale.rundir <the same flags as valuescale.train>``, which deletes such
stale state (``checkpoint.pkl``, ``run.json``, ``curves.parquet``) with one log line saying why,
and keeps a checkpoint the engine can resume.

The checks mirror ``valuescale.train.run_training``; JAX is not imported.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from valuescale.checkpoint import (
    CHECKPOINT_NAME,
    OUTPUT_NAMES,
    PROGRESS_NAMES,
    busy_message,
    load_checkpoint,
    run_folder_holder,
)
from valuescale.config import RESUMABLE_CHANGES, ConfigError, TrainConfig

log = logging.getLogger("valuescale.rundir")

RUN_FILES: tuple[str, ...] = (CHECKPOINT_NAME, *OUTPUT_NAMES, *PROGRESS_NAMES)
"""What a stale run folder loses: the engine's state, progress and outputs (nothing else)."""


def config_differences(cfg: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """Fields (sorted) in which ``saved`` (a ``TrainConfig.to_dict()``) differs from ``cfg`` in a
    way the engine does not resume across, as ``"name: <there> there vs <now> now"``."""
    current = cfg.to_dict()
    keys = sorted(
        k
        for k in set(current) | set(saved)
        if k not in RESUMABLE_CHANGES and current.get(k) != saved.get(k)
    )
    return [f"{k}: {saved.get(k)!r} there vs {current.get(k)!r} now" for k in keys]


def stale_reason(out_dir: str | os.PathLike, cfg: TrainConfig) -> str | None:
    """Why the engine would refuse to start ``cfg`` in ``out_dir`` (None: it would resume from the
    checkpoint, return the complete run, or start afresh without conflict)."""
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
    """Delete ``out_dir``'s checkpoint, run.json and curves.parquet when the engine would refuse to
    start ``cfg`` there (see ``stale_reason``), logging why; return the removed paths (empty when
    the folder is usable as it is: a matching checkpoint is kept, so the run resumes)."""
    out = Path(out_dir)
    reason = stale_reason(out, cfg)
    if reason is None:
        return []
    removed = []
    for name in RUN_FILES:
        # the file and any temporary file a killed writer left of it (valuescale.atomic's names)
        for path in (out / name, *out.glob(f".{name}.*.tmp")):
            if path.is_file():
                path.unlink()
                removed.append(str(path))
    log.warning(
        "discarding stale state in %s: %s; removed %s",
        out,
        reason,
        ", ".join(Path(p).name for p in removed),
    )
    return removed


def config_from_argv(argv: Sequence[str] | None = None) -> tuple[str, TrainConfig | None]:
    """``(out_dir, TrainConfig)`` from the flags of ``python -m valuescale.train`` (the config is
    None when the engine's CLI would reject it)."""
    from valuescale.train import build_parser

    parser = build_parser()
    parser.prog = "python -m valuescale.rundir"
    parser.description = (
        "Delete the checkpoint/run.json/curves.parquet in --out when valuescale.train, given the "
        "same flags, would refuse them (written with other settings); keep a resumable checkpoint."
    )
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    for key in ("threads", "progress", "compilation_cache"):
        args.pop(key)
    try:
        return out, TrainConfig(**args)
    except ConfigError:
        return out, None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI (``python -m valuescale.rundir``): takes exactly the flags of ``valuescale.train``.

    A config the engine's CLI rejects is left for the engine to report (exit 0, nothing removed).
    A folder that a live engine holds is left alone: exit 2 with a message naming it and the pid.
    """
    out, cfg = config_from_argv(argv)
    if cfg is None or not Path(out).is_dir():
        return 0
    holder = run_folder_holder(out)
    if holder is not None:
        print(f"error: {busy_message(Path(out), holder)}", file=sys.stderr)
        return 2
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    discard_stale(out, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
