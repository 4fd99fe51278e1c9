"""Optional live logging of a training run: TensorBoard event files and/or a Weights & Biases run.

Off by default (``LiveLogSettings()``). The engine (``valuescale.engine``) opens a ``LiveLog``
when a run starts or resumes and hands it, after each training-metric flush (every
``log_interval``) and each evaluation, the rows it has just added to its curves (the same
``seed, step, metric, value`` rows that become ``curves.parquet``); with logging off the engine
holds None and does nothing more. Nothing here changes a run's numbers, so the settings are run
options (the CLI's ``--tensorboard``, ``--wandb-*``), not training settings: turning logging on
or off never makes a run stale.

Where and how (one train job trains all seeds of a cell in one process):

- TensorBoard: one event folder per seed, ``<out>/tb/seed<k>/``, tags = the curves' metric names
  (``return``, ``critic_loss``, ...), x axis = env steps. TensorBoard treats each folder as a
  run, so ``tensorboard --logdir <results_dir>/runs`` draws every seed of every cell as its own
  line on one chart per metric, and its run filter (a regex on the path) picks cells or seeds;
  each folder also holds the cell's hyperparameters and the seed for the HParams dashboard.
  Written with the ``tensorboard`` package alone (its event-file writer and protobufs: no
  TensorFlow, no torch). A resumed run first writes a ``SessionLog.START`` event at the step after
  its checkpoint's, TensorBoard's marker of a restart, so that readers drop the steps the killed
  process logged after that checkpoint (the resumed run logs them again, bit for bit the same); a
  run started afresh (no checkpoint, or stale state discarded) removes ``<out>/tb/`` first.
- W&B: one W&B run per train job, as the authors' code logged one: keys ``seed<k>/<metric>``
  and ``mean/<metric>`` (over the seeds that logged it at that step), step = env steps, config =
  the run's resolved settings (``run.json``'s ``config``) plus ``critic_params``, name = the
  workflow's run name (``<env>/<agent>/utd.._w.._b.._lr../seeds<a>-<b>``), group = the cell
  without its seeds (a cell whose seeds are split over jobs is one group). Files under
  ``<out>/wandb/``; the run id is kept in ``<out>/wandb/valuescale-run-id``, so a resumed run
  continues the same W&B run (``resume="allow"``; W&B ignores the re-logged steps at or below
  its last one), and a run started afresh gets a new id. ``mode: offline`` needs no network
  (``wandb sync <out>/wandb/offline-run-*`` uploads later).

Logging turned on for a run that resumes: the backends that hold nothing of it yet first get the
rows of its checkpoint. A row logged before the engine noticed that its seed had diverged a few
steps earlier stays in the live logs (``curves.parquet`` drops it).

Why these layouts: TensorBoard compares runs (folders) on one chart per tag, so seeds as folders
give the overlay its users expect (tags like ``return/seed0`` would put each seed on a chart of
its own); W&B users of this paper know the authors' one-run-per-job layout with ``seed<k>/`` and
``mean/`` keys, and W&B groups and filters runs by config, so a cell is one run there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TB_DIR = "tb"
"""TensorBoard event folders of a run folder (one per seed below it)."""
WANDB_DIR = "wandb"
"""W&B's files of a run folder (W&B's own layout below it)."""
WANDB_ID_FILE = "valuescale-run-id"
"""The W&B run id of a run folder's current run, in ``<out>/wandb/``."""
WANDB_MODES: tuple[str, ...] = ("online", "offline")

#: (config key, package, pip extra) of each optional backend
PACKAGES: dict[str, tuple[str, str, str]] = {
    "tensorboard": ("logging.tensorboard", "tensorboard", "tensorboard"),
    "wandb": ("logging.wandb.project", "wandb", "wandb"),
}


@dataclasses.dataclass(frozen=True)
class LiveLogSettings:
    """What to log live: TensorBoard event files, and a W&B run when ``wandb_project`` is set."""

    tensorboard: bool = False
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_mode: str = "online"

    def __post_init__(self) -> None:
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {', '.join(WANDB_MODES)}")

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.wandb_project is not None

    def backends(self) -> list[str]:
        return [name for name, on in (("tensorboard", self.tensorboard),
                                      ("wandb", self.wandb_project is not None)) if on]  # fmt: skip

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> LiveLogSettings:
        """From the workflow config's ``logging`` block (schema defaults filled in)."""
        block = block or {}
        wandb = block.get("wandb") or {}
        return cls(
            tensorboard=bool(block.get("tensorboard", False)),
            wandb_project=wandb.get("project"),
            wandb_entity=wandb.get("entity"),
            wandb_mode=wandb.get("mode") or "online",
        )

    def cli_args(self) -> str:
        """The engine CLI's flags for these settings (empty when off)."""
        args = ["--tensorboard"] if self.tensorboard else []
        if self.wandb_project is not None:
            args += ["--wandb-project", self.wandb_project]
            if self.wandb_entity is not None:
                args += ["--wandb-entity", self.wandb_entity]
            args += ["--wandb-mode", self.wandb_mode]
        for arg in args:  # the train rule splits them on spaces (the schema's pattern)
            if not re.fullmatch(r"[A-Za-z0-9_.=-]+", arg):
                raise ValueError(f"live-logging argument {arg!r}: letters, digits, _ . - only")
        return " ".join(args)


def missing_package(settings: LiveLogSettings) -> tuple[str, str] | None:
    """``(config key, message)`` for the first backend the settings ask for whose package is not
    installed here, else None. Cheap (``importlib.util.find_spec``: nothing is imported)."""
    for backend in settings.backends():
        key, package, extra = PACKAGES[backend]
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return key, (
                f"live logging to {backend} needs the {package!r} package, which is not "
                f"installed for {sys.executable}: "
                f"pip install 'valuescale[{extra}]' (or leave logging off)"
            )
    return None


def run_label(cfg: Any) -> tuple[str, str]:
    """``(name, group)`` of a run of ``cfg``: the workflow's run name and the cell without its
    seeds (``valuescale.study.RUN_NAME``)."""
    from valuescale.study import fmt_lr, fmt_utd

    cell = (
        f"{cfg.env}/{cfg.agent}/utd{fmt_utd(cfg.utd)}_w{cfg.critic_width}"
        f"_b{cfg.batch_size}_lr{fmt_lr(cfg.lr)}"
    )
    seeds = list(cfg.seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        label = f"seeds{seeds[0]}-{seeds[-1]}"
    else:
        label = "seeds" + "_".join(str(s) for s in seeds)
    return f"{cell}/{label}", cell


# --------------------------------------------------------------------------- TensorBoard


class _TensorBoard:
    """One event folder per seed (``<out>/tb/seed<k>``)."""

    def __init__(
        self, out: Path, cfg: Any, config: Mapping[str, Any], start_step: int, resumed: bool
    ) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        root = out / TB_DIR
        if not resumed:
            shutil.rmtree(root, ignore_errors=True)  # of a discarded or unfinished start
        name, _ = run_label(cfg)
        hparams = {k: v for k, v in config.items() if isinstance(v, bool | int | float | str)}
        self.writers = {}
        self.new = not root.is_dir()  # a resumed run's earlier rows are not in it yet
        now = time.time()
        for seed in cfg.seeds:
            folder = root / f"seed{seed}"
            new = not folder.is_dir()  # also when logging was turned on for a resumed run
            writer = EventFileWriter(str(folder), flush_secs=30)
            if resumed and not new:
                # TensorBoard's restart marker: events of earlier files at steps >= this one are
                # dropped (logged after the checkpoint by the process that was killed)
                writer.add_event(
                    event_pb2.Event(
                        wall_time=now,
                        step=start_step + 1,
                        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
                    )
                )
            else:
                summary = hparams_pb({**hparams, "seed": int(seed)}, trial_id=f"{name}/{seed}")
                writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=summary))
            self.writers[int(seed)] = writer

    def log(self, points: Mapping[int, Mapping[str, list[tuple[int, float]]]]) -> None:
        now = time.time()
        for seed, metrics in points.items():
            writer = self.writers[seed]
            for metric, values in metrics.items():
                for step, value in values:
                    value_pb = self._summary.Value(tag=metric, simple_value=value)
                    writer.add_event(
                        self._event(
                            wall_time=now, step=step, summary=self._summary(value=[value_pb])
                        )
                    )
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


# --------------------------------------------------------------------------- W&B


class _WandB:
    """One W&B run per train job (keys ``seed<k>/<metric>``, ``mean/<metric>``)."""

    def __init__(
        self,
        out: Path,
        cfg: Any,
        config: Mapping[str, Any],
        settings: LiveLogSettings,
        resumed: bool,
    ) -> None:
        import wandb

        folder = out / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resumed and id_file.is_file() else ""
        self.new = not run_id  # a resumed run's earlier rows are not in it yet
        if not run_id:
            run_id = secrets.token_hex(6)
            id_file.write_text(run_id + "\n")
        name, group = run_label(cfg)
        self.run = wandb.init(
            project=settings.wandb_project,
            entity=settings.wandb_entity,
            mode=settings.wandb_mode,
            dir=str(out),
            id=run_id,
            resume="allow",
            name=name,
            group=group,
            job_type="train",
            config=dict(config),
            # a busy node can keep W&B's service from answering within its default 90 s
            settings=wandb.Settings(console="off", silent=True, init_timeout=600),
        )

    def log(self, points: Mapping[int, Mapping[str, list[tuple[int, float]]]]) -> None:
        by_step: dict[int, dict[str, float]] = {}
        per_metric: dict[tuple[int, str], list[float]] = {}
        for seed, metrics in points.items():
            for metric, values in metrics.items():
                for step, value in values:
                    by_step.setdefault(step, {})[f"seed{seed}/{metric}"] = value
                    per_metric.setdefault((step, metric), []).append(value)
        for (step, metric), values in per_metric.items():
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                by_step[step][f"mean/{metric}"] = sum(finite) / len(finite)
        for step in sorted(by_step):
            self.run.log(by_step[step], step=step)

    def close(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)


# --------------------------------------------------------------------------- the engine's handle


def _points(rows: Mapping[str, list], start: int) -> dict[int, dict[str, list[tuple[int, float]]]]:
    """``{seed: {metric: [(step, value), ...]}}`` of the rows from index ``start`` on."""
    points: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for seed, step, metric, value in zip(
        rows["seed"][start:],
        rows["step"][start:],
        rows["metric"][start:],
        rows["value"][start:],
        strict=True,
    ):
        points.setdefault(int(seed), {}).setdefault(metric, []).append((int(step), float(value)))
    return points


class LiveLog:
    """The live logs of one run; ``log`` takes the engine's row lists from an index on."""

    def __init__(self, backends: Sequence[Any]) -> None:
        self.backends = list(backends)

    def log(self, rows: Mapping[str, list], start: int) -> None:
        """Log the rows ``rows[...][start:]`` (the engine's ``seed, step, metric, value`` lists)."""
        points = _points(rows, start)
        if points:
            for backend in self.backends:
                backend.log(points)

    def close(self, exit_code: int = 0) -> None:
        """Flush and close every backend (W&B: the run finishes, failed when ``exit_code`` is
        not 0)."""
        for backend in self.backends:
            if isinstance(backend, _WandB):
                backend.close(exit_code)
            else:
                backend.close()
        self.backends = []


def open_live_log(
    settings: LiveLogSettings | None,
    cfg: Any,
    out_dir: str | os.PathLike,
    *,
    start_step: int,
    resumed: bool,
    extra_config: Mapping[str, Any] | None = None,
    rows: Mapping[str, list] | None = None,
) -> LiveLog | None:
    """The live logs of a run of ``cfg`` in ``out_dir`` that starts afresh or resumes
    (``resumed``) at env step ``start_step``; None when ``settings`` asks for none. ``rows``: the
    rows logged before ``start_step`` (a resumed run's), written at once to a backend that does
    not hold them yet (logging turned on for a resumed run). A backend whose package is missing
    is a ``RuntimeError`` naming it (the CLI and the workflow check before this)."""
    if settings is None or not settings.enabled:
        return None
    missing = missing_package(settings)
    if missing is not None:
        raise RuntimeError(missing[1])
    out = Path(out_dir)
    config = {**cfg.to_dict(), **(extra_config or {})}
    backends: list[Any] = []
    try:
        if settings.tensorboard:
            backends.append(_TensorBoard(out, cfg, config, start_step, resumed))
        if settings.wandb_project is not None:
            backends.append(_WandB(out, cfg, config, settings, resumed))
        earlier = _points(rows, 0) if rows is not None else {}
        for backend in backends:
            if backend.new and earlier:
                backend.log(earlier)
    except BaseException:
        LiveLog(backends).close(1)
        raise
    return LiveLog(backends)
