"""Loading, validation, wildcard constraints and input functions of the workflow.

Everything that needs Python lives here; the other rule files hold rules only. All checks run when
the DAG is built, so a bad config fails before any job starts, with a ValueError naming the key.
"""

import math
import os
import re
import sys
from pathlib import Path

from snakemake.logging import logger

from valuescale import catalog, study
from valuescale.study import config_error
from valuescale.tasks import DEFAULT_DELTA, TASKS

# Software of all jobs under --use-conda (the package's dependencies); without --use-conda jobs run
# in the interpreter that runs Snakemake.
CONDA_ENV = "../envs/valuescale.yaml"

# Jobs import the package from this checkout (also inside a conda environment), and shell jobs
# call `python -m valuescale...`: put the interpreter that runs Snakemake first on PATH, so that
# an unactivated virtual environment works too.
_src = os.path.join(workflow.basedir, "src")
_pythonpath = os.environ.get("PYTHONPATH", "")
if _pythonpath.split(os.pathsep)[0] != _src:
    os.environ.update(PYTHONPATH=os.pathsep.join(p for p in [_src, _pythonpath] if p))
_bindir = os.path.dirname(sys.executable)
_path = os.environ["PATH"]
if _path.split(os.pathsep)[0] != _bindir:
    os.environ["PATH"] = os.pathsep.join([_bindir, _path])

FIGURES = list(catalog.FIGURES)  # the tables' and figures' home: valuescale.catalog
EVALUATION_TABLES = [key for key, table in catalog.TABLES.items() if table.conditional]
PUBLISHED_NAMES = [
    "model_scaling_const_lr",
    "overfitting",
    "fitted_bs",
    "interpolated_bs",
    "extrapolated_bs",
    "compute_optimal",
    "n_scaling_bl",
    "utd_scaling_bl",
    "side_critic",
    "simbav2_model_scaling_linear20_with_base",
    "dmc_bro_ablations",
]


# ----------------------------------------------------------------------------- validation


SCHEMA_PATH = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")


def _float_train_settings():
    import yaml

    with open(SCHEMA_PATH) as f:
        schema = yaml.safe_load(f)
    props = schema["$defs"]["train_settings"]["properties"]
    return {key for key, spec in props.items() if "number" in spec["type"]}


FLOAT_TRAIN_SETTINGS = _float_train_settings()


# ----------------------------------------------------------------------------- wildcard formats


# Wildcard formats accept the canonical forms only, so every path maps to one cell.
WILDCARD_PATTERNS = {
    "env": r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*",
    "agent": r"bro|simbav2",
    "utd": r"(0|[1-9][0-9]*)(\.[0-9]*[1-9])?",
    "width": r"[1-9][0-9]*",
    "batch_size": r"[1-9][0-9]*",
    "lr": r"[1-9](\.[0-9]*[1-9])?e(0|-?[1-9][0-9]*)",
    "first": r"0|[1-9][0-9]*",
    "last": r"0|[1-9][0-9]*",
    "name": "|".join(PUBLISHED_NAMES),
    "figure": "|".join(FIGURES),
}


wildcard_constraints:
    **WILDCARD_PATTERNS,


# ----------------------------------------------------------------------------- grid and seeds


def train_settings(env):
    """Train settings of one env: config['train'] with config['train_overrides'][env] on top."""
    return study.train_settings(config, env)


def _check_envs(envs):
    """Unknown env names fail with the list of valid ones; a HumanoidBench id fails when
    `import humanoid_bench` does (or the id is not registered), naming the env and how to install
    it, so that no train job is planned that would fail a second in."""
    import logging

    from valuescale.envs import check_env_name, is_humanoid_bench, list_envs

    # importing dm_control (also through humanoid_bench) adds a handler to the root logger, which
    # would print every line of Snakemake's own log twice
    root_handlers = list(logging.getLogger().handlers)
    try:
        for key, env in envs:
            if is_humanoid_bench(env):
                try:
                    check_env_name(env)
                except ValueError as err:
                    raise config_error(key, str(err)) from None
        dmc = [(key, env) for key, env in envs if not is_humanoid_bench(env)]
        valid = set(list_envs()) if dmc else set()
    finally:
        logging.getLogger().handlers[:] = root_handlers
    for key, env in dmc:
        if env not in valid:
            raise config_error(key, f"unknown env {env!r}; valid: {', '.join(sorted(valid))}")


def build_train_jobs(cfg):
    """All train jobs of the grid (deduplicated, in config order) after cross-field checks."""
    return study.train_jobs(cfg, check_envs=_check_envs)


# ----------------------------------------------------------------------------- analysis settings


def resolve_env_analysis(cfg, grid_envs):
    """Per-env analysis settings: the paper's Table 2 (j_min, delta; j_max only with
    analysis.thresholds.paper_j_max) with config['analysis']['envs'] on top. j_max None = the
    data rule."""
    resolved = {}
    paper_j_max = cfg["analysis"]["thresholds"]["paper_j_max"]
    for env, spec in TASKS.items():
        resolved[env] = {
            "j_min": spec.j_min,
            "j_max": spec.j_max if paper_j_max else None,
            "delta": spec.delta,
            "max_step": None,
        }
    for env, override in cfg["analysis"]["envs"].items():
        base = resolved.get(env, {"j_min": None, "j_max": None, "delta": DEFAULT_DELTA})
        override = {k: v for k, v in override.items() if v is not None or k != "j_min"}
        resolved[env] = {"max_step": None, **base, **override}
    for env, values in resolved.items():
        if (
            values["j_min"] is not None
            and values["j_max"] is not None
            and values["j_min"] >= values["j_max"]
        ):
            raise config_error(
                f"analysis.envs.{env}.j_min",
                f"j_min ({values['j_min']}) must be below j_max ({values['j_max']})",
            )
    return resolved


def check_analysis(cfg):
    analysis = cfg["analysis"]
    n_thresholds = analysis["thresholds"]["n"]
    if analysis["budget"]["n_heldout"] > n_thresholds - 2:
        raise config_error(
            "analysis.budget.n_heldout",
            f"{analysis['budget']['n_heldout']} held-out budgets leave fewer than 2 of "
            f"analysis.thresholds.n = {n_thresholds} to fit",
        )
    for section in ("proposal", "figures"):
        idx = analysis[section]["threshold_idx"]
        if idx is not None and idx >= n_thresholds:
            raise config_error(
                f"analysis.{section}.threshold_idx",
                f"{idx} is out of range for {n_thresholds} thresholds",
            )
    unfitted = [v for v in analysis["figures"]["variants"] if v not in analysis["fits"]["variants"]]
    if unfitted:
        raise config_error(
            "analysis.figures.variants",
            f"{', '.join(unfitted)} not fitted (analysis.fits.variants = "
            f"{analysis['fits']['variants']})",
        )


def check_logging(cfg):
    """The live-logging settings of the train jobs (valuescale.livelog); a backend whose
    package is not installed here is refused, naming the key and how to install it."""
    from valuescale.livelog import LiveLogSettings, missing_package

    settings = LiveLogSettings.from_config(cfg["logging"])
    missing = missing_package(settings)
    if missing is not None:
        raise config_error(*missing)
    return settings


# ----------------------------------------------------------------------------- published data


def is_url(source):
    return re.match(r"^https?://", source) is not None


def published_source_path(name):
    """Where a published zip comes from: a URL or a local path."""
    source = config["published_source"].rstrip("/")
    return f"{source}/{name}.zip"


def resolve_published(cfg):
    """The published zips this study uses; decided when the DAG is built.

    A local source lacking an optional zip skips it (and the outputs in its needed_by) with a
    warning; lacking a required one is an error.
    """
    zips = cfg["published"]["zips"]
    source = cfg["published_source"]
    available, skipped = [], []
    if zips and not is_url(source) and not Path(source).is_dir():
        raise config_error("published_source", f"{source!r} is neither a URL nor a directory")
    for name, spec in zips.items():
        if is_url(source) or (Path(source) / f"{name}.zip").is_file():
            available.append(name)
        elif spec["optional"]:
            skipped.append(name)
            logger.warning(
                f"published zip {name}.zip is not in {source}: skipping it"
                + (f" and {', '.join(spec['needed_by'])}" if spec["needed_by"] else "")
            )
        else:
            raise config_error(
                f"published.zips.{name}",
                f"{name}.zip is not in {source} (mark it optional: true to skip it)",
            )
    return available, skipped


def resolve_design_dir(cfg):
    design = cfg["published"]["design_dir"]
    if design is None and not is_url(cfg["published_source"]):
        candidate = Path(cfg["published_source"]) / "design"
        design = str(candidate) if candidate.is_dir() else None
    if design is not None and not Path(design).is_dir():
        raise config_error("published.design_dir", f"{design!r} is not a directory")
    return design


# ----------------------------------------------------------------------------- load the study

study.validate(config)  # fills in the schema's defaults; ints written as 64.0 made ints

RESULTS = config["results_dir"].rstrip("/")
RESOURCES = config["resources_dir"].rstrip("/")
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
TABLES = f"{RESULTS}/tables"
TABLE = {key: catalog.table_path(key, RESULTS) for key in catalog.TABLES}  # key -> path
FIGURES_DIR = f"{RESULTS}/figures"
if config["compilation_cache"] is True:
    COMPILATION_CACHE = f"{RESOURCES}/xla-cache"
elif config["compilation_cache"] is False:
    COMPILATION_CACHE = None
else:
    COMPILATION_CACHE = config["compilation_cache"].rstrip("/")
RUN_NAME = study.RUN_NAME
RUN_DIR = f"{RESULTS}/runs/{RUN_NAME}"

TRAIN_JOBS = build_train_jobs(config)
GRID_ENVS = sorted({job.env for job in TRAIN_JOBS})
ENV_ANALYSIS = resolve_env_analysis(config, GRID_ENVS)
check_analysis(config)
PUBLISHED, PUBLISHED_SKIPPED = resolve_published(config)
DESIGN_DIR = resolve_design_dir(config) if PUBLISHED else None

LIVE_LOG = check_logging(config)

if not TRAIN_JOBS and not PUBLISHED:
    raise config_error(
        "grid", "the study is empty: no training cells and no published zips to analyse"
    )


# ----------------------------------------------------------------------------- train helpers


def get_train_runs():
    """curves.parquet of every train job of the study."""
    return [f"{RUN_DIR.format(**job._asdict())}/curves.parquet" for job in TRAIN_JOBS]


def get_train_summaries():
    """run.json of every train job of the study."""
    return [f"{RUN_DIR.format(**job._asdict())}/run.json" for job in TRAIN_JOBS]


# Train settings that change no result: passed to the engine outside the tracked params, so
# changing them never reruns training.
OPERATIONAL_TRAIN_SETTINGS = {"checkpoint_every"}

# Settings the train block gained after studies were trained without them (BRO's, when its config
# class became their home): passed only when they differ from the agent's default, so that a
# study trained before keeps its jobs' params and Snakemake reruns nothing.
LATER_TRAIN_SETTINGS = {
    "kappa",
    "critic_lr",
    "actor_lr",
    "temperature_lr",
    "temperature_b1",
    "pessimism",
}


def get_train_args(wildcards):
    """Engine flags of the job's seeds and of every training setting of the job's agent that is
    not in the path (except the operational ones; null: the agent's own default). A params value:
    changing any of them reruns the job.
    """
    from valuescale.config import setting_fields

    seeds = ",".join(str(s) for s in range(int(wildcards.first), int(wildcards.last) + 1))
    args = [f"--seeds {seeds}"]
    defaults = {f.name: f.default for f in setting_fields(wildcards.agent)}
    for key, value in sorted(train_settings(wildcards.env).items()):
        if key in OPERATIONAL_TRAIN_SETTINGS or key not in defaults or value is None:
            continue
        if key in LATER_TRAIN_SETTINGS and value == defaults[key]:
            continue
        name = key.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{name}" if value else f"--no-{name}")
        elif key in FLOAT_TRAIN_SETTINGS:
            # 1 and 1.0 are the same setting: one spelling, so neither reruns training
            args.append(f"--{name} {float(value)!r}")
        else:
            args.append(f"--{name} {value}")
    return " ".join(args)


def get_train_run_args(wildcards, output):
    """The run folder and the operational settings (checkpointing, compilation cache, live
    logging). Derived from the output (Snakemake excludes params computed from `output` from its
    params rerun trigger)."""
    settings = train_settings(wildcards.env)
    out_dir = os.path.dirname(output.curves)
    args = f"--out {out_dir} --checkpoint-every {settings['checkpoint_every']}"
    if COMPILATION_CACHE is not None:
        args += f" --compilation-cache {COMPILATION_CACHE}"
    if LIVE_LOG.enabled:  # config['logging']: operational, like the two above
        args += f" {LIVE_LOG.cli_args()}"
    return args


def _n_seeds(wildcards):
    return int(wildcards.last) - int(wildcards.first) + 1


def get_train_mem_mb(wildcards):
    res = config["resources"]["train"]
    per_seed = res["mem_mb_per_seed"]
    if per_seed == 0:
        # replay (obs, next_obs, action, reward, mask at float32) with 100-float rows as a
        # generous bound for the paper's tasks, doubled for the validation buffer
        settings = train_settings(wildcards.env)
        rows = settings["replay_size"] * (2 if settings["validation"] else 1)
        per_seed = math.ceil(rows * 100 * 4 / 1e6)
    return res["mem_mb_base"] + per_seed * _n_seeds(wildcards)


def get_train_runtime(wildcards):
    """Minutes: base + safety * the job's updates * the agent's FLOPs per update / GFLOP/s."""
    job = study.TrainJob(*(getattr(wildcards, k) for k in study.TrainJob._fields))
    return study.train_runtime_minutes(config, job)


# ----------------------------------------------------------------------------- analysis helpers


def analysis_settings(stage):
    """The analysis settings one stage reads (a params value: editing them reruns that stage
    and what depends on it, never training)."""
    analysis = config["analysis"]
    envs = {env: dict(values) for env, values in sorted(ENV_ANALYSIS.items())}
    if stage == "crossings":
        return {
            "envs": {e: {k: v[k] for k in ("j_min", "j_max", "max_step")} for e, v in envs.items()},
            "reset_interval": {
                "bro": config["train"]["reset_interval"] or None,
                "simbav2": None,
            },
            "preprocess": dict(analysis["preprocess"]),
            "thresholds": dict(analysis["thresholds"]),
            "bootstrap": dict(analysis["bootstrap"]),
            "batch_size": dict(analysis["batch_size"]),
        }
    if stage == "fits":
        return {"fits": dict(analysis["fits"]), "batch_size": dict(analysis["batch_size"])}
    if stage == "allocation":
        return {
            "envs": {e: {"delta": v["delta"]} for e, v in envs.items()},
            "compute": dict(analysis["compute"]),
            "budget": dict(analysis["budget"]),
            "fits": dict(analysis["fits"]),
        }
    if stage == "evaluation":
        return {
            "compute": dict(analysis["compute"]),
            "fits": dict(analysis["fits"]),
            "bootstrap": dict(analysis["bootstrap"]),
            "evaluation": dict(analysis["evaluation"]),
        }
    if stage == "proposal":
        return {
            "envs": {e: {"delta": v["delta"]} for e, v in envs.items()},
            "compute": dict(analysis["compute"]),
            "proposal": dict(analysis["proposal"]),
            # the width of a proposed critic size depends on the critic's depth
            "train": {"critic_depth": config["train"]["critic_depth"]},
        }
    if stage == "figures":
        # the figures redraw the fits' data: the same reset-dip rule and grid exclusions
        return {
            "figures": {
                **analysis["figures"],
                "reset_dips": analysis["preprocess"]["reset_dips"],
                "fit_exclude": analysis["fits"]["exclude"],
            }
        }
    raise KeyError(stage)


def get_curve_tables():
    """Inputs of the merged curve table: own runs and each available published zip."""
    tables = [TABLE["curves_own"]] if TRAIN_JOBS else []
    tables += [catalog.table_path("published", RESULTS, name=name) for name in PUBLISHED]
    return tables


def get_design_tables():
    if DESIGN_DIR is None:
        return []
    return sorted(str(p) for p in Path(DESIGN_DIR).glob("*.csv"))


def _own(setting):
    return bool(TRAIN_JOBS) and bool(config["train"][setting])


def _grid_has_batch_sweeps():
    """Some (env, agent, utd, width, lr) of the grid has >= min_batch_sizes batch sizes."""
    need = config["analysis"]["batch_size"]["min_batch_sizes"]
    counts = {}
    for job in TRAIN_JOBS:
        key = (job.env, job.agent, job.utd, job.width, job.lr)
        counts.setdefault(key, set()).add(job.batch_size)
    return any(len(sizes) >= need for sizes in counts.values())


# Which named outputs a study can make: from own runs (left) or from published zips (right; all
# of them are needed).
OWN_SOURCES = {
    "fit_errors": lambda: False,
    "allocation_strategies": lambda: False,
    "passive_critic_slopes": lambda: _own("passive_critic") and _own("validation"),
    "fig_batch_size": _grid_has_batch_sweeps,
    "fig_passive_critic": lambda: _own("passive_critic") and _own("validation"),
    "fig_overfitting": lambda: _own("validation"),
}
PUBLISHED_SOURCES = {
    "fit_errors": ["fitted_bs", "interpolated_bs", "extrapolated_bs"],
    "allocation_strategies": ["compute_optimal", "utd_scaling_bl", "n_scaling_bl"],
    "passive_critic_slopes": ["side_critic"],
    "fig_batch_size": ["model_scaling_const_lr"],
    "fig_passive_critic": ["side_critic"],
    "fig_overfitting": ["side_critic"],
}


def is_available(output):
    """Can this study make the named output? Decided when the DAG is built."""
    for name, spec in config["published"]["zips"].items():
        if output in spec["needed_by"] and name not in PUBLISHED:
            return False
    if output not in OWN_SOURCES:
        return True
    if OWN_SOURCES[output]():
        return True
    needed = PUBLISHED_SOURCES[output]
    if output == "allocation_strategies" and DESIGN_DIR is None:
        return False
    return bool(PUBLISHED) and all(name in PUBLISHED for name in needed)


def get_figure_inputs(wildcards):
    """Named tables each figure is drawn from (valuescale.catalog.FIGURES). fig_scaling and
    fig_data_efficiency draw the measured D_J at the batch size closest to B* (the points the
    fits used) from best_batch_size, which the crossings rule always writes."""
    return {key: TABLE[key] for key in catalog.FIGURES[wildcards.figure].inputs}


def get_final_output():
    """Every product of the study that its data allows."""
    tables = catalog.TABLES.values()
    products = [TABLE[t.key] for t in tables if t.final and not t.conditional]
    products += [TABLE[t.key] for t in tables if t.conditional and is_available(t.key)]
    for figure in FIGURES:
        if is_available(figure):
            products += [catalog.figure_path(figure, ext, RESULTS) for ext in ("pdf", "png")]
    return products
