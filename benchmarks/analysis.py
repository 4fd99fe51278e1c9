"""Wall time of the whole analysis on the published curves: ingest -> crossings -> fits ->
allocation -> evaluation tables -> proposal -> figures, stage by stage.

Runs the stage functions of :mod:`valuescale.pipeline` exactly as the workflow calls them, with
the settings the workflow would pass for a study of every published zip (defaults from
``workflow/schemas/config.schema.yaml``, per-env values from the paper's Table 2), writing into a
temporary folder (or ``--out``). Figures are drawn when :mod:`valuescale.plots` provides
``render_figure``. Prints a per-stage table, the total, and the headline numbers of the
evaluation tables. Target: <= 120 s on the 2-core development box.

Examples::

    python benchmarks/analysis.py
    python benchmarks/analysis.py --n-bootstrap 0 --no-figures
    python benchmarks/analysis.py --published ../shared/data/published --out /tmp/analysis
    python benchmarks/analysis.py --configfile config/published.yaml   # the published study
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _job_threads() -> str:
    """``resources.analysis.threads`` of the schema: the cores of each analysis job."""
    schema = yaml.safe_load(SCHEMA.read_text())
    resources = schema["properties"]["resources"]["properties"]["analysis"]["properties"]
    return str(resources["threads"]["default"])


# Snakemake runs every analysis job with OMP/OPENBLAS/MKL_NUM_THREADS set to the job's threads;
# the stages run here in one process get the same, before numpy loads its BLAS (threaded BLAS
# on the fits' tiny matrices spins idle threads: ~13 CPU-s more for nothing).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _job_threads())
DEFAULT_PUBLISHED = (REPO / ".." / "shared" / "data" / "published").resolve()
TARGET_S = 120.0


def schema_defaults(node: dict[str, Any], defs: dict[str, Any]) -> Any:
    """The default value of a schema node, with nested object defaults filled in."""
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    if node.get("type") == "object" and "properties" in node:
        out = dict(node.get("default") or {})
        for key, sub in node["properties"].items():
            value = schema_defaults(sub, defs)
            if value is not None and key not in out:
                out[key] = value
        return out
    return node.get("default")


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` as Snakemake's --configfile does (dicts merged, rest replaced)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def study_settings(
    n_bootstrap: int | None, paper_j_max: bool | None = None, configfile: Path | None = None
) -> dict[str, dict[str, Any]]:
    """``analysis_settings(stage)`` of a published-only study with the schema's defaults (and
    the ``analysis`` block of ``configfile`` over them, e.g. ``config/published.yaml``)."""
    from valuescale.tasks import TASKS

    schema = yaml.safe_load(SCHEMA.read_text())
    defs = schema.get("$defs", {})
    analysis = schema_defaults(schema["properties"]["analysis"], defs)
    if configfile is not None:
        analysis = _merged(analysis, yaml.safe_load(configfile.read_text()).get("analysis") or {})
    train = schema_defaults(defs["train_settings"], defs)
    if n_bootstrap is not None:
        analysis["fits"]["n_bootstrap"] = n_bootstrap
    if paper_j_max is not None:
        analysis["thresholds"]["paper_j_max"] = paper_j_max
    envs = {
        env: {"j_min": t.j_min, "j_max": None, "delta": t.delta, "max_step": None}
        for env, t in TASKS.items()
    }
    if analysis["thresholds"].get("paper_j_max"):
        for env, t in TASKS.items():
            envs[env]["j_max"] = t.j_max
    return {
        "crossings": {
            "envs": {e: {k: v[k] for k in ("j_min", "j_max", "max_step")} for e, v in envs.items()},
            "reset_interval": {"bro": train["reset_interval"] or None, "simbav2": None},
            "preprocess": analysis["preprocess"],
            "thresholds": analysis["thresholds"],
            "bootstrap": analysis["bootstrap"],
            "batch_size": analysis["batch_size"],
        },
        "fits": {"fits": analysis["fits"], "batch_size": analysis["batch_size"]},
        "allocation": {
            "envs": {e: {"delta": v["delta"]} for e, v in envs.items()},
            "compute": analysis["compute"],
            "budget": analysis["budget"],
            "fits": analysis["fits"],
        },
        "evaluation": {
            "compute": analysis["compute"],
            "fits": analysis["fits"],
            "bootstrap": analysis["bootstrap"],
            "evaluation": analysis["evaluation"],
        },
        "proposal": {
            "envs": {e: {"delta": v["delta"]} for e, v in envs.items()},
            "compute": analysis["compute"],
            "proposal": analysis["proposal"],
            "train": train,
        },
        "figures": {
            "figures": {
                **analysis["figures"],
                "reset_dips": analysis["preprocess"]["reset_dips"],
                "fit_exclude": analysis["fits"]["exclude"],
            }
        },
    }


class Timer:
    """Collects (stage, wall seconds, CPU seconds of this process) rows.

    On a shared box the wall time grows with the load; the CPU time does not (much).
    """

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    def run(self, stage: str, fn: Callable[[], None]) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
        self.rows.append((stage, seconds, cpu_s))
        print(f"  {stage:<34s} {seconds:7.1f} s wall {cpu_s:7.1f} s CPU", flush=True)


def headline(root: Path) -> None:
    """Print the numbers the paper reports, from the evaluation tables of the study in ``root``."""
    import pandas as pd  # (numpy after the thread settings above)

    from valuescale.catalog import table_path

    def table(key: str) -> Path:
        return Path(table_path(key, str(root)))

    fe = pd.read_csv(table("fit_errors"))
    d = fe[(fe["quantity"] == "D") & (fe["variant"] == "per_env") & (fe["scope"] == "average")]
    print("\nD_J fit errors (per_env, mean over envs; paper: 10.0 / 14.9 / 18.0 %):")
    for row in d.itertuples(index=False):
        print(
            f"  fits on {row.fit_source:<42s} {row.set:<13s} {100 * row.mean_rel_error:5.1f} % "
            f"(n = {row.n})"
        )
    b = fe[(fe["quantity"] == "batch_size") & fe["scope"].isin(["all", "humanoidbench"])]
    if len(b):
        print("batch-size rule vs log-linear (paper: 48.9 % vs 55.1 %):")
        for row in b.itertuples(index=False):
            print(
                f"  {row.agent} {row.scope} {row.set:<7s} {row.variant:<10s} "
                f"{100 * row.mean_rel_error:5.1f} % (n = {row.n})"
            )
    path = table("allocation_strategies")
    if path.is_file():
        st = pd.read_csv(path)
        print("allocation strategies (data relative to compute-optimal, equal budget):")
        for row in st[st["scope"] == "all"].itertuples(index=False):
            print(
                f"  {row.strategy:<16s} mean {row.mean_ratio:.3f} median {row.median_ratio:.3f} "
                f"(n = {row.n}, not reached {row.n_not_reached})"
            )
    path = table("passive_critic_slopes")
    if path.is_file():
        ps = pd.read_csv(path)
        print("passive critic: average log-log slope of validation TD loss:")
        for row in ps[ps["env"] == "average"].itertuples(index=False):
            print(f"  {row.metric:<32s} vs {row.against:<14s} {row.slope:+.3f}")
    fits = pd.read_csv(table("fits_data_efficiency"))
    laws = fits[fits["variant"] != "loglinear"]
    print(
        f"D_J fits: {int((laws['status'] == 'degenerate').sum())} of {len(laws)} degenerate "
        "(skipped by allocation, budget lines, proposals, fit errors)"
    )
    bf = pd.read_csv(table("budget_fits"))
    if len(bf):
        print("budget lines, median R^2 (log space, all budgets) by variant:")
        columns = ["r2", "r2_direct"] if "r2_direct" in bf else ["r2"]
        print(
            bf.pivot_table(index="variant", columns="quantity", values=columns, aggfunc="median")
            .round(3)
            .to_string()
        )
        print("(r2: D*, C* lines and sigma*, N* derived from the laws; r2_direct: direct lines)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--published",
        type=Path,
        default=DEFAULT_PUBLISHED,
        help="folder with the published zips and design/ (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: temp)")
    parser.add_argument(
        "--n-bootstrap",
        type=int,
        default=None,
        help="override analysis.fits.n_bootstrap (default: the schema's)",
    )
    parser.add_argument(
        "--paper-j-max",
        action="store_true",
        help="the paper's J_max for its envs (as config/published.yaml) instead of the data rule",
    )
    parser.add_argument(
        "--configfile",
        type=Path,
        default=None,
        help="a study config whose analysis block overrides the schema's defaults "
        "(config/published.yaml: the authors' conventions)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--verbose", action="store_true", help="log the stages' messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )

    from valuescale import catalog, pipeline

    zips = sorted(args.published.glob("*.zip"))
    if not zips:
        print(f"no published zips in {args.published}", file=sys.stderr)
        return 2
    settings = study_settings(
        args.n_bootstrap, True if args.paper_j_max else None, configfile=args.configfile
    )
    with tempfile.TemporaryDirectory(prefix="valuescale-bench-") as tmp:
        root = args.out or Path(tmp)

        def t(key: str, **wildcards: str) -> Path:  # where the workflow writes table `key`
            return Path(catalog.table_path(key, str(root), **wildcards))

        timer = Timer()
        print(f"{len(zips)} published zips from {args.published}; results in {root}")
        total_start = time.perf_counter()

        def ingest() -> None:
            for z in zips:
                pipeline.import_published(z, z.stem, t("published", name=z.stem))
            pipeline.merge_curves([t("published", name=z.stem) for z in zips], t("curves"))

        timer.run("ingest (import + merge)", ingest)
        timer.run(
            "crossings (+ thresholds, B*)",
            lambda: pipeline.crossings(
                t("curves"),
                out_crossings=t("crossings"),
                out_thresholds=t("thresholds"),
                out_best_batch_size=t("best_batch_size"),
                settings=settings["crossings"],
            ),
        )
        timer.run(
            "fits",
            lambda: pipeline.fits(
                t("crossings"),
                t("best_batch_size"),
                out_batch_size=t("fits_batch_size"),
                out_data_efficiency=t("fits_data_efficiency"),
                settings=settings["fits"],
            ),
        )
        timer.run(
            "allocation",
            lambda: pipeline.allocation(
                t("crossings"),
                t("fits_data_efficiency"),
                t("fits_batch_size"),
                out_compute_optimal=t("compute_optimal"),
                out_budget_optimal=t("budget_optimal"),
                out_budget_fits=t("budget_fits"),
                settings=settings["allocation"],
            ),
        )
        timer.run(
            "fit_errors",
            lambda: pipeline.fit_errors(
                t("crossings"),
                t("fits_data_efficiency"),
                t("best_batch_size"),
                t("fits_batch_size"),
                out=t("fit_errors"),
                settings=settings["evaluation"],
            ),
        )
        design = sorted(str(p) for p in (args.published / "design").glob("*.csv"))
        if design:
            timer.run(
                "allocation_strategies",
                lambda: pipeline.allocation_strategies(
                    t("crossings"),
                    design,
                    out=t("allocation_strategies"),
                    settings=settings["evaluation"],
                ),
            )
        timer.run(
            "passive_critic_slopes",
            lambda: pipeline.passive_critic_slopes(
                t("curves"),
                out=t("passive_critic_slopes"),
                settings=settings["evaluation"],
            ),
        )
        timer.run(
            "proposal",
            lambda: pipeline.proposal(
                t("fits_data_efficiency"),
                t("fits_batch_size"),
                t("compute_optimal"),
                t("budget_fits"),
                out=t("proposal"),
                settings=settings["proposal"],
            ),
        )
        if not args.no_figures:
            try:
                from valuescale.plots import render_figure  # noqa: F401
            except ImportError as exc:
                print(f"  figures skipped: {exc}")
            else:
                for name, spec in catalog.FIGURES.items():
                    inputs = {k: str(t(k)) for k in spec.inputs}  # as the workflow passes them
                    pdf, png = (root / f for f in spec.files)
                    timer.run(
                        f"figure {name}",
                        lambda name=name, inputs=inputs, pdf=pdf, png=png: pipeline.figure(
                            name, inputs, out_pdf=pdf, out_png=png, settings=settings["figures"]
                        ),
                    )
        total = time.perf_counter() - total_start
        cpu = sum(row[2] for row in timer.rows)
        tables_s = sum(row[1] for row in timer.rows if not row[0].startswith("figure"))
        print(
            f"  {'total':<34s} {total:7.1f} s wall {cpu:7.1f} s CPU  (target <= {TARGET_S:.0f} s: "
            f"{'met' if total <= TARGET_S else 'MISSED'}; tables alone {tables_s:.1f} s; "
            f"load average {os.getloadavg()[0]:.1f})"
        )
        headline(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
