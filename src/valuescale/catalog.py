"""The catalogue of the study's tables and figures: one home for each product's file name,
columns and inputs (docs/pipeline-api.md, "Catalogue").

Read by ``workflow/rules/common.smk`` and the rule files (output paths, the final targets, the
``figure`` wildcard and each figure's inputs), by :mod:`valuescale.pipeline` (the columns each
stage writes first and the columns it checks when it reads a table), by :mod:`valuescale.plots`
(which tables each figure is drawn from) and by ``benchmarks/analysis.py`` (where the stages
write). A test (``tests/test_pipeline.py``) checks that what the stages write agrees with it.

This module imports nothing heavy: Snakemake reads it while it builds the DAG.
"""

from __future__ import annotations

from dataclasses import dataclass

from valuescale.config import CURVE_COLUMNS as _ENGINE_CURVE_COLUMNS

#: Parameters of the data-efficiency law D_J(σ, N) = D_min + (a/σ)^alpha + (b/N)^beta (Eq. 7.1).
DE_PARAMS: tuple[str, ...] = ("D_min", "a_J", "alpha_J", "b_J", "beta_J")
#: Parameters of the batch-size law B*(σ, N) (Eq. 6.1).
BATCH_PARAMS: tuple[str, ...] = ("a_B", "alpha_B", "b_B", "beta_B")


@dataclass(frozen=True)
class Table:
    """One table (or file) the workflow writes.

    Attributes:
        key: the table's name (the rule's input/output name, the figure inputs' key).
        file: path relative to the study's ``results_dir``.
        stage: the workflow rule (and :mod:`valuescale.pipeline` function) that writes it.
        inputs: catalogue keys of the tables it is computed from.
        columns: the columns the stage always writes, first and in this order.
        extra_columns: columns written after those when the computation yields them (e.g. the
            bootstrap bounds of a fit that was bootstrapped), in this order.
        required: the columns a stage checks when it reads the table (a missing one is a
            ``ValueError`` naming the file and the column).
        conditional: made only when the study's data allow it (``is_available`` in common.smk).
        description: one line for the docs.
    """

    key: str
    file: str
    stage: str
    inputs: tuple[str, ...]
    columns: tuple[str, ...] = ()
    extra_columns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    conditional: bool = False
    final: bool = True
    description: str = ""

    @property
    def all_columns(self) -> tuple[str, ...]:
        return self.columns + self.extra_columns


@dataclass(frozen=True)
class Figure:
    """One figure, written as ``figures/<name>.pdf`` and ``figures/<name>.png``.

    Attributes:
        name: the figure's name (the ``figure`` wildcard).
        inputs: catalogue keys of the tables the workflow passes, in this order.
        optional: those of ``inputs`` the figure can be drawn without.
        description: what it shows (paper figure).
    """

    name: str
    inputs: tuple[str, ...]
    optional: tuple[str, ...] = ()
    description: str = ""

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k for k in self.inputs if k not in self.optional)

    @property
    def files(self) -> tuple[str, str]:
        """``(pdf, png)`` relative to the study's ``results_dir``."""
        return figure_file(self.name, "pdf"), figure_file(self.name, "png")


#: Where a figure is written, relative to the study's ``results_dir`` (PDF and PNG).
FIGURE_FILE = "figures/{name}.{ext}"


def figure_file(name: str, ext: str) -> str:
    """``figures/<name>.<ext>`` (``ext``: pdf or png)."""
    return FIGURE_FILE.format(name=name, ext=ext)


_CURVES = (*_ENGINE_CURVE_COLUMNS, "source", "passive_width", "passive_critic_params")
_CURVES_REQUIRED = (*_ENGINE_CURVE_COLUMNS, "source")
#: Hyperparameters that identify a configuration in the analysis tables (seeds are samples of it).
CONFIG_KEYS: tuple[str, ...] = (
    "env",
    "agent",
    "utd",
    "width",
    "critic_params",
    "batch_size",
    "lr",
    "source",
)
_CROSSINGS = (
    *CONFIG_KEYS,
    "threshold_idx",
    "threshold",
    "D",
    "D_std",
    "D_boot_nan_frac",
    "n_seeds",
    "seeds_remaining",
)
_FIT_RANGES = ("utd_min", "utd_max", "critic_params_min", "critic_params_max")
_LOGLINEAR = ("log_intercept", "slope_utd", "slope_critic_params")

_TABLES: tuple[Table, ...] = (
    Table(
        "curves_own",
        "tables/curves_own.parquet",
        stage="aggregate",
        inputs=(),
        columns=_CURVES,
        required=_CURVES_REQUIRED,
        final=False,
        description="learning curves of the study's own runs (source own), long format",
    ),
    Table(
        "published",
        "tables/published/{name}.parquet",
        stage="published_import",
        inputs=(),
        columns=_CURVES,
        required=_CURVES_REQUIRED,
        final=False,
        description="one published archive's learning curves, long format",
    ),
    Table(
        "curves",
        "tables/curves.parquet",
        stage="merge_curves",
        inputs=("curves_own", "published"),
        columns=_CURVES,
        required=_CURVES_REQUIRED,
        description="all learning curves of the study (own runs and published archives)",
    ),
    Table(
        "crossings",
        "tables/crossings.parquet",
        stage="crossings",
        inputs=("curves",),
        columns=(*_CROSSINGS, "D_boot", "reset_dips"),
        required=(
            "env",
            "agent",
            "utd",
            "critic_params",
            "batch_size",
            "lr",
            "source",
            "threshold_idx",
            "threshold",
            "D",
        ),
        description="data D_J to reach each threshold per configuration, with K bootstrap "
        "crossings (D_boot)",
    ),
    Table(
        "thresholds",
        "tables/thresholds.csv",
        stage="crossings",
        inputs=("curves",),
        columns=("env", "agent", "threshold_idx", "threshold"),
        required=("env", "threshold_idx", "threshold"),
        description="the return thresholds J of each (env, agent)",
    ),
    Table(
        "best_batch_size",
        "tables/best_batch_size.csv",
        stage="crossings",
        inputs=("curves",),
        columns=(
            "env",
            "agent",
            "source",
            "utd",
            "critic_params",
            "width",
            "lr",
            "B_star",
            "B_star_lo",
            "B_star_hi",
            "n_batch_sizes",
            "n_boot",
            "status",
        ),
        required=("env", "agent", "utd", "critic_params", "B_star"),
        description="best batch size B* per (σ, N) with its bootstrap interval",
    ),
    Table(
        "fits_batch_size",
        "tables/fits_batch_size.csv",
        stage="fits",
        inputs=("crossings", "best_batch_size"),
        columns=(
            "scope",
            "agent",
            "source",
            "basis",
            "level",
            *BATCH_PARAMS,
            "rel_error",
            "loglinear_rel_error",
            *_LOGLINEAR,
            "B_geomean",
            "n_points",
            "status",
            "reason",
        ),
        extra_columns=(
            *[f"{p}{s}" for p in BATCH_PARAMS for s in ("_lo", "_hi")],
            "loss",
            "loglinear_status",
            "n_at_edge",
        ),
        required=("scope", *BATCH_PARAMS, "status"),
        description="batch-size law B*(σ, N) (Eq. 6.1) and its log-linear baseline",
    ),
    Table(
        "fits_data_efficiency",
        "tables/fits_data_efficiency.csv",
        stage="fits",
        inputs=("crossings", "best_batch_size"),
        columns=(
            "scope",
            "agent",
            "source",
            "variant",
            "group",
            "envs",
            "threshold_idx",
            "threshold",
            *[f"{p}{s}" for p in DE_PARAMS for s in ("", "_lo", "_hi")],
            "loss",
            "n_points",
            "status",
            "reason",
        ),
        extra_columns=(
            *[f"{p}{s}" for p in _LOGLINEAR for s in ("", "_lo", "_hi")],
            "n_boot_ok",
            *_FIT_RANGES,
            "D_obs_min",
            "D_obs_max",
            "task_average",
            "norm_medians",
            "n_envs_at_threshold",
            "batch_choice",
        ),
        required=("scope", "variant", "threshold_idx", "threshold", *DE_PARAMS, "status"),
        description="data-efficiency law D_J(σ, N) (Eq. 7.1) per threshold and variant",
    ),
    Table(
        "compute_optimal",
        "tables/compute_optimal.csv",
        stage="allocation",
        inputs=("crossings", "fits_data_efficiency", "fits_batch_size"),
        columns=(
            "scope",
            "agent",
            "source",
            "variant",
            "threshold_idx",
            "threshold",
            "D_target",
            "utd_star",
            "critic_params_star",
            "compute_star",
            "k",
            "line_slope",
            "line_intercept",
            "status",
            "reason",
        ),
        extra_columns=("group",),
        required=("scope", "D_target", "utd_star", "critic_params_star"),
        description="compute-optimal (σ*, N*) per fit and target D_J",
    ),
    Table(
        "budget_optimal",
        "tables/budget_optimal.csv",
        stage="allocation",
        inputs=("crossings", "fits_data_efficiency", "fits_batch_size"),
        columns=(
            "scope",
            "agent",
            "source",
            "variant",
            "threshold_idx",
            "threshold",
            "delta",
            "budget",
            "utd",
            "critic_params",
            "D",
            "compute",
            "status",
            "reason",
            "D_line",
            "compute_line",
            "utd_derived",
            "critic_params_derived",
        ),
        extra_columns=("group",),
        required=("scope", "budget", "utd", "critic_params", "D", "compute", "status"),
        description="budget-optimal points (σ, N, D, C) per fit threshold",
    ),
    Table(
        "budget_fits",
        "tables/budget_fits.csv",
        stage="allocation",
        inputs=("crossings", "fits_data_efficiency", "fits_batch_size"),
        columns=(
            "scope",
            "agent",
            "source",
            "variant",
            "quantity",
            "slope",
            "intercept",
            "r2",
            "r2_fit",
            "r2_heldout",
            "method",
            "slope_direct",
            "intercept_direct",
            "r2_direct",
            "n_fit",
            "n_heldout",
            "budget_min",
            "budget_max",
            "status",
            "reason",
        ),
        required=("scope", "quantity", "slope", "intercept", "r2"),
        description="budget-optimal D*, C*, σ*, N* as log-log lines in the budget F",
    ),
    Table(
        "fit_errors",
        "tables/fit_errors.csv",
        stage="fit_errors",
        inputs=("crossings", "fits_data_efficiency", "best_batch_size", "fits_batch_size"),
        columns=(
            "quantity",
            "variant",
            "set",
            "agent",
            "fit_source",
            "eval_source",
            "scope",
            "mean_rel_error",
            "median_rel_error",
            "n",
            "n_envs",
        ),
        conditional=True,
        description="relative errors of the fits on fitted / interpolated / extrapolated runs",
    ),
    Table(
        "allocation_strategies",
        "tables/allocation_strategies.csv",
        stage="allocation_strategies",
        inputs=("crossings",),
        columns=(
            "strategy",
            "scope",
            "mean_ratio",
            "median_ratio",
            "n",
            "n_budgets",
            "n_not_reached",
            "source",
        ),
        conditional=True,
        description="data of σ-only and N-only scaling relative to compute-optimal (Table 1)",
    ),
    Table(
        "passive_critic_slopes",
        "tables/passive_critic_slopes.csv",
        stage="passive_critic_slopes",
        inputs=("curves",),
        columns=(
            "metric",
            "env",
            "agent",
            "against",
            "slope",
            "slope_min",
            "slope_max",
            "n_groups",
            "n_points",
        ),
        required=("env", "against", "slope"),
        conditional=True,
        description="log-log slopes of validation TD loss vs main and passive critic width, "
        "per agent",
    ),
    Table(
        "proposal",
        "proposal.yaml",
        stage="proposal",
        inputs=("fits_data_efficiency", "fits_batch_size", "compute_optimal", "budget_fits"),
        description="the compute-optimal runs to make next, as a config fragment (YAML)",
    ),
    Table(
        "summary",
        "summary.html",
        stage="summary",
        inputs=("fits_data_efficiency", "fits_batch_size"),
        description="the report's study summary page: cells by state, wall time and core-hours, "
        "the fitted laws with their confidence intervals (HTML; also reads each run's run.json)",
    ),
)

#: Every table of a study, by key, in the order of the final targets.
TABLES: dict[str, Table] = {t.key: t for t in _TABLES}

_FIGURES: tuple[Figure, ...] = (
    Figure(
        "fig_scaling",
        ("crossings", "best_batch_size", "fits_data_efficiency", "compute_optimal"),
        optional=("best_batch_size",),
        description="iso-D_J contours of the fitted law over (σ, N), measured D_J, "
        "compute-optimal points and line (paper Fig. 6)",
    ),
    Figure(
        "fig_batch_size",
        ("best_batch_size", "fits_batch_size"),
        description="best batch size B* vs σ and vs N with Eq. 6.1 (Figs. 5/11)",
    ),
    Figure(
        "fig_data_efficiency",
        ("crossings", "best_batch_size", "fits_data_efficiency"),
        optional=("best_batch_size",),
        description="D_J vs σ per N and vs N per σ with Eq. 7.1 (Figs. 16-17)",
    ),
    Figure(
        "fig_budget",
        ("budget_optimal", "budget_fits"),
        description="budget-optimal D*, C*, σ*, N* vs F (Figs. 7-8)",
    ),
    Figure(
        "fig_preprocessing",
        ("curves", "thresholds"),
        description="raw seeds, mean, dropped post-reset points, isotonic fit, thresholds, "
        "crossings (Fig. 10)",
    ),
    Figure(
        "fig_passive_critic",
        ("curves", "passive_critic_slopes"),
        description="passive critic's validation TD loss vs main and passive width (Fig. 4)",
    ),
    Figure(
        "fig_overfitting",
        ("curves",),
        description="train vs validation TD loss vs σ and vs N (Fig. 2)",
    ),
    Figure(
        "fig_learning_curves",
        ("curves", "thresholds"),
        description="seed-mean return ± standard error per (agent, env) and each of that "
        "agent's critic sizes N, coloured by σ",
    ),
)

#: Every figure of a study, by name, in the order of the final targets.
FIGURES: dict[str, Figure] = {f.name: f for f in _FIGURES}


def table_path(key: str, results_dir: str = ".", **wildcards: str) -> str:
    """Path of the table ``key`` under ``results_dir`` (``{name}`` filled from ``wildcards``)."""
    file = TABLES[key].file
    return f"{results_dir.rstrip('/')}/{file.format(**wildcards) if wildcards else file}"


def figure_path(name: str, ext: str, results_dir: str = ".") -> str:
    """Path of figure ``name`` as ``ext`` (pdf or png) under ``results_dir``."""
    return f"{results_dir.rstrip('/')}/{figure_file(name, ext)}"


def columns(key: str) -> list[str]:
    """The columns the stage of table ``key`` always writes, first and in order."""
    return list(TABLES[key].columns)


def required(key: str) -> list[str]:
    """The columns a stage checks when it reads table ``key``."""
    return list(TABLES[key].required)
