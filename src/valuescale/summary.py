"""The study summary page of the HTML report (``snakemake --report``): one self-contained HTML
file (no scripts, no external resources) written by the workflow's ``summary`` rule.

- cells by state: the counts of ``valuescale.status`` (the same states the status command shows);
- per cell: state, env steps, diverged seeds, wall time, CPU cores and core-hours (wall time x the
  cores the engine ran on, both from ``run.json``: what a cluster charges for the job), env
  steps/s; and the study's totals;
- the fitted laws: every row of ``fits_data_efficiency.csv`` (D_J(σ, N), Eq. 7.1, and the
  log-linear baselines) with each parameter's bootstrap confidence interval, and of
  ``fits_batch_size.csv`` (B*(σ, N), Eq. 6.1: point estimates, no bootstrap), with their status.

``write_summary`` is the rule's entry point; ``study_summary`` gathers the data (a dict) and
``summary_html`` renders it.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from valuescale.status import STATES, study_status

#: the laws' parameters, in the order they are shown (a column ``p`` with ``p_lo``/``p_hi`` has a CI)
DATA_EFFICIENCY_PARAMS: tuple[str, ...] = (
    "D_min", "a_J", "alpha_J", "b_J", "beta_J",
    "log_intercept", "slope_utd", "slope_critic_params",
)  # fmt: skip
BATCH_SIZE_PARAMS: tuple[str, ...] = ("a_B", "alpha_B", "b_B", "beta_B", "B_geomean")
LAWS = {
    "data_efficiency": "D_J(σ, N) = D_min + (a_J/σ)^α_J + (b_J/N)^β_J (Eq. 7.1); log-linear "
    "baselines: log D_J = log_intercept + slope_utd·log σ + slope_critic_params·log N",
    "batch_size": "B*(σ, N) = a_B / (σ^α_B · (1 + b_B·N^(−β_B))) (Eq. 6.1)",
}


def _cores(results: str, run: str) -> int | None:
    try:
        with open(os.path.join(results, "runs", run, "run.json"), "rb") as f:
            cores = json.loads(f.read()).get("cpu_cores")
    except (OSError, ValueError):
        return None
    return int(cores) if isinstance(cores, int) else None


def _records(path: str | os.PathLike | None) -> list[dict[str, Any]]:
    """The rows of a fits table as dicts (NaN as None); none when there is no table."""
    if path is None or not os.path.exists(path):
        return []
    import pandas as pd

    df = pd.read_csv(path)
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in df.to_dict("records")
    ]


def study_summary(
    cfg: dict,
    results: str | os.PathLike | None = None,
    fits_data_efficiency: str | os.PathLike | None = None,
    fits_batch_size: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The summary's data: the study's status (``valuescale.status.study_status``) with each
    cell's cores and core-hours, the totals, and the rows of the two fits tables."""
    status = study_status(cfg, results)
    results = status["results_dir"]
    cells = []
    for cell in status["cells"]:
        cores = _cores(results, cell["run"]) if cell["wall_time_s"] is not None else None
        wall = cell["wall_time_s"]
        core_hours = wall * cores / 3600.0 if wall is not None and cores else None
        cells.append({**cell, "cpu_cores": cores, "core_hours": core_hours})
    return {
        "results_dir": results,
        "counts": status["counts"],
        "diverged_seeds": status["diverged_seeds"],
        "cells": cells,
        "wall_time_s": sum(c["wall_time_s"] or 0.0 for c in cells),
        "core_hours": sum(c["core_hours"] or 0.0 for c in cells),
        "env_steps": status["env_steps"],
        "planned_steps": status["planned_steps"],
        "fits_data_efficiency": _records(fits_data_efficiency),
        "fits_batch_size": _records(fits_batch_size),
    }


# ----------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: sans-serif; font-size: 14px; margin: 1em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
tr.ok td { background: #f3fbf3; } tr.failed td, tr.degenerate td { color: #777; }
p.law { font-family: monospace; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_cols: set[int],
           classes: Sequence[str] | None = None) -> str:  # fmt: skip
    """An HTML table; ``rows`` hold escaped cell HTML."""
    out = ["<table>", "<tr>"]
    out += [f'<th class="{"text" if i in text_cols else ""}">{_esc(h)}</th>'
            for i, h in enumerate(header)]  # fmt: skip
    out.append("</tr>")
    for n, row in enumerate(rows):
        cls = f' class="{_esc(classes[n])}"' if classes else ""
        out.append(f"<tr{cls}>")
        out += [f'<td class="{"text" if i in text_cols else ""}">{cell}</td>'
                for i, cell in enumerate(row)]  # fmt: skip
        out.append("</tr>")
    out.append("</table>")
    return "\n".join(out)


def _with_ci(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None:
        return ""
    lo, hi = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    text = _esc(_num(value))
    if lo is not None and hi is not None:
        text += f" [{_esc(_num(lo))}, {_esc(_num(hi))}]"
    return text


def _fits_table(records: Sequence[Mapping[str, Any]], keys: Sequence[str],
                params: Sequence[str]) -> str:  # fmt: skip
    # every parameter the table has, fitted or not (a law whose fits all failed still shows them)
    shown = [p for p in params if any(p in r for r in records)]
    header = [*keys, *shown, "status", "reason"]
    rows, classes = [], []
    for r in records:
        cells = [_esc(_num(r.get(k))) for k in keys]
        cells += [_with_ci(r, p) for p in shown]
        cells += [_esc(r.get("status") or ""), _esc(r.get("reason") or "")]
        rows.append(cells)
        classes.append(str(r.get("status") or ""))
    text = set(range(len(keys))) | {len(header) - 2, len(header) - 1}
    text -= {keys.index(k) for k in ("threshold",) if k in keys}
    return _table(header, rows, text, classes)


def summary_html(summary: Mapping[str, Any], title: str = "Study summary") -> str:
    """The summary page (a whole HTML document)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p>Results: <code>{_esc(summary['results_dir'])}</code></p>",
    ]
    cells = summary["cells"]
    counts = summary["counts"]
    parts.append("<h2>Cells by state</h2>")
    parts.append(
        _table(
            ["state", "cells"],
            [[_esc(s), str(counts.get(s, 0))] for s in STATES]
            + [["all", str(len(cells))], ["diverged seeds", str(summary["diverged_seeds"])]],
            {0},
        )
    )
    parts.append("<h2>Cells: wall time and core-hours</h2>")
    if cells:
        header = ["env", "agent", "σ", "W", "B", "lr", "seeds", "state", "env steps",
                  "diverged seeds", "wall time", "cores", "core-hours", "env steps/s"]  # fmt: skip
        rows = []
        for c in cells:
            rate = c["env_steps_per_s"]
            rows.append([
                _esc(c["env"]), _esc(c["agent"]), _esc(f"{c['utd']:g}"), str(c["width"]),
                str(c["batch_size"]), _esc(f"{c['lr']:g}"),
                _esc(f"{c['seeds'][0]}-{c['seeds'][-1]}"), _esc(c["state"]),
                _esc(f"{c['env_steps']}/{c['planned_steps']}"), str(len(c["diverged"])),
                _esc(_duration(c["wall_time_s"])), _esc(_num(c["cpu_cores"])),
                _esc("" if c["core_hours"] is None else f"{c['core_hours']:.3f}"),
                _esc("" if not rate else f"{rate:.0f}"),
            ])  # fmt: skip
        rows.append([
            "total", "", "", "", "", "", "", "", _esc(f"{summary['env_steps']}/"
            f"{summary['planned_steps']}"), str(summary["diverged_seeds"]),
            _esc(_duration(summary["wall_time_s"])), "", _esc(f"{summary['core_hours']:.3f}"), "",
        ])  # fmt: skip
        parts.append(_table(header, rows, {0, 1, 6, 7}))
        parts.append(
            "<p>core-hours = wall time × the CPU cores the engine ran on (<code>run.json</code>: "
            "<code>wall_time_s</code>, <code>cpu_cores</code>).</p>"
        )
    else:
        parts.append("<p>No training cells (a study of published curves only).</p>")
    parts.append("<h2>Fitted laws (value [bootstrap CI])</h2>")
    for name, records, keys, params in (
        ("data_efficiency", summary["fits_data_efficiency"],
         ["scope", "agent", "source", "variant", "threshold_idx", "threshold"],
         DATA_EFFICIENCY_PARAMS),
        ("batch_size", summary["fits_batch_size"],
         ["scope", "agent", "source", "basis", "level"], BATCH_SIZE_PARAMS),
    ):  # fmt: skip
        parts.append(f'<p class="law">{_esc(LAWS[name])}</p>')
        if records:
            parts.append(_fits_table(records, keys, params))
        else:
            parts.append("<p>No fits.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_summary(
    cfg: dict,
    out: str | os.PathLike,
    fits_data_efficiency: str | os.PathLike | None = None,
    fits_batch_size: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write the summary page of the study ``cfg`` (a validated config) to ``out``; return its
    data."""
    from valuescale.atomic import atomic_write_bytes

    summary = study_summary(cfg, results, fits_data_efficiency, fits_batch_size)
    atomic_write_bytes(out, summary_html(summary).encode())
    return summary
