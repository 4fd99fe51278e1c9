"""Incremental replay checkpoints: append-only chunk files of the rows inserted since the last
checkpoint, so a checkpoint costs O(new transitions) instead of O(buffer).

A stacked replay (``valuescale.replay.Replay`` with a leading seed axis, all seeds inserting in
lockstep) has received ``count`` inserts in all; insert number ``i`` (0-based) lives in slot
``i % capacity``. A checkpoint writes the rows ``[written, count)`` (at most the last
``capacity`` of them) as one chunk ``<folder>/<start>-<end>.npz`` (uncompressed; the zip's CRC
checks every field on load) and records, in ``checkpoint.pkl``, the ``count`` and the chunks that
still hold live rows (those ending after ``count - capacity``). Chunks are written and fsynced
before the checkpoint that lists them replaces the previous one; chunks the new checkpoint no
longer lists (fully overwritten, or left by a run killed between a chunk and its checkpoint) are
deleted only after that replacement (``collect``). Restoring replays the listed chunks in insert
order into an empty ring, which gives back the buffer bit for bit.

Host-side numpy only: the device arrays are read through slicing (``field[:, a:b]``), which works
the same for JAX and numpy arrays.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from valuescale.atomic import atomic_open
from valuescale.checkpoint import CheckpointError

REPLAY_DIR = "replay"
"""The run folder's sub-folder holding the chunks (one sub-folder per stored replay)."""

FIELDS = ("obs", "actions", "rewards", "masks", "next_obs")
"""The per-transition arrays of a replay (its ``pos``/``size`` follow from the insert count)."""


def chunk_name(start: int, end: int) -> str:
    """The file name of the chunk holding inserts ``[start, end)``."""
    return f"{start:012d}-{end:012d}.npz"


def _ring_slices(start: int, end: int, capacity: int) -> list[tuple[int, int]]:
    """The slot ranges that inserts ``[start, end)`` (``end - start <= capacity``) occupy."""
    a, b = start % capacity, end % capacity
    if end - start == 0:
        return []
    if a < b:
        return [(a, b)]
    return [(a, capacity)] + ([(0, b)] if b else [])


def capacity_of(replay: Any) -> int:
    """Slots per seed of a stacked replay (``rewards`` is ``[seeds, capacity]``)."""
    return int(replay.rewards.shape[1])


def check_counters(replay: Any, count: int) -> None:
    """RuntimeError unless the replay's ``pos`` and ``size`` (every seed) are those of ``count``
    inserts: the caller's count is the one the chunks are keyed by."""
    cap = capacity_of(replay)
    pos, size = np.asarray(replay.pos), np.asarray(replay.size)
    if not ((pos == count % cap).all() and (size == min(count, cap)).all()):
        raise RuntimeError(
            f"replay counters pos {pos.tolist()} size {size.tolist()} are not those of "
            f"{count} inserts into {cap} slots"
        )


def append(folder: str | os.PathLike, replay: Any, count: int, record: Mapping | None) -> dict:
    """Write the rows inserted since ``record`` (the previous checkpoint's record of this replay;
    None: none yet) as one chunk in ``folder``, fsynced; return the new record
    ``{"capacity", "count", "chunks": [{"file", "start", "end", "bytes"}]}`` listing the chunks
    that hold live rows. Nothing is deleted here (see ``collect``)."""
    folder = Path(folder)
    cap = capacity_of(replay)
    check_counters(replay, count)
    written = int(record["count"]) if record else 0
    chunks = list(record["chunks"]) if record else []
    if record and int(record["capacity"]) != cap:
        raise ValueError(f"replay record of {record['capacity']} slots, buffer of {cap}")
    if count < written:
        raise ValueError(f"replay count {count} is behind the last checkpoint's {written}")
    start = max(written, count - cap)
    if count > start:
        parts = _ring_slices(start, count, cap)
        arrays = {}
        for name in FIELDS:
            field = getattr(replay, name)
            pieces = [np.asarray(field[:, a:b]) for a, b in parts]
            arrays[name] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
        name = chunk_name(start, count)
        with atomic_open(folder / name, fsync=True) as fh:
            np.savez(fh, **arrays)
        chunks.append(
            {"file": name, "start": start, "end": count, "bytes": (folder / name).stat().st_size}
        )
    live = [c for c in chunks if int(c["end"]) > count - cap]
    return {"capacity": cap, "count": count, "chunks": live}


def collect(folder: str | os.PathLike, record: Mapping | None) -> list[str]:
    """Delete the files in ``folder`` that ``record`` does not list (call it once the checkpoint
    holding ``record`` is in place); return their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep = {c["file"] for c in record["chunks"]} if record else set()
    removed = []
    for path in folder.iterdir():
        if path.name not in keep and path.is_file():
            path.unlink()
            removed.append(path.name)
    return removed


def missing(folder: str | os.PathLike, record: Mapping) -> str | None:
    """Why the chunks ``record`` lists cannot be read back (a file missing or of another size),
    or None. Cheap (no file is read): the CRCs are checked on ``load``."""
    folder = Path(folder)
    for c in record["chunks"]:
        path = folder / c["file"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"replay chunk {path} is missing"
        if size != int(c["bytes"]):
            return f"replay chunk {path} has {size} bytes, expected {c['bytes']}"
    return None


def load(folder: str | os.PathLike, record: Mapping, template: Any) -> dict[str, np.ndarray]:
    """The stacked replay's arrays (``FIELDS`` plus ``pos`` and ``size``) rebuilt from the chunks
    ``record`` lists, shaped and typed as ``template`` (a stacked ``Replay`` of arrays or
    ``jax.ShapeDtypeStruct``s). ``CheckpointError`` naming the file for a missing, corrupt or misshapen
    chunk."""
    folder = Path(folder)
    cap, count = int(record["capacity"]), int(record["count"])
    if capacity_of(template) != cap:
        raise CheckpointError(f"replay record of {cap} slots, buffer of {capacity_of(template)}")
    reason = missing(folder, record)
    if reason is not None:
        raise CheckpointError(reason)
    out = {
        name: np.zeros(getattr(template, name).shape, getattr(template, name).dtype)
        for name in FIELDS
    }
    for c in sorted(record["chunks"], key=lambda c: int(c["start"])):
        path = folder / c["file"]
        start, end = int(c["start"]), int(c["end"])
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in FIELDS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise CheckpointError(f"replay chunk {path} is unreadable ({e})") from e
        offset = 0
        for a, b in _ring_slices(start, end, cap):
            for name in FIELDS:
                rows = arrays[name]
                expect = (out[name].shape[0], end - start, *out[name].shape[2:])
                if rows.shape != expect or rows.dtype != out[name].dtype:
                    raise CheckpointError(
                        f"replay chunk {path}: {name} is {rows.shape} {rows.dtype}, "
                        f"expected {expect} {out[name].dtype}"
                    )
                out[name][:, a:b] = rows[:, offset : offset + b - a]
            offset += b - a
    seeds = out["rewards"].shape[0]
    out["pos"] = np.full(seeds, count % cap, np.dtype(template.pos.dtype))
    out["size"] = np.full(seeds, min(count, cap), np.dtype(template.size.dtype))
    return out
