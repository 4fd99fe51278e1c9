"""Incremental replay checkpoints (valuescale.replay_store) against the real ring buffer."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from valuescale import replay_store
from valuescale.checkpoint import CheckpointError
from valuescale.replay import replay_init, replay_insert, stack_seeds

SEEDS, CAP, OBS, ACT = 2, 7, 3, 2
ROW_FLOATS = 2 * OBS + ACT + 2  # obs, next_obs, actions, reward, mask


def _insert_many(replay, rng: np.random.Generator, n: int):
    insert = jax.jit(jax.vmap(replay_insert))
    for _ in range(n):
        replay = insert(
            replay,
            rng.normal(size=(SEEDS, OBS)).astype(np.float32),
            rng.uniform(-1, 1, size=(SEEDS, ACT)).astype(np.float32),
            rng.normal(size=SEEDS).astype(np.float32),
            rng.integers(0, 2, size=SEEDS).astype(np.float32),
            rng.normal(size=(SEEDS, OBS)).astype(np.float32),
        )
    return replay


def _assert_same(arrays: dict[str, np.ndarray], replay) -> None:
    for name in (*replay_store.FIELDS, "pos", "size"):
        np.testing.assert_array_equal(arrays[name], np.asarray(getattr(replay, name)), name)
        assert arrays[name].dtype == np.asarray(getattr(replay, name)).dtype, name


def test_chunks_since_each_checkpoint_rebuild_the_ring_bit_for_bit(tmp_path: Path) -> None:
    """Checkpoints after 3, 5 (wrapping), 6, 16 (more than the capacity since the last one: only
    the last CAP rows are written) and 18 inserts: each rebuild equals the live buffer; chunks
    whose rows are all overwritten are dropped from the record and deleted by collect; every chunk
    holds only the rows since the previous checkpoint."""
    rng = np.random.default_rng(0)
    replay = stack_seeds([replay_init(CAP, OBS, ACT)] * SEEDS)
    template = jax.eval_shape(lambda: replay)
    record, count = None, 0
    for n in (3, 2, 1, 10, 2):
        replay = _insert_many(replay, rng, n)
        count += n
        new = replay_store.append(tmp_path, replay, count, record)
        last = new["chunks"][-1]
        start = max(record["count"] if record else 0, count - CAP)
        assert (last["start"], last["end"]) == (start, count)
        assert last["bytes"] < 4 * SEEDS * (count - start) * ROW_FLOATS + 2000  # rows + zip headers
        assert all(c["end"] > count - CAP for c in new["chunks"])
        removed = replay_store.collect(tmp_path, new)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            c["file"] for c in new["chunks"]
        )
        if record is not None:
            gone = {c["file"] for c in record["chunks"]} - {c["file"] for c in new["chunks"]}
            assert set(removed) == gone
        record = new
        _assert_same(replay_store.load(tmp_path, record, template), replay)
    assert [c["end"] for c in record["chunks"]] == [16, 18]  # the older ones were overwritten


def test_nothing_new_writes_no_chunk_and_counters_are_checked(tmp_path: Path) -> None:
    replay = _insert_many(
        stack_seeds([replay_init(CAP, OBS, ACT)] * SEEDS), np.random.default_rng(1), 4
    )
    record = replay_store.append(tmp_path, replay, 4, None)
    again = replay_store.append(tmp_path, replay, 4, record)
    assert again == record and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(RuntimeError, match="not those of 5 inserts into 7 slots"):
        replay_store.append(tmp_path, replay, 5, record)


def test_a_missing_or_corrupt_chunk_is_named(tmp_path: Path) -> None:
    replay = _insert_many(
        stack_seeds([replay_init(CAP, OBS, ACT)] * SEEDS), np.random.default_rng(2), 5
    )
    template = jax.eval_shape(lambda: replay)
    record = replay_store.append(tmp_path, replay, 5, None)
    path = tmp_path / record["chunks"][0]["file"]
    data = bytearray(path.read_bytes())
    # a flipped byte in the observations' rows: same size, so only the zip's CRC can tell
    rows = np.asarray(replay.obs)[:, :5].tobytes()
    at = bytes(data).find(rows)
    assert at > 0
    data[at + len(rows) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert replay_store.missing(tmp_path, record) is None
    with pytest.raises(CheckpointError, match=f"replay chunk {path}"):
        replay_store.load(tmp_path, record, template)
    path.write_bytes(bytes(data[:100]))
    assert replay_store.missing(tmp_path, record) == (
        f"replay chunk {path} has 100 bytes, expected {record['chunks'][0]['bytes']}"
    )
    path.unlink()
    assert replay_store.missing(tmp_path, record) == f"replay chunk {path} is missing"
    with pytest.raises(CheckpointError, match="is missing"):
        replay_store.load(tmp_path, record, template)
