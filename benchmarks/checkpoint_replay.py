"""Checkpoint cost of the replay (issue #11): prints times and bytes, asserts nothing.

A dog-run shaped buffer as in the paper's runs: obs 223, act 38, 1,000,000 slots per seed, 5 seeds
(9.7 GB of float32 on the device), full, checkpointed every 50,000 env steps. Two ways to write
the replay at one checkpoint:

1. incremental (the engine's, ``valuescale.replay_store.append``): the 50,000 rows per seed
   inserted since the previous checkpoint, as one fsynced chunk;
2. whole buffer (the engine before it, and what a plain pickle of the state does): every leaf
   fetched to the host and pickled into one fsynced file.

Then the restore of a full buffer from its 20 chunks (``replay_store.load``), which is O(buffer)
either way. The buffer holds zeros (file sizes and write times do not depend on the values).

Run: .venv/bin/python benchmarks/checkpoint_replay.py [--seeds 5] [--capacity 1000000]
     [--every 50000] [--dir DIR] [--skip-whole] [--skip-restore]
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from valuescale import replay_store
from valuescale.atomic import atomic_open
from valuescale.checkpoint import tree_to_numpy
from valuescale.replay import Replay


def full_replay(seeds: int, capacity: int, obs: int, act: int, count: int) -> Replay:
    """A stacked replay after ``count`` inserts (zeros, built on the device: no host copy)."""
    f32 = jnp.float32
    zeros = jax.jit(lambda shape: jnp.zeros(shape, f32), static_argnums=0)
    return Replay(
        obs=zeros((seeds, capacity, obs)),
        actions=zeros((seeds, capacity, act)),
        rewards=zeros((seeds, capacity)),
        masks=zeros((seeds, capacity)),
        next_obs=zeros((seeds, capacity, obs)),
        pos=jnp.full((seeds,), count % capacity, jnp.int32),
        size=jnp.full((seeds,), min(count, capacity), jnp.int32),
    )


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--capacity", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=50_000, help="env steps between checkpoints")
    ap.add_argument("--obs", type=int, default=223)
    ap.add_argument("--act", type=int, default=38)
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--skip-whole", action="store_true", help="do not time the whole-buffer pickle")
    ap.add_argument("--skip-restore", action="store_true", help="do not time the restore")
    args = ap.parse_args()
    S, cap, every = args.seeds, args.capacity, args.every
    scratch = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    gb = 1e9
    try:
        count = cap + every  # steady state: full, one interval past the previous checkpoint
        replay = full_replay(S, cap, args.obs, args.act, count)
        jax.block_until_ready(replay)
        row_bytes = 4 * (2 * args.obs + args.act + 2)
        print(
            f"buffer: {S} seeds x {cap:,} slots x (obs {args.obs}, act {args.act}) = "
            f"{S * cap * row_bytes / gb:.2f} GB float32; checkpoint every {every:,} env steps"
        )
        print(f"scratch: {scratch} ({jax.default_backend()}, jax {jax.__version__})")

        folder = scratch / "incremental"
        previous = {"capacity": cap, "count": cap, "chunks": []}
        t0 = time.perf_counter()
        record = replay_store.append(folder, replay, count, previous)
        dt = time.perf_counter() - t0
        written = du(folder)
        print(
            f"incremental checkpoint: {dt:6.2f} s, {written / gb:6.3f} GB written "
            f"({written / (S * every):,.0f} B per transition and seed; "
            f"{written / dt / gb:.2f} GB/s); chunks listed: {len(record['chunks'])}"
        )

        if not args.skip_whole:
            path = scratch / "whole" / "checkpoint.pkl"
            t0 = time.perf_counter()
            with atomic_open(path, fsync=True) as fh:
                pickle.dump({"replay": tree_to_numpy(replay)}, fh, protocol=5)
            dt_whole = time.perf_counter() - t0
            whole = path.stat().st_size
            print(
                f"whole-buffer checkpoint: {dt_whole:6.2f} s, {whole / gb:6.3f} GB written "
                f"({whole / gb / (written / gb):.0f}x the bytes, {dt_whole / dt:.1f}x the time)"
            )
            shutil.rmtree(path.parent)

        if not args.skip_restore:
            # the full buffer as the engine leaves it on disk: cap / every chunks of every rows
            shutil.rmtree(folder)
            n = -(-cap // every)
            record = None
            t0 = time.perf_counter()
            for k in range(1, n + 1):
                c = min(k * every, cap)
                at_c = replay.replace(  # the same arrays, the counters of c inserts
                    pos=jnp.full((S,), c % cap, jnp.int32), size=jnp.full((S,), c, jnp.int32)
                )
                record = replay_store.append(folder, at_c, c, record)
                del at_c
            dt_all = time.perf_counter() - t0
            template = jax.eval_shape(lambda: replay)
            del replay
            t0 = time.perf_counter()
            arrays = replay_store.load(folder, record, template)
            dt_load = time.perf_counter() - t0
            print(
                f"restore of the full buffer from {len(record['chunks'])} chunks: "
                f"{dt_load:6.2f} s ({sum(a.nbytes for a in arrays.values()) / gb:.2f} GB); "
                f"writing those chunks took {dt_all:.1f} s in all"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
