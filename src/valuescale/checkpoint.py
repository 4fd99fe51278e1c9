"""Atomic checkpoints of a training run (everything needed to continue it bit for bit).

Format (version ``FORMAT_VERSION``): one pickle file (protocol 5) holding a plain dict of Python
scalars, lists, dicts, strings and numpy arrays; no JAX or flax objects, so it loads without the
package's classes. The training loop stores:

- ``format``: the format version; ``config``: ``TrainConfig.to_dict()``;
- ``replay``: per stored replay (``train``, ``validation``), the record of its chunk files
  (``valuescale.replay_store``): the replays' transitions are not in the pickle, which stays small;
- pytrees (agent states, keys, metric accumulators; the carries with ``replay=None``) as
  ``tree_to_numpy(tree)``: the list
  of leaves in ``jax.tree.leaves`` order, fetched with ``jax.device_get`` (typed PRNG keys stored
  as their raw ``key_data``); ``tree_from_numpy(template, leaves)`` rebuilds them onto a freshly
  built template of the same structure, checking every shape and dtype;
- environment snapshots (``env.get_state()`` of every train/eval/validation env), counters, logged
  rows and per-seed status.

``save_checkpoint`` writes through the package's one atomic writer (``valuescale.atomic``): a
temporary file beside ``path``, flushed and fsynced, then ``os.replace``-d onto it, so a reader (or
a run killed at any moment) sees either the previous checkpoint or the new one, never a partial
file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valuescale.atomic import atomic_open

if TYPE_CHECKING:  # numpy is imported where used: `valuescale status` reads lock files only
    import numpy as np

FORMAT_VERSION = 2
CHECKPOINT_NAME = "checkpoint.pkl"

#: A run folder's outputs, written once, when the run is complete (the train rule's outputs).
OUTPUT_NAMES = ("curves.parquet", "run.json")
#: Progress of an unfinished run, written beside each checkpoint (never under an output name):
#: the curves so far and the summary so far (``complete: false``); removed when the run completes.
PROGRESS_NAMES = ("progress.parquet", "progress.json")
#: The lock a live engine holds on its run folder (``hold_run_folder``); it holds the engine's pid.
LOCK_NAME = ".engine.lock"
#: A copy of a complete run's outputs (``OUTPUT_NAMES``), written before its checkpoint is removed.
#: Snakemake deletes the outputs of a job it reruns (``--rerun-incomplete`` after it was killed
#: while an orphaned engine finished the run): the rerun's engine then returns this copy instead of
#: training the cell again (``valuescale.rundir.restore_complete_outputs``).
COMPLETE_DIR = ".complete"


class CheckpointError(ValueError):
    """A checkpoint (or a replay chunk it lists) that cannot be read back: the message names the
    file and what is wrong with it."""


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder (``hold_run_folder``)."""


def busy_message(out: Path, holder: str) -> str:
    """What a process that finds ``out`` held by the process ``holder`` (its pid) says."""
    return (
        f"run folder {out} is held by a live engine (pid {holder or 'unknown'}), which is still "
        "training there: let it finish or stop it, then start again"
    )


def _pid_in(fd: int) -> str:
    """The pid a holder wrote into the lock file open at ``fd`` ("" when none yet)."""
    return os.pread(fd, 32, 0).decode().strip()


def waiting_message(out: Path, holder: str) -> str:
    """What a process that waits for the holder ``holder`` (its pid) of ``out`` says."""
    return (
        f"run folder {out} is held by a live engine (pid {holder or 'unknown'}), which is still "
        "training there: waiting for it to finish or stop"
    )


@contextlib.contextmanager
def hold_run_folder(out_dir: str | os.PathLike, wait: bool = False) -> Iterator[None]:
    """Hold ``out_dir`` for one engine: an exclusive ``flock`` on ``<out_dir>/.engine.lock`` (which
    records the pid) for the life of the block; the file is removed when the block ends. When
    another live process holds it: raises ``RunFolderBusy`` naming the folder and the holder's
    pid, or with ``wait`` logs that (once) and blocks until the holder lets go. The kernel drops
    the lock when its holder dies (kill -9 included), so a dead engine never blocks a restart (its
    lock file stays behind, unheld)."""
    import fcntl

    out = Path(out_dir)
    path = out / LOCK_NAME
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(fd)
            if not wait:
                os.close(fd)
                raise RunFolderBusy(busy_message(out, holder)) from None
            if not said:
                logging.getLogger("valuescale.checkpoint").warning(waiting_message(out, holder))
                said = True
            fcntl.flock(fd, fcntl.LOCK_EX)  # until the holder ends (or dies)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # its holder removed it between our open and our lock
            same = False
        if same:
            break
        os.close(fd)  # a file its previous holder had unlinked: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: a new holder locks a new file
        os.close(fd)


def run_folder_holder(out_dir: str | os.PathLike) -> str | None:
    """The pid (as written) of the live process holding ``out_dir``, or None when none does
    (probing creates nothing: a folder without a lock file is not held)."""
    import fcntl

    path = Path(out_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid_in(fd) or "unknown"
    finally:
        os.close(fd)
    return None


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically pickle ``payload`` (a dict; ``format`` is added) to ``path``."""
    with atomic_open(path, fsync=True) as f:
        pickle.dump({"format": FORMAT_VERSION, **payload}, f, protocol=5)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; ``CheckpointError`` naming the file if it
    is not one (or of another format version)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {FORMAT_VERSION}")
    return payload


def tree_to_numpy(tree: Any) -> list[np.ndarray]:
    """The leaves of a JAX pytree as host numpy arrays (typed PRNG keys as raw key data)."""
    import jax
    import numpy as np

    leaves = []
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        leaves.append(np.asarray(jax.device_get(leaf)))
    return leaves


def tree_from_numpy(template: Any, leaves: list[np.ndarray], what: str = "tree") -> Any:
    """Rebuild a pytree with ``template``'s structure from ``leaves`` (device arrays).

    ``template`` may hold arrays or ``jax.ShapeDtypeStruct``s (``jax.eval_shape`` of the builder:
    nothing is allocated for it).

    Raises ``CheckpointError`` (naming ``what``) when the number, shapes or dtypes of the leaves do not
    match the template: the checkpoint belongs to a differently shaped run.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    template_leaves, treedef = jax.tree.flatten(template)
    if len(template_leaves) != len(leaves):
        raise CheckpointError(
            f"checkpoint {what}: {len(leaves)} arrays, expected {len(template_leaves)}"
        )
    out = []
    for i, (t, x) in enumerate(zip(template_leaves, leaves, strict=True)):
        typed_key = jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key)
        ref = jax.eval_shape(jax.random.key_data, t) if typed_key else t
        if tuple(ref.shape) != tuple(x.shape) or np.dtype(ref.dtype) != x.dtype:
            raise CheckpointError(
                f"checkpoint {what}: leaf {i} has shape {x.shape} {x.dtype}, "
                f"expected {tuple(ref.shape)} {np.dtype(ref.dtype)}"
            )
        arr = jnp.asarray(x)
        if typed_key:
            impl = jax.random.key_impl(t) if isinstance(t, jax.Array) else None
            arr = jax.random.wrap_key_data(arr, impl=impl)
        out.append(arr)
    return jax.tree.unflatten(treedef, out)
