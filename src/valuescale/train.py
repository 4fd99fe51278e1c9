"""The multi-seed training engine and its CLI: ``python -m valuescale.train --env cheetah-run ...``.

One process trains all seeds of one cell (env x hyperparameters). The agent states and replays
carry a leading seed axis; every env step is ONE jitted, vmapped call with the carry donated::

    insert the transition -> update_n (n = updates due now) -> next actions

(only the next actions come back to the host). Per-step update counts follow
``TrainConfig.updates_at`` (fractional UTD: 0 or 1 updates at sigma < 1, floor or ceil above).
Warm-up steps use uniform random actions and no updates. The update count and the
policy-or-random choice are arguments of the one compiled step function, not constants of it: a
run compiles it once, and runs of the same shapes at other UTD ratios share its cache entry.

Schedule at env step t (after the fused call): validation step (every ``validation_every``) ->
training-metric flush (every ``log_interval``: per-seed means over the interval, fetched from the
device) -> deterministic evaluation (every ``eval_interval`` and at the end) -> reset (every
``round(reset_interval / utd)`` env steps: all networks and optimiser states re-initialised with
new per-seed keys; the replay is kept) -> checkpoint (every ``checkpoint_every``).

Per-seed randomness depends only on the seed value: agent init/reset keys
``fold_in(fold_in(PRNGKey(seed), 1), reset_index)``, the action key ``fold_in(PRNGKey(seed), 2)``,
the validation action key ``fold_in(PRNGKey(seed), 3)``, and env seeds drawn from
``SeedSequence(seed, spawn_key=(stream, index))`` (0: train env, 1: eval env ``index``, 2:
validation env). So seed 3 follows the same random streams alone or next to other seeds; results
agree up to floating-point differences from batching the seeds in one XLA computation (the
warm-up transitions, which involve no network, are identical).

Divergence: a seed whose critic or actor loss becomes non-finite (or whose action does) is marked
``diverged`` at that env step; from there on it contributes no rows (rows at steps >= the divergence
step are dropped, so no NaN is ever averaged into a logged value), is not evaluated and its env is
stepped with zero actions. Other seeds are unaffected (independent under vmap).

Outputs (written atomically: temporary file + ``os.replace``), once, when the run is complete:
``curves.parquet`` (long format, columns ``CURVE_COLUMNS``) and ``run.json`` (resolved config,
versions, critic_params, counters, wall time, reset steps, per-seed status). Before that, every
checkpoint refreshes ``progress.parquet`` / ``progress.json`` (``"complete": false``) instead.
``checkpoint.pkl`` (see ``valuescale.checkpoint``) and the replay chunks under ``replay/``
(``valuescale.replay_store``: a checkpoint writes only the rows inserted since the previous one)
hold everything to continue bit for bit; starting a run in an out_dir with a checkpoint resumes
from it (state it cannot use: ``valuescale.rundir.stale_reason``); both are deleted when the run
completes. Starting a run in an out_dir with a complete run.json of the same config returns that
summary without training.

JAX is imported lazily (inside functions) so that the CLI can pin the process to ``--threads``
cores before JAX starts its thread pools.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from valuescale import replay_store
from valuescale.atomic import atomic_write_bytes
from valuescale.checkpoint import (
    CHECKPOINT_NAME,
    OUTPUT_NAMES,
    PROGRESS_NAMES,
    CheckpointError,
    RunFolderBusy,
    hold_run_folder,
    load_checkpoint,
    save_checkpoint,
    tree_from_numpy,
    tree_to_numpy,
)
from valuescale.config import (
    CURVE_COLUMNS,
    ConfigError,
    TrainConfig,
    field_docs,
)
from valuescale.replay_store import REPLAY_DIR
from valuescale.rundir import discard as discard_state
from valuescale.rundir import discard_stale as discard_stale_state
from valuescale.rundir import stale_reason
from valuescale.status import last_evaluations

log = logging.getLogger("valuescale.train")


TRAIN_METRICS: tuple[str, ...] = ("critic_loss", "actor_loss", "temperature", "q_mean", "entropy")
"""Training metrics logged every ``log_interval`` env steps (interval means over updates)."""

VERSION_PACKAGES: tuple[str, ...] = (
    "valuescale",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "dm_control",
    "mujoco",
    "numpy",
    "pandas",
)

# Random streams per seed (see the module docstring).
_KEY_INIT, _KEY_ACT, _KEY_VAL = 1, 2, 3
_ENV_TRAIN, _ENV_EVAL, _ENV_VAL = 0, 1, 2


def env_seed(seed: int, stream: int, index: int = 0) -> int:
    """The dm_control/gymnasium seed of env ``index`` of ``stream`` for training seed ``seed``."""
    return int(np.random.SeedSequence(seed, spawn_key=(stream, index)).generate_state(1)[0])


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that determine a run's numbers."""
    out: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _metric_names(cfg: TrainConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training metrics, validation metrics) logged for ``cfg``."""
    train = TRAIN_METRICS + (("passive_critic_loss",) if cfg.passive_critic else ())
    val: tuple[str, ...] = ()
    if cfg.validation:
        val = ("validation_critic_loss",)
        if cfg.passive_critic:
            val += ("passive_validation_critic_loss",)
    return train, val


# --------------------------------------------------------------------------- device functions


class _Device:
    """The jitted, vmapped device functions of one run (built once; JAX imported here)."""

    def __init__(self, cfg: TrainConfig, obs_dim: int, act_dim: int) -> None:
        import jax
        import jax.numpy as jnp

        from valuescale.agents import bro
        from valuescale.replay import replay_init, replay_insert, replay_sample, stack_seeds

        atomic_cache_entries()  # also for a cache set through JAX's own settings
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.bcfg = cfg.bro_config()
        self.n_seeds = len(cfg.seeds)
        self.train_metrics, self.val_metrics = _metric_names(cfg)
        self._jax, self._jnp, self._bro = jax, jnp, bro
        self._replay_init, self._stack = replay_init, stack_seeds
        bcfg, d = self.bcfg, obs_dim
        vinsert = jax.vmap(replay_insert)

        def next_action(agent, key, obs, policy):
            """The policy's sample where ``policy`` (a traced bool), else uniform in [-1, 1]."""
            keys = jax.vmap(jax.random.split)(key)
            key, k_act = keys[:, 0], keys[:, 1]
            sampled = jax.vmap(lambda s, o, k: bro.act(s, o, k, False))(agent, obs, k_act)
            uniform = jax.vmap(lambda k: jax.random.uniform(k, (act_dim,), jnp.float32, -1.0, 1.0))(
                k_act
            )
            return key, jnp.where(policy, sampled, uniform)

        def fused(carry, packed, n, policy):
            reward, mask = packed[:, 0], packed[:, 1]
            next_obs, policy_obs = packed[:, 2 : 2 + d], packed[:, 2 + d :]
            replay = vinsert(carry["replay"], carry["obs"], carry["action"], reward, mask, next_obs)
            t = carry["t"] + 1
            agent, sums, count, bad = carry["agent"], carry["sums"], carry["count"], carry["bad"]
            # n = 0 (warm-up, or a step without update at sigma < 1): zero info, nothing changes
            agent, info = jax.vmap(lambda s, r: bro.update_n(s, r, bcfg, n))(agent, replay)
            finite = jnp.isfinite(info["critic_loss"]) & jnp.isfinite(info["actor_loss"])
            bad = jnp.where((bad < 0) & ~finite, t, bad)
            sums = {k: sums[k] + info[k] * n for k in sums}
            count = count + n
            key, action = next_action(agent, carry["key"], policy_obs, policy)
            return dict(
                carry,
                agent=agent,
                replay=replay,
                obs=policy_obs,
                action=action,
                key=key,
                t=t,
                sums=sums,
                count=count,
                bad=bad,
            )

        def refresh_action(carry, policy):
            key, action = next_action(carry["agent"], carry["key"], carry["obs"], policy)
            return dict(carry, key=key, action=action)

        def val_act(val, agent, policy):
            key, action = next_action(agent, val["key"], val["obs"], policy)
            return dict(val, key=key, action=action)

        def val_insert(val, agent, packed, compute_loss):
            """Insert; where ``compute_loss`` (a traced bool), also accumulate TD losses."""
            reward, mask = packed[:, 0], packed[:, 1]
            next_obs, new_obs = packed[:, 2 : 2 + d], packed[:, 2 + d :]
            replay = vinsert(val["replay"], val["obs"], val["action"], reward, mask, next_obs)
            keys = jax.vmap(jax.random.split)(val["key"])
            batch = jax.vmap(lambda r, k: replay_sample(r, k, bcfg.batch_size))(replay, keys[:, 1])
            info = jax.vmap(lambda s, b: bro.td_losses(s, b, bcfg))(agent, batch)
            named = {"validation_critic_loss": info["critic_loss"]}
            if "passive_critic_loss" in info:
                named["passive_validation_critic_loss"] = info["passive_critic_loss"]
            return dict(
                val,
                replay=replay,
                obs=new_obs,
                key=jnp.where(compute_loss, keys[:, 0], val["key"]),
                sums={
                    k: jnp.where(compute_loss, val["sums"][k] + named[k], val["sums"][k])
                    for k in val["sums"]
                },
                count=val["count"] + compute_loss.astype(jnp.int32),
            )

        dummy = jax.random.PRNGKey(0)

        def eval_act(agent, obs):
            return jax.vmap(lambda s, o: bro.act(s, o, dummy, True))(agent, obs)

        self._fused = jax.jit(fused, donate_argnums=0)
        self._refresh = jax.jit(refresh_action, donate_argnums=0)
        self._val_act = jax.jit(val_act, donate_argnums=0)
        self._val_insert = jax.jit(val_insert, donate_argnums=0)
        self.eval_act = jax.jit(eval_act)

    # ----------------------------------------------------------------- builders

    def seed_keys(self, stream: int, index: int | None = None) -> Any:
        """[S, 2] raw keys ``fold_in(PRNGKey(seed), stream)`` (then ``index`` if given)."""
        jax = self._jax
        keys = []
        for seed in self.cfg.seeds:
            k = jax.random.fold_in(jax.random.PRNGKey(seed), stream)
            if index is not None:
                k = jax.random.fold_in(k, index)
            keys.append(k)
        return self._jnp.stack(keys)

    def init_agent(self, reset_index: int) -> Any:
        """Freshly initialised agent states (seed axis) for the ``reset_index``-th (re)start."""
        keys = self.seed_keys(_KEY_INIT, reset_index)
        return self._bro.init_seeds(keys, self.obs_dim, self.act_dim, self.bcfg)

    def zero_sums(self, names: Sequence[str]) -> dict[str, Any]:
        """Per-seed zero accumulators for ``names``."""
        return {k: self._jnp.zeros((self.n_seeds,), self._jnp.float32) for k in names}

    def zero(self) -> Any:
        """An int32 zero scalar on the device (counters)."""
        return self._jnp.zeros((), self._jnp.int32)

    def init_carry(self, obs: np.ndarray) -> dict[str, Any]:
        """The training carry at env step 0 (no pending action yet)."""
        jnp = self._jnp
        replay = self._replay_init(self.cfg.replay_size, self.obs_dim, self.act_dim)
        return {
            "agent": self.init_agent(0),
            "replay": self._stack([replay] * self.n_seeds),
            "obs": jnp.asarray(obs, jnp.float32),
            "action": jnp.zeros((self.n_seeds, self.act_dim), jnp.float32),
            "key": self.seed_keys(_KEY_ACT),
            "t": jnp.zeros((), jnp.int32),
            "sums": self.zero_sums(self.train_metrics),
            "count": jnp.zeros((), jnp.int32),
            "bad": jnp.full((self.n_seeds,), -1, jnp.int32),
        }

    def init_val(self, obs: np.ndarray) -> dict[str, Any]:
        """The validation carry (held-out replay of the validation envs)."""
        jnp = self._jnp
        capacity = max(
            self.cfg.batch_size, math.ceil(self.cfg.replay_size / self.cfg.validation_every)
        )
        replay = self._replay_init(capacity, self.obs_dim, self.act_dim)
        return {
            "replay": self._stack([replay] * self.n_seeds),
            "obs": jnp.asarray(obs, jnp.float32),
            "action": jnp.zeros((self.n_seeds, self.act_dim), jnp.float32),
            "key": self.seed_keys(_KEY_VAL),
            "sums": self.zero_sums(self.val_metrics),
            "count": jnp.zeros((), jnp.int32),
        }

    # ----------------------------------------------------------------- calls

    def fused(self, carry: dict, packed: np.ndarray, n: int, policy: bool) -> dict:
        """Insert the transition, run ``n`` updates, compute the next actions (donates carry)."""
        return self._fused(carry, packed, np.int32(n), np.bool_(policy))

    def refresh(self, carry: dict, policy: bool) -> dict:
        """Recompute the pending actions with the current agent (after a reset)."""
        return self._refresh(carry, np.bool_(policy))

    def val_act(self, val: dict, agent: Any, policy: bool) -> dict:
        """Compute the validation envs' next actions."""
        return self._val_act(val, agent, np.bool_(policy))

    def val_insert(self, val: dict, agent: Any, packed: np.ndarray, compute_loss: bool) -> dict:
        """Insert validation transitions (and accumulate validation TD losses)."""
        return self._val_insert(val, agent, packed, np.bool_(compute_loss))

    def critic_params(self, agent: Any) -> tuple[int, int]:
        """(critic, passive critic) parameter counts from seed 0's parameter tree."""
        one = self._jax.tree.map(lambda x: x[0], agent)
        return self._bro.critic_param_count(one), self._bro.passive_critic_param_count(one)

    def shapes_of(self, builder: Callable[..., Any], *args: Any) -> Any:
        """``jax.eval_shape`` of ``builder(*args)``: its structure, shapes and dtypes."""
        return self._jax.eval_shape(builder, *args)

    def fetch(self, tree: Any) -> Any:
        """``jax.device_get`` (host numpy)."""
        return self._jax.device_get(tree)


# --------------------------------------------------------------------------- the loop


class _Run:
    """Host side of one training run (envs, counters, logs) around the device carry."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, progress: bool | None) -> None:
        from valuescale.envs import make_env

        self.cfg, self.out_dir = cfg, out_dir
        self.progress = sys.stderr.isatty() if progress is None else progress
        seeds = cfg.seeds
        self.n_seeds = len(seeds)
        mk = cfg.max_episode_steps
        self.envs = [make_env(cfg.env, env_seed(s, _ENV_TRAIN), mk) for s in seeds]
        self.eval_envs = [
            [make_env(cfg.env, env_seed(s, _ENV_EVAL, e), mk) for e in range(cfg.eval_episodes)]
            for s in seeds
        ]
        self.val_envs = (
            [make_env(cfg.env, env_seed(s, _ENV_VAL), mk) for s in seeds] if cfg.validation else []
        )
        self.obs_dim, self.act_dim = self.envs[0].obs_dim, self.envs[0].act_dim
        self.dev = _Device(cfg, self.obs_dim, self.act_dim)
        self.train_metrics, self.val_metrics = _metric_names(cfg)
        # Host state (all of it goes into the checkpoint).
        self.t = 0
        self.grad_steps = 0
        self.resets: list[int] = []
        self.diverged: dict[int, int] = {}  # seed index -> env step
        self.rows: dict[str, list] = {"seed": [], "step": [], "metric": [], "value": []}
        self.wall_before = 0.0
        self.resumed_at: list[int] = []
        self.last_return: float | None = None
        self._nan_at = None
        if cfg._debug_nan_reward is not None:
            seed, step = cfg._debug_nan_reward
            self._nan_at = (seeds.index(seed), int(step))

    # ----------------------------------------------------------------- helpers

    def _policy(self, t: int) -> bool:
        """Whether the action for env step index ``t`` (0-based) comes from the policy."""
        return t >= self.cfg.warmup_steps

    def _updates_after(self, t: int) -> int:
        """Gradient updates after env step index ``t`` (0-based)."""
        k = t - self.cfg.warmup_steps
        return self.cfg.updates_at(k) if k >= 0 else 0

    def _add_rows(self, seed_index: int, step: int, metric: str, value: float) -> None:
        self.rows["seed"].append(self.cfg.seeds[seed_index])
        self.rows["step"].append(step)
        self.rows["metric"].append(metric)
        self.rows["value"].append(float(value))

    def _mark_diverged(self, seed_index: int, step: int) -> None:
        if seed_index not in self.diverged or step < self.diverged[seed_index]:
            if seed_index not in self.diverged:
                log.warning("seed %d diverged at env step %d", self.cfg.seeds[seed_index], step)
            self.diverged[seed_index] = step

    def _sync_divergence(self) -> None:
        bad = np.asarray(self.dev.fetch(self.carry["bad"]))
        for i, b in enumerate(bad):
            if b >= 0:
                self._mark_diverged(i, int(b))

    def _flush(self) -> None:
        """Log the per-seed interval means of the training (and validation) metrics."""
        carry = self.carry
        sums, count = self.dev.fetch((carry["sums"], carry["count"]))
        self._sync_divergence()
        groups = [(sums, int(count), self.train_metrics)]
        if self.cfg.validation:
            vsums, vcount = self.dev.fetch((self.val["sums"], self.val["count"]))
            groups.append((vsums, int(vcount), self.val_metrics))
        for group_sums, group_count, names in groups:
            if group_count == 0:
                continue
            for i in range(self.n_seeds):
                values = [float(group_sums[k][i]) / group_count for k in names]
                if not all(math.isfinite(v) for v in values):
                    self._mark_diverged(i, self.t)
                if i in self.diverged:
                    continue
                for k, v in zip(names, values, strict=True):
                    self._add_rows(i, self.t, k, v)
        self.carry = dict(carry, sums=self.dev.zero_sums(self.train_metrics), count=self.dev.zero())
        if self.cfg.validation:
            self.val = dict(
                self.val, sums=self.dev.zero_sums(self.val_metrics), count=self.dev.zero()
            )

    def _evaluate(self) -> None:
        """Deterministic evaluation: ``eval_episodes`` episodes per (non-diverged) seed."""
        self._sync_divergence()
        S, E = self.n_seeds, self.cfg.eval_episodes
        obs = np.zeros((S, E, self.obs_dim), np.float32)
        done = np.ones((S, E), bool)
        returns = np.zeros((S, E), np.float64)
        active = [i for i in range(S) if i not in self.diverged]
        for i in active:
            for e in range(E):
                obs[i, e] = self.eval_envs[i][e].reset()
                done[i, e] = False
        agent = self.carry["agent"]
        while not done.all():
            actions = np.asarray(self.dev.eval_act(agent, obs))
            for i in active:
                if done[i].all():
                    continue
                if not np.isfinite(actions[i]).all():
                    self._mark_diverged(i, self.t)
                    done[i] = True
                    continue
                for e in range(E):
                    if done[i, e]:
                        continue
                    o, r, terminated, truncated = self.eval_envs[i][e].step(actions[i, e])
                    obs[i, e] = o
                    returns[i, e] += r
                    done[i, e] = terminated or truncated
        means = []
        for i in active:
            if i not in self.diverged:
                self._add_rows(i, self.t, "return", returns[i].mean())
                means.append(returns[i].mean())
        self.last_return = float(np.mean(means)) if means else None

    def _reset_agent(self) -> None:
        self.resets.append(self.t)
        self.carry = dict(self.carry, agent=self.dev.init_agent(len(self.resets)))
        self.carry = self.dev.refresh(self.carry, self._policy(self.t))

    # ----------------------------------------------------------------- state

    def _fresh_start(self) -> None:
        shutil.rmtree(self.out_dir / REPLAY_DIR, ignore_errors=True)  # of no checkpoint
        self._replay_records = {}
        obs = np.stack([env.reset() for env in self.envs])
        self.carry = self.dev.refresh(self.dev.init_carry(obs), self._policy(0))
        if self.cfg.validation:
            vobs = np.stack([env.reset() for env in self.val_envs])
            self.val = self.dev.init_val(vobs)

    def _replay_parts(self) -> dict[str, tuple[Any, int]]:
        """The stored replays: name -> (stacked replay, inserts so far). The training replay gets
        one insert per env step, the validation replay one per ``validation_every`` steps."""
        parts = {"train": (self.carry["replay"], self.t)}
        if self.cfg.validation:
            parts["validation"] = (self.val["replay"], self.t // self.cfg.validation_every)
        return parts

    def _save_checkpoint(self, path: Path) -> None:
        """The replays' new rows as chunks (``valuescale.replay_store``), then the checkpoint
        that lists them, then the chunks no checkpoint needs any more are deleted."""
        folder = self.out_dir / REPLAY_DIR
        records = {
            name: replay_store.append(folder / name, replay, count, self._replay_records.get(name))
            for name, (replay, count) in self._replay_parts().items()
        }
        save_checkpoint(path, self._checkpoint_payload(records))
        self._replay_records = records
        for name, record in records.items():
            replay_store.collect(folder / name, record)

    def _checkpoint_payload(self, records: dict[str, Any]) -> dict[str, Any]:
        no_replay = dict(self.carry, replay=None)  # the replays are stored as chunks
        return {
            "replay": records,
            "config": self.cfg.to_dict(),
            "t": self.t,
            "grad_steps": self.grad_steps,
            "resets": list(self.resets),
            "diverged": dict(self.diverged),
            "rows": {k: list(v) for k, v in self.rows.items()},
            "wall_time_s": self.wall_before + (time.perf_counter() - self._t0),
            "resumed_at": list(self.resumed_at),
            "last_return": self.last_return,
            "carry": tree_to_numpy(no_replay),
            "val": tree_to_numpy(dict(self.val, replay=None)) if self.cfg.validation else None,
            "envs": [env.get_state() for env in self.envs],
            "eval_envs": [[env.get_state() for env in row] for row in self.eval_envs],
            "val_envs": [env.get_state() for env in self.val_envs],
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Take over the state of ``ckpt`` (a ``load_checkpoint`` payload). Every array is read
        (and checked) before any host state changes: a ``CheckpointError`` leaves the run as
        built."""
        zero_obs = np.zeros((self.n_seeds, self.obs_dim), np.float32)
        shapes = self.dev.shapes_of  # templates without allocating a second replay
        folder = self.out_dir / REPLAY_DIR
        records = ckpt.get("replay") or {}

        def rebuild(template: dict[str, Any], leaves: list, name: str) -> dict[str, Any]:
            tree = tree_from_numpy(dict(template, replay=None), leaves, name)
            if name not in records:
                raise CheckpointError(f"checkpoint lists no chunks of the {name} replay")
            arrays = replay_store.load(folder / name, records[name], template["replay"])
            jnp = self.dev._jnp
            # field by field, each host copy freed once on the device: peak ~ buffer + one field
            replay = template["replay"].replace(
                **{k: jnp.asarray(arrays.pop(k)) for k in list(arrays)}
            )
            return dict(tree, replay=replay)

        carry = rebuild(shapes(self.dev.init_carry, zero_obs), ckpt["carry"], "train")
        if self.cfg.validation:
            self.val = rebuild(shapes(self.dev.init_val, zero_obs), ckpt["val"], "validation")
        self.carry = carry
        self._replay_records = dict(records)
        for name, record in records.items():  # chunks a killed checkpoint left behind
            replay_store.collect(folder / name, record)
        for env, state in zip(self.envs, ckpt["envs"], strict=True):
            env.set_state(state)
        for row, states in zip(self.eval_envs, ckpt["eval_envs"], strict=True):
            for env, state in zip(row, states, strict=True):
                env.set_state(state)
        for env, state in zip(self.val_envs, ckpt["val_envs"], strict=True):
            env.set_state(state)
        self.t = int(ckpt["t"])
        self.grad_steps = int(ckpt["grad_steps"])
        self.resets = list(ckpt["resets"])
        self.diverged = {int(k): int(v) for k, v in ckpt["diverged"].items()}
        self.rows = {k: list(v) for k, v in ckpt["rows"].items()}
        self.wall_before = float(ckpt["wall_time_s"])
        self.resumed_at = list(ckpt["resumed_at"]) + [self.t]
        self.last_return = ckpt["last_return"]

    # ----------------------------------------------------------------- outputs

    def _summary(self, complete: bool) -> dict[str, Any]:
        wall = self.wall_before + (time.perf_counter() - self._t0)
        seeds = {}
        for i, seed in enumerate(self.cfg.seeds):
            if i in self.diverged:
                seeds[str(seed)] = {"status": "diverged", "diverged_at_step": self.diverged[i]}
            else:
                seeds[str(seed)] = {"status": "ok"}
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            affinity = os.cpu_count()
        return {
            "complete": complete,
            "config": self.cfg.to_dict(),
            "versions": package_versions(),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "critic_params": self.critic_params,
            "passive_critic_params": self.passive_params,
            "env_steps": self.t,
            "gradient_steps": self.grad_steps,
            "reset_steps": list(self.resets),
            "wall_time_s": wall,
            "env_steps_per_s": self.t / wall if wall > 0 else None,
            "resumed_at_steps": list(self.resumed_at),
            "seeds": seeds,
            # the last evaluation return of each seed (read by python -m valuescale.status)
            "last_eval": last_evaluations(
                self.rows, {self.cfg.seeds[i]: step for i, step in self.diverged.items()}
            ),
            "cpu_cores": affinity,
            "platform": self.dev._jax.default_backend(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),  # None outside SLURM
        }

    def _curves(self) -> Any:
        import pandas as pd

        cfg = self.cfg
        df = pd.DataFrame(
            {
                "seed": np.asarray(self.rows["seed"], np.int64),
                "step": np.asarray(self.rows["step"], np.int64),
                "metric": pd.Series(self.rows["metric"], dtype=object),
                "value": np.asarray(self.rows["value"], np.float64),
            }
        )
        keep = np.ones(len(df), bool)
        for i, step in self.diverged.items():
            keep &= ~((df["seed"].to_numpy() == cfg.seeds[i]) & (df["step"].to_numpy() >= step))
        df = df[keep]
        constants = {
            "env": cfg.env,
            "agent": cfg.agent,
            "utd": float(cfg.utd),
            "width": int(cfg.critic_width),
            "critic_params": int(self.critic_params),
            "batch_size": int(cfg.batch_size),
            "lr": float(cfg.lr),
        }
        for k, v in constants.items():
            df[k] = v
        df = df.sort_values(["seed", "metric", "step"], kind="stable").reset_index(drop=True)
        return df[list(CURVE_COLUMNS)]

    def _write_outputs(self, complete: bool) -> dict[str, Any]:
        """The run's outputs (``OUTPUT_NAMES``) once it is complete, and only then; before that
        its progress (``PROGRESS_NAMES``, beside the checkpoint), so that nothing that reads a run
        folder can take an unfinished run for a finished one."""
        summary = self._summary(complete)
        buf = io.BytesIO()
        self._curves().to_parquet(buf, index=False)
        text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
        curves_name, summary_name = OUTPUT_NAMES if complete else PROGRESS_NAMES
        atomic_write_bytes(self.out_dir / curves_name, buf.getvalue())
        atomic_write_bytes(self.out_dir / summary_name, text.encode())
        if complete:
            for name in PROGRESS_NAMES:
                (self.out_dir / name).unlink(missing_ok=True)
        return summary

    # ----------------------------------------------------------------- main loop

    def run(self, resumed: bool) -> dict[str, Any]:
        """Train to ``cfg.steps`` from the checkpoint ``restore`` read (``resumed``) or afresh."""
        cfg = self.cfg
        self._t0 = time.perf_counter()
        if not resumed:
            self._fresh_start()
        else:
            log.info("resumed %s from env step %d", self.out_dir, self.t)
        self.critic_params, self.passive_params = self.dev.critic_params(self.carry["agent"])
        log.info(
            "%s: %s seeds %s, utd %g, width %d (critic_params %d), batch %d, lr %g, %d steps -> %s",
            "resuming" if resumed else "training",
            cfg.env,
            list(cfg.seeds),
            cfg.utd,
            cfg.critic_width,
            self.critic_params,
            cfg.batch_size,
            cfg.lr,
            cfg.steps,
            self.out_dir,
        )
        eval_steps = set(cfg.eval_steps())
        reset_steps = set(cfg.reset_steps())
        ckpt_path = self.out_dir / CHECKPOINT_NAME
        S, d = self.n_seeds, self.obs_dim
        packed = np.zeros((S, 2 + 2 * d), np.float32)
        vpacked = np.zeros((S, 2 + 2 * d), np.float32)
        bar = self._progress_bar()
        self._mark = (time.perf_counter(), self.t, self.grad_steps)
        self._rates = (float("nan"), float("nan"))
        self._last_line = time.perf_counter()
        with _StopSignals() as stop:
            self._loop(bar, eval_steps, reset_steps, ckpt_path, packed, vpacked, stop)
        if bar is not None:
            bar.close()
        summary = self._write_outputs(complete=True)
        if ckpt_path.exists():
            ckpt_path.unlink()
        shutil.rmtree(self.out_dir / REPLAY_DIR, ignore_errors=True)
        return summary

    def _loop(self, bar, eval_steps, reset_steps, ckpt_path, packed, vpacked, stop) -> None:
        cfg = self.cfg
        while self.t < cfg.steps:
            actions = np.asarray(self.carry["action"])
            self._step_envs(self.envs, actions, packed, self.t + 1)
            if self._nan_at is not None and self._nan_at[1] == self.t + 1:
                packed[self._nan_at[0], 0] = np.nan
            n = self._updates_after(self.t)
            self.carry = self.dev.fused(self.carry, packed, n, self._policy(self.t + 1))
            self.t += 1
            self.grad_steps += n
            t = self.t
            if cfg.validation and t % cfg.validation_every == 0:
                self._validation_step(vpacked)
            if t % cfg.log_interval == 0 or t == cfg.steps:
                self._flush()
            if t in eval_steps:
                self._evaluate()
            if t in reset_steps:
                self._reset_agent()
            if cfg.checkpoint_every and t % cfg.checkpoint_every == 0 and t < cfg.steps:
                self._save_checkpoint(ckpt_path)
                self._write_outputs(complete=False)
            if t % 100 == 0 or t == cfg.steps or t in eval_steps:
                self._report(bar, t in eval_steps)
            if stop.signum is not None and t < cfg.steps:
                # SIGTERM (scancel, preemption, a killed Snakemake) or SIGINT: keep every step
                # done so far, then stop; the next start resumes from here
                self._save_checkpoint(ckpt_path)
                self._write_outputs(complete=False)
                if bar is not None:
                    bar.close()
                raise Interrupted(stop.signum, t)

    def _step_envs(
        self, envs: Sequence, actions: np.ndarray, packed: np.ndarray, step: int
    ) -> None:
        """Step ``envs`` with ``actions`` and pack (reward, mask, next_obs, policy_obs) per seed."""
        d = self.obs_dim
        for i, env in enumerate(envs):
            a = actions[i]
            if i in self.diverged:
                a = np.zeros_like(a)
            elif not np.isfinite(a).all():
                self._mark_diverged(i, step)
                a = np.zeros_like(a)
            obs, reward, terminated, truncated = env.step(a)
            packed[i, 0] = reward
            packed[i, 1] = 0.0 if terminated else 1.0
            packed[i, 2 : 2 + d] = obs
            packed[i, 2 + d :] = env.reset() if (terminated or truncated) else obs

    def _validation_step(self, vpacked: np.ndarray) -> None:
        policy = self._policy(self.t)
        agent = self.carry["agent"]
        self.val = self.dev.val_act(self.val, agent, policy)
        actions = np.asarray(self.val["action"])
        self._step_envs(self.val_envs, actions, vpacked, self.t)
        self.val = self.dev.val_insert(self.val, agent, vpacked, self.grad_steps > 0)

    def _report(self, bar: Any, evaluated: bool) -> None:
        """Progress bar update, or (without a bar) a log line after evaluations and every minute.
        Rates are measured over windows of at least 2 s (compilation shows up only at first)."""
        now = time.perf_counter()
        mark_time, mark_t, mark_g = self._mark
        if now - mark_time >= 2.0:
            dt = now - mark_time
            self._rates = ((self.t - mark_t) / dt, (self.grad_steps - mark_g) / dt)
            self._mark = (now, self.t, self.grad_steps)
        env_rate, update_rate = self._rates
        ret = "-" if self.last_return is None else f"{self.last_return:.1f}"
        if bar is not None:
            bar.update(self.t - bar.n)
            bar.set_postfix(
                env_steps_s=f"{env_rate:.0f}",
                updates_s=f"{update_rate:.0f}",
                eval_return=ret,
                refresh=False,
            )
        elif evaluated or now - self._last_line >= 60.0 or self.t == self.cfg.steps:
            self._last_line = now
            log.info(
                "%s step %d/%d  %.0f env steps/s  %.0f updates/s  last eval return %s",
                self.cfg.env,
                self.t,
                self.cfg.steps,
                env_rate,
                update_rate,
                ret,
            )

    def _progress_bar(self) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.cfg.steps,
            initial=self.t,
            unit="step",
            desc=f"{self.cfg.env} utd={self.cfg.utd:g} W={self.cfg.critic_width}",
            file=sys.stderr,
            dynamic_ncols=True,
        )


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint at env step ``step``."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at env step {step}")
        self.signum = signum
        self.step = step


class _StopSignals:
    """Within the block, SIGTERM and SIGINT only set ``signum``; the training loop checks it after
    each env step. Only in the main thread (elsewhere signals cannot be handled)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class OutDirConflict(ValueError):
    """The output directory holds a checkpoint or a finished run that this config cannot use."""


def enable_compilation_cache(path: str | os.PathLike) -> None:
    """Keep XLA executables in ``path`` (JAX's persistent compilation cache, process-wide), so
    that a resumed or repeated run with the same shapes skips recompiling its step functions.

    Every executable is kept, not only those that took JAX's default minimum of 1 s to compile:
    a run compiles 60-90 small step functions (evaluation, validation and the small programs
    around them included), and runs that share shapes (same widths, batch size and seeds at
    another UTD) reuse most of them. One folder may serve concurrent runs: entries are written
    atomically (``atomic_cache_entries``)."""
    import jax

    atomic_cache_entries()
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def atomic_cache_entries() -> None:
    """Make JAX write its persistent compilation cache entries through the package's atomic
    writer (a temporary file beside the entry, then renamed onto it).

    JAX writes an entry in place and never replaces one that exists: an entry whose writer was
    killed half-way would stay truncated for good, and every later job would fail to load it
    (a warning) and compile that function again. With this, a killed writer leaves only its
    temporary file (``.<key>-cache.*.tmp``, which JAX never reads) and the next job writes the
    entry. Applies to caches on a local file system without JAX's size-bounded eviction (the
    package's setting); the others keep JAX's own writer. Idempotent."""
    from jax._src import lru_cache

    cls = lru_cache.LRUCache
    if getattr(cls.put, "valuescale_atomic", False):
        return
    jax_put = cls.put

    def put(self: Any, key: str, value: bytes) -> None:
        local = lru_cache._is_local_filesystem(str(self.path))
        if not key or self.eviction_enabled or not local:
            return jax_put(self, key, value)
        entry = Path(str(self.path)) / f"{key}{lru_cache._CACHE_SUFFIX}"
        if not entry.exists():  # as JAX: an existing entry is kept
            atomic_write_bytes(entry, value)

    put.valuescale_atomic = True  # type: ignore[attr-defined]
    cls.put = put


def _run_held(
    cfg: TrainConfig,
    out: Path,
    progress: bool | None,
    compilation_cache: str | os.PathLike | None,
    discard_stale: bool,
) -> dict[str, Any]:
    reason = stale_reason(out, cfg)
    if reason is not None:
        if not discard_stale:
            raise OutDirConflict(
                f"{out}: {reason}; use another output directory, delete it, or pass --discard-stale"
            )
        discard_stale_state(out, cfg)
    ckpt_path = out / CHECKPOINT_NAME
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    run_json = out / "run.json"
    if ckpt is None and run_json.exists():
        previous = json.loads(run_json.read_text())
        if previous.get("complete"):  # of this config and length (stale_reason)
            log.info("%s already holds a complete run; nothing to do", out)
            return previous
    if compilation_cache is not None:
        enable_compilation_cache(compilation_cache)
    run = _Run(cfg, out, progress)
    if ckpt is not None:
        try:
            run.restore(ckpt)  # reads every array back (the replay chunks' CRCs included)
        except CheckpointError as e:
            reason = f"{CHECKPOINT_NAME} cannot be resumed ({e})"
            if not discard_stale:
                raise OutDirConflict(
                    f"{out}: {reason}; delete it (or the folder) or pass --discard-stale"
                ) from e
            discard_state(out, reason)
            run, ckpt = _Run(cfg, out, progress), None  # host state untouched by the failed read
    return run.run(resumed=ckpt is not None)


def run_training(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    progress: bool | None = None,
    compilation_cache: str | os.PathLike | None = None,
    discard_stale: bool = False,
) -> dict[str, Any]:
    """Train all seeds of ``cfg`` in this process; write outputs to ``out_dir``; return the
    summary (the content of run.json).

    Resumes from ``out_dir/checkpoint.pkl`` when present; returns the existing summary when
    ``out_dir`` already holds a complete run of the same config. State it cannot use (written with
    other settings: ``valuescale.rundir.stale_reason``) raises ``OutDirConflict``, or is deleted
    first with ``discard_stale``. ``progress``: tqdm bar (True),
    log lines (False) or a bar only when stderr is a TTY (None). ``compilation_cache``: a
    directory for JAX's persistent compilation cache (see ``enable_compilation_cache``).
    The folder is held for the whole run (``hold_run_folder``): while another live process holds
    it, this raises ``RunFolderBusy`` naming the folder and that process, and touches nothing.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"run_training: cfg must be a TrainConfig, got {type(cfg).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with hold_run_folder(out):
        return _run_held(cfg, out, progress, compilation_cache, discard_stale)


# --------------------------------------------------------------------------- CLI

_FLAG_FIELDS: dict[str, str] = {"critic_width": "--width", "seeds": "--seeds"}


def _flag(field_name: str) -> str:
    return _FLAG_FIELDS.get(field_name, "--" + field_name.replace("_", "-"))


def _parse_seeds(text: str) -> tuple[int, ...]:
    """``0,1,2`` or ``0-4`` (inclusive range) or a mix: ``0-2,7``."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise argparse.ArgumentTypeError(f"empty item in {text!r}")
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise argparse.ArgumentTypeError(f"empty range {part!r}")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated ints or ranges like 0-4, got {text!r}"
            ) from None
    return tuple(seeds)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser: one flag per ``TrainConfig`` field plus --out, --threads, --progress."""
    docs = field_docs()
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    parser = argparse.ArgumentParser(
        prog="python -m valuescale.train",
        description="Train BRO on one environment for several seeds in one process (vmapped "
        "over seeds) and write curves.parquet + run.json to --out. Resumes from --out's "
        "checkpoint when there is one.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin the process to this many CPU cores before JAX starts (default: all allowed)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm progress bar (default: only when stderr is a terminal; else log lines)",
    )
    parser.add_argument(
        "--compilation-cache",
        default=os.environ.get("VALUESCALE_COMPILATION_CACHE"),
        metavar="DIR",
        help="JAX persistent compilation cache directory: a resumed or repeated run with the same "
        "shapes skips recompiling (default: $VALUESCALE_COMPILATION_CACHE, else off)",
    )
    parser.add_argument(
        "--discard-stale",
        action="store_true",
        help="delete state in --out that was written with other settings (checkpoint, progress, "
        "outputs; one log line says why) and start afresh, instead of stopping with exit 2; a "
        "resumable checkpoint is kept (the workflow's train rule passes it)",
    )
    types: dict[str, Callable[[str], Any]] = {"seeds": _parse_seeds}
    for f in dataclasses.fields(TrainConfig):
        if f.name.startswith("_"):
            continue
        default = defaults[f.name]
        kwargs: dict[str, Any] = {"help": docs.get(f.name, ""), "dest": f.name}
        if f.name == "env":
            kwargs.update(required=True)
        elif isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        elif f.name in types:
            kwargs.update(type=types[f.name], default=default)
            kwargs["help"] += " Comma-separated, ranges allowed (0-4)."
        elif isinstance(default, int):
            kwargs.update(type=int, default=default)
        elif isinstance(default, float):
            kwargs.update(type=float, default=default)
        else:
            kwargs.update(type=str, default=default)
        parser.add_argument(_flag(f.name), **kwargs)
    return parser


_CORE_LOCKS: list[Any] = []  # open lock files: a claim lasts as long as the process


def _claim_cores(allowed: list[int], n: int) -> list[int]:
    """Pick ``n`` of the ``allowed`` cores that no other pinned training process holds.

    Each core has a lock file (``$VALUESCALE_CORE_LOCK_DIR``, default ``<tmp>/valuescale-cores``)
    locked with ``flock`` for the life of the process, so concurrent jobs with ``--threads 1``
    (Snakemake's local scheduler) land on distinct cores. When fewer than ``n`` are free the
    remainder is taken from the start of ``allowed``.
    """
    import fcntl
    import tempfile

    lock_dir = Path(
        os.environ.get("VALUESCALE_CORE_LOCK_DIR", Path(tempfile.gettempdir()) / "valuescale-cores")
    )
    claimed: list[int] = []
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        for core in allowed:
            if len(claimed) == n:
                break
            fh = open(lock_dir / f"core{core}.lock", "a")  # noqa: SIM115 (held until exit)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            _CORE_LOCKS.append(fh)
            claimed.append(core)
    except OSError:  # no writable lock folder: fall back to the first cores
        pass
    return sorted(claimed + [c for c in allowed if c not in claimed][: n - len(claimed)])


def pin_threads(n: int) -> list[int]:
    """Restrict this process to ``n`` of its allowed CPU cores, preferring cores no other training
    process has claimed (before importing JAX: XLA's thread flags do not limit JAX 0.10 on CPU,
    CPU affinity does)."""
    allowed = sorted(os.sched_getaffinity(0))
    if n < 1 or n > len(allowed):
        raise ValueError(f"must be between 1 and the {len(allowed)} allowed cores, got {n}")
    cores = _claim_cores(allowed, n)
    # sched_setaffinity acts on one thread; threads started before this call (e.g. numpy's BLAS
    # pool) keep their mask, so pin every thread of the process. Later threads (JAX's) inherit it.
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):  # the thread has exited
            pass
    os.sched_setaffinity(0, cores)
    return cores


#: the CLI's flags that are not training settings (``TrainConfig`` fields): how and where to run
RUN_OPTIONS: tuple[str, ...] = ("out", "threads", "progress", "compilation_cache", "discard_stale")


def parse_cli(
    argv: Sequence[str] | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, Any], TrainConfig]:
    """``(parser, run options, config)`` of the CLI's flags; exits 2 naming the flag of a bad
    setting (argparse's error)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    run = {key: args.pop(key) for key in RUN_OPTIONS}
    try:
        cfg = TrainConfig(**args)
    except ConfigError as e:
        message = str(e).split(": ", 1)[-1]
        parser.error(f"argument {_flag(e.field)}: {message}")
    return parser, run, cfg


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``python -m valuescale.train``); returns the exit code."""
    parser, run, cfg = parse_cli(argv)
    out, threads, progress = run["out"], run["threads"], run["progress"]
    if threads is not None:
        allowed = len(os.sched_getaffinity(0))
        if not 1 <= threads <= allowed:
            parser.error(
                f"argument --threads: must be between 1 and the {allowed} allowed cores, "
                f"got {threads}"
            )
        if "jax" in sys.modules:
            parser.error("argument --threads: JAX was imported before the cores could be pinned")
        pin_threads(threads)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # Our own handler: absl (imported by dm_control) already put one on the root logger, which
    # makes logging.basicConfig a no-op and leaves the root at WARNING.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    package_log = logging.getLogger("valuescale")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    package_log.propagate = False
    try:
        summary = run_training(
            cfg,
            out,
            progress=progress,
            compilation_cache=run["compilation_cache"],
            discard_stale=run["discard_stale"],
        )
    except (OutDirConflict, RunFolderBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        log.warning("%s; checkpoint written to %s (a restart resumes from it)", e, out)
        return 128 + e.signum
    status = {s: v["status"] for s, v in summary["seeds"].items()}
    log.info(
        "done: %d env steps, %d gradient steps, %.1f s; seeds %s",
        summary["env_steps"],
        summary["gradient_steps"],
        summary["wall_time_s"],
        status,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
