"""The report's study summary page (``valuescale.summary``, rule ``summary``) of the shared
default study, rendered by headless Chromium (Debian's ``chromium``, installed with apt-get when
missing, as the SLURM tests install SLURM)."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser

import pandas as pd
import pytest

from valuescale.status import STATES


def chromium() -> str:
    """The path of Debian's chromium; installed with apt-get when missing (needs root)."""
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is missing and cannot be installed (needs root and apt-get)")
    apt = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(apt, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
        subprocess.run(apt, env=env, capture_output=True, timeout=900, check=True)
    return shutil.which("chromium") or pytest.fail("apt-get installed no chromium")


class _Tables(HTMLParser):
    """Headings and table rows (cell texts) of a page, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._text: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "h2"):
            self._text = []

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self._row is not None:
            self._row.append("".join(self._text or []).strip())
        elif tag == "h2":
            self.headings.append("".join(self._text or []).strip())
        elif tag == "tr":
            self.tables[-1].append(self._row or [])
        if tag in ("td", "th", "h2"):
            self._text = None

    def handle_data(self, data) -> None:
        if self._text is not None:
            self._text.append(data)


@pytest.mark.slow
def test_summary_page_of_the_default_study_in_chromium(default_study, tmp_path) -> None:
    page = default_study.workdir / "results" / "summary.html"
    assert page.is_file(), "rule all builds the summary page"
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, encoding="utf-8", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = _Tables()
    dom.feed(proc.stdout)
    assert dom.headings == [
        "Cells by state", "Cells: wall time and core-hours", "Fitted laws (value [bootstrap CI])"
    ]  # fmt: skip
    states, cells, fits_de, fits_bs = dom.tables
    counts = {row[0]: int(row[1]) for row in states[1:]}
    assert counts == {**dict.fromkeys(STATES, 0), "done": 9, "all": 9, "diverged seeds": 0}

    header, *rows, total = cells
    col = {name: header.index(name) for name in header}
    by_cell = {(r[col["σ"]], r[col["W"]]): r for r in rows}
    assert len(by_cell) == 9 and total[0] == "total"
    for run in default_study.complete_runs():
        row = by_cell[(f"{run['config']['utd']:g}", str(run["config"]["critic_width"]))]
        assert row[col["state"]] == "done"
        assert row[col["env steps"]] == f"{run['env_steps']}/{run['env_steps']}"
        assert row[col["cores"]] == str(run["cpu_cores"])
        core_hours = run["wall_time_s"] * run["cpu_cores"] / 3600
        assert float(row[col["core-hours"]]) == pytest.approx(core_hours, abs=1e-3)
        h, m, s = (int(x) for x in row[col["wall time"]].split(":"))
        assert abs(h * 3600 + m * 60 + s - run["wall_time_s"]) <= 1
    assert float(total[col["core-hours"]]) == pytest.approx(
        sum(float(r[col["core-hours"]]) for r in rows), abs=0.005
    )

    # every fitted row with its parameters and, where the table has them, their CIs
    table = pd.read_csv(default_study.workdir / "results" / "tables" / "fits_data_efficiency.csv")
    header, *rows = fits_de
    assert len(rows) == len(table)
    assert "D_min" in header and "status" in header
    for row, fit in zip(rows, table.itertuples(), strict=True):
        assert row[header.index("status")] == fit.status
        cell = row[header.index("D_min")]
        if pd.isna(fit.D_min):
            assert cell == ""
        else:
            assert cell.startswith(f"{fit.D_min:.4g}")
            if not pd.isna(fit.D_min_lo):
                assert cell.endswith(f"[{fit.D_min_lo:.4g}, {fit.D_min_hi:.4g}]")
    header, *rows = fits_bs
    assert len(rows) == len(pd.read_csv(
        default_study.workdir / "results" / "tables" / "fits_batch_size.csv"))  # fmt: skip
