"""The multi-seed training loop: ``run_training`` (the CLI, ``valuescale.train``, calls it).

One process trains all seeds of one cell (env x hyperparameters). The agent states and replays
carry a leading seed axis on the device (``valuescale.device``: the typed carries and the jitted
step functions, which reach the agent through its protocol, ``valuescale.agents.base.Agent``);
this module is the host side: envs, counters, logged rows, evaluation, checkpoints and outputs.
Every env step is ONE jitted, vmapped call with the carry donated::

    insert the transition -> update_n (n = updates due now) -> next actions

(only the next actions come back to the host). Per-step update counts follow
``TrainConfig.updates_at`` (fractional UTD: 0 or 1 updates at sigma < 1, floor or ceil above).
Warm-up steps use uniform random actions and no updates.

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

Optional live logging (TensorBoard, W&B; ``valuescale.livelog``, off by default): after each
training-metric flush and evaluation the rows just logged go to the open live logs; with logging
off that is one ``None`` check per flush or evaluation.

JAX is imported lazily (``valuescale.device`` inside ``_Run``) so that the CLI can pin the process
to ``--threads`` cores before JAX starts its thread pools.
"""

from __future__ import annotations

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
from collections.abc import Sequence
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
    hold_run_folder,
    load_checkpoint,
    save_checkpoint,
    tree_from_numpy,
    tree_to_numpy,
)
from valuescale.config import CURVE_COLUMNS, TrainConfig
from valuescale.livelog import LiveLogSettings, open_live_log
from valuescale.replay_store import REPLAY_DIR
from valuescale.rundir import discard as discard_state
from valuescale.rundir import discard_stale as discard_stale_state
from valuescale.rundir import keep_complete_outputs, restore_complete_outputs, stale_reason
from valuescale.status import last_evaluations

log = logging.getLogger("valuescale.train")


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
    "gymnasium",  # HumanoidBench's API (None when not installed)
    "humanoid_bench",  # only in HumanoidBench runs (None when not installed)
)

# Random streams per seed (see the module docstring).
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


# --------------------------------------------------------------------------- the loop


class _Run:
    """Host side of one training run (envs, counters, logs) around the device carry."""

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: Path,
        progress: bool | None,
        live: LiveLogSettings | None = None,
    ) -> None:
        from valuescale.device import Device, HostStats
        from valuescale.envs import ActionRepeat
        from valuescale.envs import make_env as make_plain

        # action repeat (valuescale.config): every env steps `repeat` simulator steps per agent
        # step; self.t counts simulator steps, so it advances by `repeat` per loop iteration
        self.repeat = repeat = cfg.action_repeat

        def make_env(name: str, seed: int, max_steps: int) -> Any:
            env = make_plain(name, seed, max_steps)
            return ActionRepeat(env, repeat) if repeat > 1 else env

        self.cfg, self.out_dir = cfg, out_dir
        self.live_settings = live
        self.live: Any = None  # the open live logs (valuescale.livelog), None when off
        self._live_from = 0  # rows before this index are in the live logs
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
        atomic_cache_entries()  # also for a cache set through JAX's own settings
        self.dev = Device(cfg, self.obs_dim, self.act_dim)
        self.train_metrics, self.val_metrics = self.dev.train_metrics, self.dev.val_metrics
        # the agent's running statistics on the host (none for BRO), checkpointed as they are
        self.host = HostStats(self.dev.agent, self.dev.acfg, self.n_seeds, self.obs_dim)
        self._raw = {
            "obs": np.zeros((self.n_seeds, self.obs_dim), np.float64),
            "reward": np.zeros(self.n_seeds, np.float64),
            "terminated": np.zeros(self.n_seeds, bool),
            "truncated": np.zeros(self.n_seeds, bool),
        }
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
        k = (t - self.cfg.warmup_steps) // self.repeat  # post-warm-up agent step index
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
        bad = np.asarray(self.dev.fetch(self.carry.bad))
        for i, b in enumerate(bad):
            if b >= 0:
                self._mark_diverged(i, int(b))

    def _flush(self) -> None:
        """Log the per-seed interval means of the training (and validation) metrics."""
        carry = self.carry
        sums, count = self.dev.fetch((carry.sums, carry.count))
        self._sync_divergence()
        groups = [(sums, int(count), self.train_metrics)]
        if self.cfg.validation:
            vsums, vcount = self.dev.fetch((self.val.sums, self.val.count))
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
        if self.live is not None:
            self._publish()
        self.carry = carry.replace(
            sums=self.dev.zero_sums(self.train_metrics), count=self.dev.zero()
        )
        if self.cfg.validation:
            self.val = self.val.replace(
                sums=self.dev.zero_sums(self.val_metrics), count=self.dev.zero()
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
        agent = self.carry.agent
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
        if self.live is not None:
            self._publish()

    def _publish(self) -> None:
        """Hand the rows logged since the last call to the live logs. They are a view: when they
        fail (a full disk, a W&B error), the run warns once and trains on without them."""
        try:
            self.live.log(self.rows, self._live_from)
        except Exception as e:  # noqa: BLE001 - any failure of an optional backend
            log.warning("live logging failed (%r); training goes on without it", e)
            self._close_live_log(1)
        self._live_from = len(self.rows["seed"])

    def _close_live_log(self, exit_code: int) -> None:
        live, self.live = self.live, None
        if live is not None:
            try:
                live.close(exit_code)
            except Exception as e:  # noqa: BLE001
                log.warning("closing the live logs failed (%r)", e)

    def _reset_agent(self) -> None:
        self.resets.append(self.t)
        self.carry = self.carry.replace(agent=self.dev.init_agent(len(self.resets)))
        self.carry = self.dev.refresh(self.carry, self._policy(self.t), self.host.device())

    # ----------------------------------------------------------------- state

    def _fresh_start(self) -> None:
        shutil.rmtree(self.out_dir / REPLAY_DIR, ignore_errors=True)  # of no checkpoint
        self._replay_records = {}
        obs = np.stack([env.reset() for env in self.envs])
        self.host.observe(obs)
        carry = self.dev.init_carry(obs)
        self.carry = self.dev.refresh(carry, self._policy(0), self.host.device())
        if self.cfg.validation:
            vobs = np.stack([env.reset() for env in self.val_envs])
            self.val = self.dev.init_val(vobs)

    def _replay_parts(self) -> dict[str, tuple[Any, int]]:
        """The stored replays: name -> (stacked replay, inserts so far). The training replay gets
        one insert per env step, the validation replay one per ``validation_every`` steps."""
        parts = {"train": (self.carry.replay, self.t // self.repeat)}
        if self.cfg.validation:
            parts["validation"] = (self.val.replay, self.t // self.cfg.validation_every)
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
        no_replay = self.carry.replace(replay=None)  # the replays are stored as chunks
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
            "host_stats": self.host.state,
            "val": tree_to_numpy(self.val.replace(replay=None)) if self.cfg.validation else None,
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

        def rebuild(template: Any, leaves: list, name: str) -> Any:
            """A carry from its checkpointed leaves and its replay's chunks."""
            tree = tree_from_numpy(template.replace(replay=None), leaves, name)
            if name not in records:
                raise CheckpointError(f"checkpoint lists no chunks of the {name} replay")
            arrays = replay_store.load(folder / name, records[name], template.replay)
            # field by field, each host copy freed once on the device: peak ~ buffer + one field
            replay = template.replay.replace(
                **{k: self.dev.to_device(arrays.pop(k)) for k in list(arrays)}
            )
            return tree.replace(replay=replay)

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
        self.host.state = ckpt.get("host_stats")

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
            "platform": self.dev.backend(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),  # None outside SLURM
        }

    def _write_outputs(self, complete: bool) -> dict[str, Any]:
        """The run's outputs (``OUTPUT_NAMES``) once it is complete, and only then; before that
        its progress (``PROGRESS_NAMES``, beside the checkpoint), so that nothing that reads a run
        folder can take an unfinished run for a finished one."""
        summary = self._summary(complete)
        buf = io.BytesIO()
        curves_frame(self.cfg, self.rows, self.diverged, self.critic_params).to_parquet(
            buf, index=False
        )
        text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
        curves_name, summary_name = OUTPUT_NAMES if complete else PROGRESS_NAMES
        atomic_write_bytes(self.out_dir / curves_name, buf.getvalue())
        atomic_write_bytes(self.out_dir / summary_name, text.encode())
        if complete:
            keep_complete_outputs(self.out_dir)  # before the checkpoint goes (rundir)
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
        self.critic_params, self.passive_params = self.dev.critic_params(self.carry.agent)
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
        self._open_live_log(resumed)
        exit_code = 1
        try:
            progress = _Progress(cfg, self.t, self.grad_steps, self.progress)
            try:
                with _StopSignals() as stop:
                    self._loop(progress, eval_steps, reset_steps, ckpt_path, packed, vpacked, stop)
            except Interrupted:
                exit_code = 0  # stopped, to be resumed: not a failure
                raise
            progress.close()
            summary = self._write_outputs(complete=True)
            if ckpt_path.exists():
                ckpt_path.unlink()
            shutil.rmtree(self.out_dir / REPLAY_DIR, ignore_errors=True)
            exit_code = 0
            return summary
        finally:
            self._close_live_log(exit_code)

    def _open_live_log(self, resumed: bool) -> None:
        """The live logs (``valuescale.livelog``) when asked for; the rows of a resumed run's
        checkpoint are in them already (or written now, to a backend that is new). Their start-up
        is not counted in the run's wall time."""
        self._live_from = len(self.rows["seed"])
        if self.live_settings is None or not self.live_settings.enabled:
            return
        start = time.perf_counter()
        extra = {"critic_params": int(self.critic_params), "out_dir": str(self.out_dir)}
        self.live = open_live_log(
            self.live_settings,
            self.cfg,
            self.out_dir,
            start_step=self.t,
            resumed=resumed,
            extra_config=extra,
            rows=self.rows,
        )
        self._t0 += time.perf_counter() - start

    def _loop(self, progress, eval_steps, reset_steps, ckpt_path, packed, vpacked, stop) -> None:
        cfg = self.cfg
        while self.t < cfg.steps:
            actions = np.asarray(self.carry.action)
            raw = self._raw if self.host.active else None
            self._step_envs(self.envs, actions, packed, self.t + self.repeat, raw)
            if self._nan_at is not None and self._nan_at[1] == self.t + self.repeat:
                packed[self._nan_at[0], 0] = np.nan
            if raw is not None:
                self.host.reward(raw["reward"], raw["terminated"], raw["truncated"])
                self.host.observe(raw["obs"])
            n = self._updates_after(self.t)
            stats = self.host.device()
            # the next action is for the agent step that starts at simulator step t + repeat
            policy = self._policy(self.t + self.repeat)
            self.carry = self.dev.fused(self.carry, packed, n, policy, stats)
            self.t += self.repeat
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
                progress.report(t, self.grad_steps, self.last_return, t in eval_steps)
            if stop.signum is not None and t < cfg.steps:
                # SIGTERM (scancel, preemption, a killed Snakemake) or SIGINT: keep every step
                # done so far, then stop; the next start resumes from here
                self._save_checkpoint(ckpt_path)
                self._write_outputs(complete=False)
                progress.close()
                raise Interrupted(stop.signum, t)

    def _step_envs(
        self,
        envs: Sequence,
        actions: np.ndarray,
        packed: np.ndarray,
        step: int,
        raw: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Step ``envs`` with ``actions`` and pack (reward, mask, next_obs, policy_obs) per seed
        (float32); ``raw`` (for the host statistics) also gets each seed's float64 reward and
        policy observation and its terminated and truncated flags."""
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
            policy_obs = env.reset() if (terminated or truncated) else obs
            packed[i, 2 + d :] = policy_obs
            if raw is not None:
                raw["obs"][i] = policy_obs
                raw["reward"][i] = reward
                raw["terminated"][i] = terminated
                raw["truncated"][i] = truncated

    def _validation_step(self, vpacked: np.ndarray) -> None:
        policy = self._policy(self.t)
        agent = self.carry.agent
        self.val = self.dev.val_act(self.val, agent, policy)
        actions = np.asarray(self.val.action)
        self._step_envs(self.val_envs, actions, vpacked, self.t)
        self.val = self.dev.val_insert(self.val, agent, vpacked, self.grad_steps > 0)


class _Progress:
    """Progress of a run: a tqdm bar, or (without one) a log line after evaluations, every minute
    and at the end. Rates are measured over windows of at least 2 s (compilation shows up only at
    first)."""

    def __init__(self, cfg: TrainConfig, t: int, grad_steps: int, bar: bool) -> None:
        self.cfg = cfg
        self.bar: Any = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(
                total=cfg.steps,
                initial=t,
                unit="step",
                desc=f"{cfg.env} utd={cfg.utd:g} W={cfg.critic_width}",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        self._mark = (time.perf_counter(), t, grad_steps)
        self._rates = (float("nan"), float("nan"))
        self._last_line = time.perf_counter()

    def report(self, t: int, grad_steps: int, last_return: float | None, evaluated: bool) -> None:
        now = time.perf_counter()
        mark_time, mark_t, mark_g = self._mark
        if now - mark_time >= 2.0:
            dt = now - mark_time
            self._rates = ((t - mark_t) / dt, (grad_steps - mark_g) / dt)
            self._mark = (now, t, grad_steps)
        env_rate, update_rate = self._rates
        ret = "-" if last_return is None else f"{last_return:.1f}"
        if self.bar is not None:
            self.bar.update(t - self.bar.n)
            self.bar.set_postfix(
                env_steps_s=f"{env_rate:.0f}",
                updates_s=f"{update_rate:.0f}",
                eval_return=ret,
                refresh=False,
            )
        elif evaluated or now - self._last_line >= 60.0 or t == self.cfg.steps:
            self._last_line = now
            log.info(
                "%s step %d/%d  %.0f env steps/s  %.0f updates/s  last eval return %s",
                self.cfg.env,
                t,
                self.cfg.steps,
                env_rate,
                update_rate,
                ret,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def curves_frame(
    cfg: TrainConfig, rows: dict[str, list], diverged: dict[int, int], critic_params: int
) -> Any:
    """The long curves table (columns ``CURVE_COLUMNS``) of the logged ``rows``, without the rows
    of a diverged seed from its divergence step on, sorted by seed, metric and step."""
    import pandas as pd

    df = pd.DataFrame(
        {
            "seed": np.asarray(rows["seed"], np.int64),
            "step": np.asarray(rows["step"], np.int64),
            "metric": pd.Series(rows["metric"], dtype=object),
            "value": np.asarray(rows["value"], np.float64),
        }
    )
    keep = np.ones(len(df), bool)
    for i, step in diverged.items():
        keep &= ~((df["seed"].to_numpy() == cfg.seeds[i]) & (df["step"].to_numpy() >= step))
    df = df[keep]
    constants = {
        "env": cfg.env,
        "agent": cfg.agent,
        "utd": float(cfg.utd),
        "width": int(cfg.critic_width),
        "critic_params": int(critic_params),
        "batch_size": int(cfg.batch_size),
        "lr": float(cfg.lr),
    }
    for k, v in constants.items():
        df[k] = v
    df = df.sort_values(["seed", "metric", "step"], kind="stable").reset_index(drop=True)
    return df[list(CURVE_COLUMNS)]


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
    live: LiveLogSettings | None = None,
) -> dict[str, Any]:
    restore_complete_outputs(out)
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
    run = _Run(cfg, out, progress, live)
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
            # a new run: host state untouched by the failed read
            run, ckpt = _Run(cfg, out, progress, live), None
    return run.run(resumed=ckpt is not None)


def run_training(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    progress: bool | None = None,
    compilation_cache: str | os.PathLike | None = None,
    discard_stale: bool = False,
    wait: bool = False,
    live: LiveLogSettings | None = None,
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
    it, this raises ``RunFolderBusy`` naming the folder and that process, and touches nothing, or
    with ``wait`` waits for it to end first (then returns the run it completed, if it did).
    ``live``: optional live logging (TensorBoard, W&B; ``valuescale.livelog``), off by default;
    it changes no result.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"run_training: cfg must be a TrainConfig, got {type(cfg).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with hold_run_folder(out, wait=wait):
        return _run_held(cfg, out, progress, compilation_cache, discard_stale, live)
