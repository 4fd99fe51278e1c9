"""The engine's CLI: ``python -m valuescale.train --env cheetah-run --agent bro ...``.

One flag per setting of a run of the chosen agent (``--agent``, default bro): the loop's
(``TrainConfig``'s fields) and the agent's (its config class), each flag's type, default and help
taken from the setting's declaration (``valuescale.settings``); ``--agent X --help`` lists agent
X's. Then the run options (``--out``, ``--threads``, ...), which are not settings. The training
itself is ``valuescale.engine.run_training``; this module pins the process to ``--threads`` cores
before anything imports JAX.

The engine's public names are re-exported here (``from valuescale.train import run_training``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from valuescale.agents import AGENTS
from valuescale.checkpoint import RunFolderBusy
from valuescale.config import ConfigError, TrainConfig, setting_docs, setting_fields
from valuescale.engine import (  # noqa: F401 (the engine's API, re-exported)
    CURVE_COLUMNS,
    VERSION_PACKAGES,
    Interrupted,
    OutDirConflict,
    _Run,
    atomic_cache_entries,
    enable_compilation_cache,
    env_seed,
    package_versions,
    run_training,
)
from valuescale.livelog import WANDB_MODES, LiveLogSettings, missing_package
from valuescale.settings import field_kind

log = logging.getLogger("valuescale.train")

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


def build_parser(agent: str = "bro") -> argparse.ArgumentParser:
    """The CLI's parser for a run of ``agent``: one flag per setting (the loop's, then the
    agent's) plus the run options (``RUN_OPTIONS``)."""
    docs = setting_docs(agent)
    parser = argparse.ArgumentParser(
        prog="python -m valuescale.train",
        description=f"Train one agent ({', '.join(AGENTS)}; the flags below are those of "
        f"--agent {agent}: `--agent NAME --help` lists another's) on one environment for several "
        "seeds in one process (vmapped over seeds) and write curves.parquet + run.json to --out. "
        "Resumes from --out's checkpoint when there is one.",
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
    parser.add_argument(
        "--wait",
        action="store_true",
        help="when another live engine holds --out (an orphan of a killed Snakemake, say), wait "
        "for it to end instead of stopping with exit 2; a run it completed is then returned as it "
        "is (the workflow's train rule passes it)",
    )
    live = parser.add_argument_group(
        "live logging (optional; changes no result, so a run resumes across a change of these)"
    )
    live.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write TensorBoard event files, one folder per seed: --out/tb/seed<k> (needs the "
        "tensorboard package: pip install 'valuescale[tensorboard]')",
    )
    live.add_argument(
        "--wandb-project",
        default=None,
        metavar="NAME",
        help="log to this Weights & Biases project, one W&B run per engine run, files in "
        "--out/wandb (needs the wandb package: pip install 'valuescale[wandb]'; default: off)",
    )
    live.add_argument("--wandb-entity", default=None, metavar="NAME", help="W&B entity (team)")
    live.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        default="online",
        help="offline: write the W&B run locally only (wandb sync uploads it later)",
    )
    for f in setting_fields(agent):
        kwargs: dict[str, Any] = {"help": docs.get(f.name, ""), "dest": f.name}
        if f.name == "env":
            kwargs.update(required=True)
        elif f.name == "seeds":
            kwargs.update(type=_parse_seeds, default=f.default)
            kwargs["help"] += " Comma-separated, ranges allowed (0-4)."
        elif f.name == "agent":
            kwargs.update(default=agent, metavar="NAME")
        else:
            kind = field_kind(f)
            if kind is None:
                raise TypeError(f"setting {f.name}: no flag for annotation {f.type!r}")
            base, optional = kind
            if base == "bool":
                kwargs.update(action=argparse.BooleanOptionalAction, default=f.default)
            else:
                convert: Callable[[str], Any] = {"int": int, "float": float, "str": str}[base]
                kwargs.update(type=_optional(convert) if optional else convert, default=f.default)
        parser.add_argument(_flag(f.name), **kwargs)
    return parser


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert``, or None for ``none``/``null`` (an optional setting back to its default)."""

    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its errors
    return parse


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
RUN_OPTIONS: tuple[str, ...] = (
    "out",
    "threads",
    "progress",
    "compilation_cache",
    "discard_stale",
    "wait",
    "tensorboard",
    "wandb_project",
    "wandb_entity",
    "wandb_mode",
)


def _chosen_agent(argv: Sequence[str] | None) -> str:
    """The ``--agent`` of ``argv`` (default bro), read before the agent's flags are known."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent", default="bro")
    known, _ = pre.parse_known_args(argv)
    return known.agent


def parse_cli(
    argv: Sequence[str] | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, Any], TrainConfig]:
    """``(parser, run options, config)`` of the CLI's flags; exits 2 naming the flag of a bad
    setting (argparse's error)."""
    agent = _chosen_agent(argv)
    try:
        parser = build_parser(agent)
    except KeyError as e:  # an unknown or reserved agent: the default agent's parser says so
        build_parser().error(f"argument --agent: {e.args[0]}")
    args = vars(parser.parse_args(argv))
    run = {key: args.pop(key) for key in RUN_OPTIONS}
    try:
        cfg = TrainConfig(**args)
    except ConfigError as e:
        message = str(e).split(": ", 1)[-1]
        parser.error(f"argument {_flag(e.field)}: {message}")
    return parser, run, cfg


def live_settings(parser: argparse.ArgumentParser, run: dict[str, Any]) -> LiveLogSettings:
    """The live-logging settings of the run options; exits 2 when a W&B flag comes without
    --wandb-project or a backend's package is missing (before any training)."""
    if run["wandb_project"] is None:
        for key in ("wandb_entity",):
            if run[key] is not None:
                parser.error(f"argument {_flag(key)}: needs --wandb-project")
    settings = LiveLogSettings(
        tensorboard=run["tensorboard"],
        wandb_project=run["wandb_project"],
        wandb_entity=run["wandb_entity"],
        wandb_mode=run["wandb_mode"],
    )
    missing = missing_package(settings)
    if missing is not None:
        flag = "--tensorboard" if missing[0] == "logging.tensorboard" else "--wandb-project"
        parser.error(f"argument {flag}: {missing[1]}")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``python -m valuescale.train``); returns the exit code."""
    parser, run, cfg = parse_cli(argv)
    out, threads, progress = run["out"], run["threads"], run["progress"]
    live = live_settings(parser, run)
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
            wait=run["wait"],
            live=live,
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
