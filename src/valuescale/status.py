"""Where a study stands while it runs: ``python -m valuescale.status [RESULTS_DIR]`` (also
``valuescale status``).

One row per train job of the configured study (``valuescale.study.train_jobs``: the cells the
workflow would train), read from the run folders only (``<results_dir>/runs/<run name>``) and the
job's log (``<results_dir>/logs/train/<run name>.log``), never from Snakemake's records:

- ``done``: ``run.json`` says complete, written with the study's training settings;
- ``stale``: a complete ``run.json`` written with other training settings (the workflow retrains it);
- ``running``: a live engine holds the folder (``.engine.lock``, ``checkpoint.run_folder_holder``);
  its steps, returns and rate are those of its last checkpoint (``progress.json``), its ETA counts
  the time since then;
- ``failed``: no live engine, and the job's log ends in a traceback or an ``error:`` line (the
  last such line is the row's ``reason``);
- ``stopped``: started (a checkpoint, progress, a lock file, or a log without the engine's
  completion line) but not running and not failed: interrupted (SIGTERM, SIGKILL); the next run
  of the workflow resumes it (a job that Snakemake has just started reads ``stopped`` for the
  seconds before its engine takes the folder);
- ``pending``: nothing yet.

Diverged seeds are counted in every state (``run.json`` / ``progress.json`` per-seed status).
The last evaluation return per seed comes from the summary's ``last_eval`` (written by the engine
with ``last_evaluations``), or, for runs written before that field, from the curves.

``--json`` prints the same as one JSON document, ``--watch [SECONDS]`` refreshes the table,
``--plot OUT.png`` draws the learning curves so far (``plot_curves``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from valuescale.checkpoint import CHECKPOINT_NAME, LOCK_NAME, run_folder_holder
from valuescale.study import (
    RUN_NAME,
    TrainJob,
    fmt_lr,
    load_config,
    run_name,
    train_jobs,
    train_settings,
)

STATES: tuple[str, ...] = ("done", "running", "stopped", "failed", "stale", "pending")
"""The states of a cell, in the order the summary counts them."""

#: Training settings that change no result (never make a complete run stale).
OPERATIONAL_SETTINGS = frozenset({"checkpoint_every"})
#: Bytes of a job's log read from its end to tell a failure.
LOG_TAIL_BYTES = 8192


def last_evaluations(
    rows: Mapping[str, Sequence], diverged_at: Mapping[int, int]
) -> dict[str, dict[str, float] | None]:
    """The last evaluation of each seed in the engine's logged ``rows`` (``seed``, ``step``,
    ``metric``, ``value`` lists in logging order), as ``{seed: {"step", "return"}}`` (a seed
    without one: None); rows at or after a seed's divergence step (``diverged_at``, by seed
    value) are not counted, as in the curves. The engine stores it in its summaries
    (``last_eval`` of run.json and progress.json) for this command."""
    out: dict[str, dict[str, float] | None] = {}
    for seed, step, metric, value in zip(
        rows["seed"], rows["step"], rows["metric"], rows["value"], strict=True
    ):
        if metric == "return" and step < diverged_at.get(seed, math.inf):
            out[str(seed)] = {"step": int(step), "return": float(value)}
    return out


# ----------------------------------------------------------------------------- reading a cell


def _read_json(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None  # being replaced (atomic writes make that rare) or damaged
    return data if isinstance(data, dict) else None


@functools.cache
def _own_settings(agent: str) -> dict[str, Any]:
    """``{setting: default}`` of a run of ``agent`` (the loop's and its agent config's)."""
    from valuescale.config import setting_fields

    return {f.name: f.default for f in setting_fields(agent)}


def _stale_settings(saved: Mapping[str, Any], settings: Mapping[str, Any], agent: str) -> list[str]:
    """Training settings of the study that a summary's config does not share: only the settings
    of the run's agent (the study's train block holds every agent's), none that is null (the
    agent's own default), a setting missing from an older summary counted at its default."""
    own = _own_settings(agent)
    return sorted(
        key
        for key, value in settings.items()
        if key in own
        and value is not None
        and key not in OPERATIONAL_SETTINGS
        and saved.get(key, own[key]) != value
    )


#: The engine's last log line of a complete run (``valuescale.train.main``).
DONE_LINE = "valuescale.train INFO done: "


def _log_outcome(log: str) -> tuple[str | None, str | None]:
    """How the last attempt of a job ended by its log (the rule writes it afresh each attempt):
    ``("failed", its last error line)`` after a traceback or an ``error:`` line, ``("done",
    None)`` after the engine's completion line, else ``(None, None)`` (unfinished, or killed)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None, None
    if "Traceback (most recent call last)" in tail or "\nerror: " in f"\n{tail}":
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        errors = [
            line
            for line in lines
            if line.startswith("error: ") or line.split(":")[0].endswith(("Error", "Exception"))
        ]
        return "failed", (errors or lines)[-1][:300]
    if DONE_LINE in tail:
        return "done", None
    return None, None


def _curve_returns(folder: str, names: set[str]) -> dict[str, dict[str, float] | None]:
    """Last return per seed from the curves (runs written before summaries had ``last_eval``)."""
    import pandas as pd

    for name in ("curves.parquet", "progress.parquet"):
        if name in names:
            try:
                df = pd.read_parquet(
                    os.path.join(folder, name), columns=["seed", "step", "metric", "value"]
                )
            except (OSError, ValueError):
                return {}
            df = df[df["metric"] == "return"].sort_values("step", kind="stable")
            last = df.groupby("seed").tail(1)
            return {
                str(int(r.seed)): {"step": int(r.step), "return": float(r.value)}
                for r in last.itertuples()
            }
    return {}


def _leaves(root: str, depth: int, dirs: bool) -> set[str]:
    """Paths (relative to ``root``, ``/``-separated) of the folders (``dirs``) or files
    ``depth`` levels below ``root``: the run folders or job logs there are."""
    level = [""]
    for d in range(depth):
        last = d == depth - 1
        below = []
        for rel in level:
            try:
                with os.scandir(os.path.join(root, rel) if rel else root) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False) == (dirs or not last):
                            below.append(f"{rel}/{entry.name}" if rel else entry.name)
            except OSError:
                continue
        level = below
    return set(level)


def cell_status(
    results: str | os.PathLike,
    job: TrainJob,
    settings: Mapping[str, Any],
    now: float | None = None,
    *,
    exists: bool | None = None,
    has_log: bool | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The status of one train job (see the module docstring) as a JSON-ready dict.
    ``exists``/``has_log``/``name``: whether its run folder / log exist and its run name, when
    the caller knows."""
    now = time.time() if now is None else now
    name = run_name(job) if name is None else name
    folder = os.path.join(results, "runs", name)
    log = os.path.join(results, "logs", "train", f"{name}.log")
    seeds = [str(s) for s in range(job.first, job.last + 1)]
    planned = int(settings["steps"])
    cell: dict[str, Any] = {
        "run": name,
        "env": job.env,
        "agent": job.agent,
        "utd": float(job.utd),
        "width": job.width,
        "batch_size": job.batch_size,
        "lr": float(job.lr),
        "seeds": [int(s) for s in seeds],
        "state": "pending",
        "env_steps": 0,
        "planned_steps": planned,
        "last_return": dict.fromkeys(seeds),
        "last_eval_step": None,
        "diverged": {},
        "critic_params": None,
        "env_steps_per_s": None,
        "wall_time_s": None,
        "eta_s": None,
        "updated": None,
        "pid": None,
        "reason": None,
    }
    names: set[str] = set()
    summary, summary_name = None, None
    if exists is not False:
        # a complete run first: one open, no listing (most cells of a study being watched)
        summary = _read_json(os.path.join(folder, "run.json"))
        if summary is not None and summary.get("complete"):
            summary_name, names = "run.json", {"run.json", "curves.parquet"}
        else:
            summary = None
            try:
                names = set(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                pass
    if summary_name is None:
        holder = run_folder_holder(folder) if LOCK_NAME in names else None
        if holder is not None:
            cell["state"], cell["pid"] = "running", holder
        for candidate in ("progress.json", "run.json"):
            if candidate in names:
                summary_name = candidate
                summary = _read_json(os.path.join(folder, candidate))
                break
    if summary is not None:
        cell["env_steps"] = int(summary.get("env_steps") or 0)
        cell["critic_params"] = summary.get("critic_params")
        cell["env_steps_per_s"] = summary.get("env_steps_per_s")
        cell["wall_time_s"] = summary.get("wall_time_s")
        if summary_name == "progress.json":
            try:
                cell["updated"] = os.stat(os.path.join(folder, summary_name)).st_mtime
            except OSError:
                pass
        for seed, info in (summary.get("seeds") or {}).items():
            if isinstance(info, dict) and info.get("status") == "diverged":
                cell["diverged"][seed] = info.get("diverged_at_step")
        last = summary.get("last_eval")
        if last is None:
            last = _curve_returns(folder, names)
        for seed in seeds:
            entry = last.get(seed)
            if entry:
                cell["last_return"][seed] = entry["return"]
                cell["last_eval_step"] = max(cell["last_eval_step"] or 0, entry["step"])
    if cell["state"] == "running":
        rate = cell["env_steps_per_s"]
        if rate and cell["updated"] is not None:
            left = (planned - cell["env_steps"]) / rate - max(0.0, now - cell["updated"])
            cell["eta_s"] = max(0.0, left)
        return cell
    if summary_name == "run.json" and summary is not None and summary.get("complete"):
        differ = _stale_settings(summary.get("config") or {}, settings, job.agent)
        if differ:
            cell["state"] = "stale"
            cell["reason"] = f"trained with other {', '.join(differ)}"
        else:
            cell["state"] = "done"
        return cell
    if has_log is None:
        has_log = os.path.exists(log)
    outcome, reason = _log_outcome(log) if has_log else (None, None)
    if outcome == "failed":
        cell["state"], cell["reason"] = "failed", reason
    elif names & {CHECKPOINT_NAME, "progress.json", "run.json", LOCK_NAME}:
        cell["state"] = "stopped"
    elif has_log and outcome is None:
        cell["state"] = "stopped"  # started, killed before its first checkpoint
    # (a log of a complete run without its folder: the folder was removed, the cell is pending)
    return cell


# ----------------------------------------------------------------------------- the study


def study_status(cfg: dict, results: str | os.PathLike | None = None) -> dict[str, Any]:
    """Every train job of the study ``cfg`` (a validated config) with its status, the counts by
    state, and the run folders under ``results`` (default: the config's ``results_dir``) that
    the study does not plan."""
    results = str(results if results is not None else cfg["results_dir"])
    now = time.time()
    jobs = train_jobs(cfg)
    depth = RUN_NAME.count("/") + 1
    folders = _leaves(os.path.join(results, "runs"), depth, dirs=True)
    logs = _leaves(os.path.join(results, "logs", "train"), depth, dirs=False)
    settings_of: dict[str, dict] = {}
    cells = []
    for job in jobs:
        if job.env not in settings_of:
            settings_of[job.env] = train_settings(cfg, job.env)
        name = run_name(job)
        cells.append(
            cell_status(
                results,
                job,
                settings_of[job.env],
                now,
                exists=name in folders,
                has_log=f"{name}.log" in logs,
                name=name,
            )
        )
    counts = {state: 0 for state in STATES}
    for cell in cells:
        counts[cell["state"]] += 1
    done_steps = sum(c["env_steps"] for c in cells if c["state"] != "stale")
    planned = sum(c["planned_steps"] for c in cells)
    running = [c["eta_s"] for c in cells if c["state"] == "running" and c["eta_s"] is not None]
    return {
        "results_dir": str(results),
        "time": now,
        "cells": cells,
        "counts": counts,
        "diverged_seeds": sum(len(c["diverged"]) for c in cells),
        "cells_with_diverged_seeds": sum(1 for c in cells if c["diverged"]),
        "env_steps": done_steps,
        "planned_steps": planned,
        "running_eta_s": max(running) if running else None,
        "not_in_study": sorted(folders - {c["run"] for c in cells}),
    }


# ----------------------------------------------------------------------------- text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _steps(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= div:
            text = f"{n / div:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return str(n)


def format_table(status: Mapping[str, Any], states: Sequence[str] | None = None) -> str:
    """The status as a text table (cells in ``states`` only, when given) and a summary line."""
    header = ("env", "agent", "σ", "W", "B", "lr", "seeds", "state", "env steps", "%",
              "last return per seed", "div", "steps/s", "ETA")  # fmt: skip
    rows = []
    for c in status["cells"]:
        if states and c["state"] not in states:
            continue
        returns = " ".join("-" if r is None else f"{r:.0f}" for r in c["last_return"].values())
        pct = 100.0 * c["env_steps"] / c["planned_steps"] if c["planned_steps"] else 0.0
        rate = c["env_steps_per_s"]
        state = c["state"] + (f" (pid {c['pid']})" if c["pid"] else "")
        rows.append((
            c["env"], c["agent"], f"{c['utd']:g}", str(c["width"]), str(c["batch_size"]),
            fmt_lr(c["lr"]), f"{c['seeds'][0]}-{c['seeds'][-1]}", state,
            f"{_steps(c['env_steps'])}/{_steps(c['planned_steps'])}", f"{pct:.0f}",
            returns, str(len(c["diverged"])) if c["diverged"] else "",
            "-" if not rate else f"{rate:.0f}",
            _duration(c["eta_s"]) if c["state"] == "running" else "",
        ))  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    numeric = {2, 3, 4, 8, 9, 11, 12, 13}
    lines = []
    for row in (header, *rows):
        cells = [v.rjust(w) if i in numeric else v.ljust(w)
                 for i, (v, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    for c in status["cells"]:
        if c["reason"] and (not states or c["state"] in states):
            lines.append(f"{c['state']}: {c['run']}: {c['reason']}")
    lines.append(summary_line(status))
    return "\n".join(lines)


def summary_line(status: Mapping[str, Any]) -> str:
    counts = status["counts"]
    total = sum(counts.values())
    parts = [f"{counts[s]} {s}" for s in STATES if counts[s] or s in ("done", "pending")]
    planned = status["planned_steps"]
    pct = 100.0 * status["env_steps"] / planned if planned else 0.0
    line = f"{total} cells: {', '.join(parts)}; env steps {pct:.1f} % of {_steps(planned)}"
    if status["diverged_seeds"]:
        line += (
            f"; {status['diverged_seeds']} diverged seeds in "
            f"{status['cells_with_diverged_seeds']} cells"
        )
    if status["running_eta_s"] is not None:
        line += f"; running cells done in {_duration(status['running_eta_s'])}"
    foreign = status["not_in_study"]
    if foreign:
        line += (
            f"\n{len(foreign)} run folders under {status['results_dir']}/runs are not cells of "
            f"this study (another config?), e.g. {foreign[0]}"
        )
    return line


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m valuescale.status",
        description="Where a study stands: every cell of the configured study (pending, "
        "running, stopped, failed, stale, done; diverged seeds), env steps done of planned, the "
        "last evaluation return per seed, env steps/s and ETA, read from the run folders.",
    )
    parser.add_argument(
        "results_dir",
        nargs="?",
        help="the study's results folder (default: the config's results_dir)",
    )
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        metavar="FILE",
        help="the study's config file(s), merged over config/config.yaml of the working "
        "directory as Snakemake does (give what you gave snakemake)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=10.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 10) until Ctrl-C",
    )
    parser.add_argument(
        "--state",
        nargs="+",
        choices=STATES,
        metavar="STATE",
        help=f"list only cells in these states ({', '.join(STATES)}); the summary counts all",
    )
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        help="write the learning curves so far (one panel per env, colour σ, line width N)",
    )
    return parser


def _render(status: Mapping[str, Any], as_json: bool, states: Sequence[str] | None) -> str:
    if as_json:
        return json.dumps(
            status
        )  # compact: the C encoder (indent would take seconds at 10,000 cells)
    return format_table(status, states)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error("argument --watch: must be a positive number of seconds")
    try:
        cfg = load_config(args.configfile)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = args.results_dir
    try:
        status = study_status(cfg, results)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.plot:
        from valuescale.plots.progress import plot_curves

        plot_curves(status, args.plot)
    if args.watch is None:
        print(_render(status, args.json, args.state))
        return 0
    try:
        while True:
            text = _render(status, args.json, args.state)
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["time"]))
            print(text if args.json else f"{stamp}  {status['results_dir']}\n{text}", flush=True)
            time.sleep(args.watch)
            status = study_status(cfg, results)
            if args.plot:
                plot_curves(status, args.plot)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
