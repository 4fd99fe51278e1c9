"""Checkpoint files: atomic writes, pytree round trips (typed and raw keys), clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from valuescale.atomic import atomic_write_bytes
from valuescale.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    save_checkpoint,
    tree_from_numpy,
    tree_to_numpy,
)


def _tree() -> dict:
    return {
        "params": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.float32)},
        "raw_key": jax.random.PRNGKey(3),
        "typed_key": jax.random.key(5),
        "step": jnp.asarray(7, jnp.int32),
    }


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    tree = _tree()
    path = tmp_path / "ck.pkl"
    save_checkpoint(path, {"leaves": tree_to_numpy(tree), "t": 12, "rows": [1.5, 2.5]})
    payload = load_checkpoint(path)
    assert payload["format"] == FORMAT_VERSION and payload["t"] == 12
    assert all(isinstance(x, np.ndarray) for x in payload["leaves"])
    template = jax.tree.map(jnp.zeros_like, _tree())
    template["typed_key"] = jax.random.key(0)
    back = tree_from_numpy(template, payload["leaves"])
    np.testing.assert_array_equal(back["params"]["w"], tree["params"]["w"])
    np.testing.assert_array_equal(back["raw_key"], tree["raw_key"])
    # The typed key is a key again and draws the same numbers.
    assert jax.dtypes.issubdtype(back["typed_key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.uniform(back["typed_key"], (4,)), jax.random.uniform(tree["typed_key"], (4,))
    )
    assert not list(tmp_path.glob("*.tmp"))


def test_shape_mismatch_is_reported() -> None:
    leaves = tree_to_numpy(_tree())
    other = _tree()
    other["params"]["w"] = jnp.zeros((3, 3))
    with pytest.raises(ValueError, match=r"carry: leaf \d+ has shape \(2, 3\)"):
        tree_from_numpy(other, leaves, "carry")
    with pytest.raises(ValueError, match="arrays, expected"):
        tree_from_numpy(other, leaves[:-1], "carry")


def test_failed_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ck.pkl"
    save_checkpoint(path, {"t": 1})
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        save_checkpoint(path, {"t": 2, "bad": lambda: None})  # unpicklable
    assert load_checkpoint(path)["t"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_atomic_write_bytes_replaces(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_garbage_and_foreign_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x00not a pickle")
    with pytest.raises(ValueError, match="garbage.pkl"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"format": 999}))
    with pytest.raises(ValueError, match="format 999"):
        load_checkpoint(foreign)


def _start_holder(folder: Path):
    """A process that holds ``folder`` (``hold_run_folder``) for 10 minutes; it prints ``held``
    once it does."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from valuescale.checkpoint import hold_run_folder\n"
        "with hold_run_folder(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
    )


def test_a_run_folder_is_held_by_one_live_process_and_freed_when_it_dies(tmp_path: Path) -> None:
    """The run-folder lock: a second holder is refused with the folder and the holder's pid; a
    holder killed with SIGKILL frees the folder (the kernel drops its flock)."""
    import os
    import signal
    import time

    from valuescale.checkpoint import RunFolderBusy, hold_run_folder, run_folder_holder

    assert run_folder_holder(tmp_path / "missing") is None
    holder = _start_holder(tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_folder_holder(tmp_path) == str(holder.pid)
        with pytest.raises(RunFolderBusy) as info:
            with hold_run_folder(tmp_path):
                pytest.fail("a held folder was entered")
        assert str(tmp_path) in str(info.value) and f"pid {holder.pid}" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while run_folder_holder(tmp_path) is not None:
        assert time.monotonic() < deadline, "the lock outlived its holder"
        time.sleep(0.05)
    with hold_run_folder(tmp_path):  # free again: we hold it, and say so to any other opener
        assert run_folder_holder(tmp_path) == str(os.getpid())
    assert run_folder_holder(tmp_path) is None


def test_a_waiting_engine_enters_the_folder_when_its_holder_ends(tmp_path: Path, caplog) -> None:
    """``hold_run_folder(wait=True)`` (the train rule's ``--wait``): while another live process
    holds the folder it says so, naming the holder, and waits; it enters once the holder ends."""
    import signal
    import threading
    import time

    from valuescale.checkpoint import hold_run_folder, run_folder_holder

    holder = _start_holder(tmp_path)
    entered: list[str | None] = []

    def waiter() -> None:
        with hold_run_folder(tmp_path, wait=True):
            entered.append(run_folder_holder(tmp_path))

    try:
        assert holder.stdout.readline().strip() == "held"
        thread = threading.Thread(target=waiter)
        with caplog.at_level("WARNING", logger="valuescale.checkpoint"):
            thread.start()
            time.sleep(1.0)
            assert entered == [], "entered a folder another live process holds"
            assert thread.is_alive()
        assert f"pid {holder.pid}" in caplog.text and "waiting" in caplog.text
        holder.send_signal(signal.SIGTERM)
        holder.wait()
        thread.join(timeout=10)
        assert not thread.is_alive(), "still waiting after the holder ended"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    import os

    assert entered == [str(os.getpid())]
    assert run_folder_holder(tmp_path) is None
