"""The compute-optimal runs to make next, from the fitted laws (method.md §3.7-3.8).

For every env with a usable data-efficiency fit (Eq. 7.1) and every budget F (FLOPs, with
``F = C_J + delta * D_J`` and ``C_J = k σ N D_J``):

1. **(σ*, N*)**: the threshold's law gives the most data-efficient allocation within F
   (:func:`valuescale.analysis.allocation.propose_allocation`: minimise D_J subject to
   ``k σ N D_J + delta D_J <= F``; the optimum lies on the compute-optimal line). A budget too
   small to reach that threshold falls back to the budget-optimal lines σ*(F), N*(F) fitted over
   all thresholds (``budget_fits.csv``; method ``budget_lines``).
2. **Width**: the BRO parameter count inverted,
   ``N = 2 (2 depth W^2 + (d_in + 3 + n_q + 6 depth) W + n_q)`` (depth 2, 100 quantiles:
   ``N = 2 (4 W^2 + (d_in + 115) W + 100)``), with ``d_in = obs_dim + act_dim`` of the env
   (:func:`input_dim`); SimbaV2 by log-log interpolation of its published width -> N table.
3. **Batch size**: the batch-size law (Eq. 6.1) of the env, else of its suite, else of all envs
   (``fits_batch_size.csv``; laws fitted to measured B* first, then laws fitted to the batch sizes
   the runs used), else its log-linear baseline, else the geometric mean of the batch sizes the
   fitted runs used.

Values are rounded to runnable settings: σ to an integer (two significant digits below 1),
width and batch size to multiples of 16 (the authors' design tables use the same rounding).

:func:`proposal_yaml` writes the proposals as a config fragment: a ``grid:`` list of blocks in the
format of ``workflow/schemas/config.schema.yaml`` (one block per proposal, with a comment line
holding the unrounded values), ready to paste into a study config.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from valuescale.analysis.allocation import (
    ComputeModel,
    budget_optimal,
    delta_for,
    propose_allocation,
    propose_from_budget_lines,
    width_from_params,
)
from valuescale.analysis.data_efficiency import DE_PARAMS, suite_of
from valuescale.analysis.fitting import predict_loglinear
from valuescale.analysis.ingest import SIMBAV2_CRITIC_PARAMS

log = logging.getLogger(__name__)

#: obs_dim + act_dim of the paper's envs (dm_control specs; HumanoidBench h1 tasks: 51 + 19).
INPUT_DIMS: dict[str, int] = {
    "h1-crawl-v0": 70,
    "h1-pole-v0": 70,
    "h1-stand-v0": 70,
    "humanoid-stand": 88,
    "humanoid-run": 88,
    "humanoid-walk": 88,
    "acrobot-swingup": 7,
    "cheetah-run": 23,
    "finger-turn": 14,
    "fish-swim": 29,
    "hopper-hop": 19,
    "quadruped-run": 90,
    "walker-run": 30,
    "dog-run": 261,
    "dog-trot": 261,
    "dog-stand": 261,
    "dog-walk": 261,
    "pendulum-swingup": 4,
    "cartpole-balance": 6,
    "cartpole-swingup": 6,
    "walker-walk": 30,
}
#: Agents the training engine can run; proposals for others are listed as comments only.
TRAINABLE_AGENTS: tuple[str, ...] = ("bro",)
ROUND_TO = 16
N_DEFAULT_BUDGETS = 5
#: A proposal whose σ or N lies more than this factor outside the (σ, N) range its law was fitted
#: on is not put in the grid (status ``out_of_range``); the paper extrapolates 2x in σ and 4x in N.
EXTRAPOLATION_FACTOR = 4.0
PROPOSAL_COLUMNS: list[str] = [
    "env",
    "agent",
    "source",
    "variant",
    "threshold_idx",
    "threshold",
    "budget",
    "utd",
    "critic_params",
    "width",
    "batch_size",
    "D",
    "compute",
    "method",
    "batch_rule",
    "utd_run",
    "width_run",
    "batch_size_run",
    "status",
    "reason",
]


@functools.cache
def _input_dim_from_env(env: str) -> int:
    from valuescale.envs import make_env  # builds the env once per name (cached)

    instance = make_env(env, 0)
    return int(instance.obs_dim + instance.act_dim)


def input_dim(env: str) -> int:
    """``d_in = obs_dim + act_dim`` of ``env``: from :data:`INPUT_DIMS`, else from the env's specs.

    Raises:
        ValueError: the env is unknown or cannot be built (e.g. HumanoidBench not installed).
    """
    if env in INPUT_DIMS:
        return INPUT_DIMS[env]
    try:
        return _input_dim_from_env(env)
    except Exception as exc:  # unknown name, missing optional package, ...
        raise ValueError(f"input dimension of env {env!r} is unknown: {exc}") from exc


def simbav2_width(critic_params: float) -> float:
    """SimbaV2 width of a critic with ``critic_params`` parameters (log-log interpolation of
    :data:`valuescale.analysis.ingest.SIMBAV2_CRITIC_PARAMS`, extrapolated linearly in log)."""
    widths = np.log(np.array(sorted(SIMBAV2_CRITIC_PARAMS), dtype=float))
    params = np.log(np.array([SIMBAV2_CRITIC_PARAMS[w] for w in sorted(SIMBAV2_CRITIC_PARAMS)]))
    x = np.log(float(critic_params))
    if x <= params[0] or x >= params[-1]:
        i = (0, 1) if x <= params[0] else (-2, -1)
        slope = (widths[i[1]] - widths[i[0]]) / (params[i[1]] - params[i[0]])
        return float(np.exp(widths[i[0]] + slope * (x - params[i[0]])))
    return float(np.exp(np.interp(x, params, widths)))


def width_for(
    agent: str, env: str, critic_params: float, depth: int = 2, n_quantiles: int = 100
) -> float:
    """Real-valued critic width W of an agent's critic with N parameters in ``env``."""
    if not (np.isfinite(critic_params) and critic_params > 0):
        return float("nan")
    if agent == "simbav2":
        return simbav2_width(critic_params)
    return float(width_from_params(critic_params, input_dim(env), depth, n_quantiles))


def round_utd(utd: float) -> float:
    """σ rounded to a runnable value: an integer from 1 up, two significant digits below 1."""
    if utd >= 0.95:
        return float(max(1, round(utd)))
    return float(f"{utd:.2g}")


def round_to_multiple(value: float, multiple: int = ROUND_TO) -> int:
    """Nearest positive multiple of ``multiple``."""
    return int(max(multiple, multiple * round(value / multiple)))


# --------------------------------------------------------------------------------------------
# Batch-size law lookup
# --------------------------------------------------------------------------------------------


def _finite(row: pd.Series, names: Sequence[str]) -> bool:
    return all(name in row and np.isfinite(float(row[name])) for name in names)


def _rule_from_row(
    row: pd.Series,
) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray] | None, str]:
    """Eq. 6.1 of a fit row if usable, else its log-linear baseline, else a constant batch size
    (rows with status ``constant``)."""
    where = f"{row.get('basis', 'B_star')} {row['scope']} ({row.get('source', '')})"
    if row.get("status") == "ok" and _finite(row, ("a_B", "alpha_B", "b_B", "beta_B")):
        p = {k: float(row[k]) for k in ("a_B", "alpha_B", "b_B", "beta_B")}

        def law(u: np.ndarray, n: np.ndarray, p: dict = p) -> np.ndarray:
            u, n = np.asarray(u, dtype=float), np.asarray(n, dtype=float)
            return p["a_B"] / (u ** p["alpha_B"] * (1.0 + p["b_B"] * n ** -p["beta_B"]))

        return law, f"eq6_1 {where}"
    loglin_ok = row.get("loglinear_status", "ok") == "ok"
    names = ("log_intercept", "slope_utd", "slope_critic_params")
    if loglin_ok and row.get("status") != "constant" and _finite(row, names):
        p = {k: float(row[k]) for k in names}

        def loglin(u: np.ndarray, n: np.ndarray, p: dict = p) -> np.ndarray:
            return predict_loglinear(p, {"utd": np.asarray(u), "critic_params": np.asarray(n)})

        return loglin, f"loglinear {where}"
    if row.get("status") == "constant" and _finite(row, ("B_geomean",)):
        value = float(row["B_geomean"])

        def constant(u: np.ndarray, n: np.ndarray, value: float = value) -> np.ndarray:
            return np.full(np.broadcast(np.asarray(u), np.asarray(n)).shape, value)

        return constant, f"constant B = {value:g} {where}"
    return None, ""


def batch_size_rule(
    fits_batch_size: pd.DataFrame | None, agent: str, source: str, env: str
) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray] | None, str]:
    """The batch-size rule B(σ, N) for an env's proposals, and a description of it.

    Candidate rows of ``fits_batch_size`` (same agent), most specific first: the same curve
    source before other sources; a law fitted to measured B* (``basis = B_star``) before one
    fitted to the batch sizes the runs used (``run_batch_size``); env before suite before
    ``all``. The first candidate with a usable rule wins (:func:`_rule_from_row`: Eq. 6.1, else
    its log-linear baseline, else the constant batch size of a ``constant`` row).

    Returns:
        ``(rule, description)``; ``rule`` is None when nothing is known.
    """
    if fits_batch_size is None or fits_batch_size.empty:
        return None, "no batch-size fits"
    rows = fits_batch_size
    if "agent" in rows:
        rows = rows[rows["agent"] == agent]
    if rows.empty:
        return None, f"no batch-size fits for agent {agent}"
    basis = rows["basis"] if "basis" in rows else pd.Series("B_star", index=rows.index)
    sources = rows["source"] if "source" in rows else pd.Series(source, index=rows.index)
    for same_source in (True, False):
        for b in ("B_star", "run_batch_size"):
            for scope in (env, suite_of(env), "all"):
                sel = rows[
                    (basis == b) & (rows["scope"] == scope) & ((sources == source) == same_source)
                ]
                for _, row in sel.iterrows():
                    rule, text = _rule_from_row(row)
                    if rule is not None:
                        return rule, text
    return None, f"no usable batch-size rule for {agent} {env}"


# --------------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------------


def _law_row(fits: pd.DataFrame, threshold_idx: int | None) -> tuple[pd.Series | None, str]:
    """The fit row driving an env's proposal: the given threshold, or the highest usable one.

    Degenerate fits are never used; the second value names those skipped (the requested
    threshold's, or those above the chosen one), or why there is no row.
    """
    ok = fits[fits["status"] == "ok"]
    degenerate = fits[fits["status"] == "degenerate"]
    if threshold_idx is not None:
        sel = ok[ok["threshold_idx"] == threshold_idx]
        skipped = degenerate[degenerate["threshold_idx"] == threshold_idx]
        if sel.empty:
            return None, f"no usable fit at threshold_idx {threshold_idx}" + _skipped_text(skipped)
        return sel.iloc[0], ""
    if ok.empty:
        return None, "no usable fit at any threshold" + _skipped_text(degenerate)
    row = ok.sort_values("threshold_idx").iloc[-1]
    skipped = degenerate[degenerate["threshold_idx"] > row["threshold_idx"]]
    return row, _skipped_text(skipped).lstrip("; ")


def _skipped_text(degenerate: pd.DataFrame) -> str:
    """``"; degenerate fit(s) skipped at threshold(s) #i (reason)"`` or ``""``."""
    if degenerate.empty:
        return ""
    which = ", ".join(
        f"#{int(r.threshold_idx)} ({r.reason})" for r in degenerate.itertuples(index=False)
    )
    return f"; degenerate fit(s) skipped at threshold(s) {which}"


def default_budgets(
    budget_fits: pd.DataFrame | None, law: Mapping[str, float], delta: float, k: float
) -> np.ndarray:
    """:data:`N_DEFAULT_BUDGETS` budgets spaced geometrically over the fitted budget range
    (``budget_min``..``budget_max`` of ``budget_fits``); without it, 1x to 16x the law's
    budget-optimal F*."""
    if budget_fits is not None and {"budget_min", "budget_max"} <= set(budget_fits.columns):
        lo = budget_fits["budget_min"].astype(float).min()
        hi = budget_fits["budget_max"].astype(float).max()
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo > 0:
            return np.geomspace(lo, hi, N_DEFAULT_BUDGETS)
    optimum = budget_optimal(law, delta, k)
    if optimum.status == "ok":
        return optimum.budget * np.geomspace(1.0, 16.0, N_DEFAULT_BUDGETS)
    return np.array([])


def propose_runs(
    fits_data_efficiency: pd.DataFrame,
    fits_batch_size: pd.DataFrame | None,
    budget_fits: pd.DataFrame | None,
    *,
    budgets: Sequence[float] = (),
    threshold_idx: int | None = None,
    delta: Callable[[str], float],
    k: float,
    variants: Sequence[str] = ("per_env", "shared"),
    critic_depth: int = 2,
    n_quantiles: int = 100,
) -> pd.DataFrame:
    """One proposal per (env, agent, fit source, budget): :data:`PROPOSAL_COLUMNS`.

    Args:
        fits_data_efficiency: ``fits_data_efficiency.csv`` (with ``source`` when several curve
            sources were fitted).
        fits_batch_size: ``fits_batch_size.csv`` (batch-size rules).
        budget_fits: ``budget_fits.csv`` (budget lines, fallback for small budgets; its
            ``budget_min``/``budget_max`` give the default budgets).
        budgets: budgets F in FLOPs; empty = :func:`default_budgets` per env.
        threshold_idx: threshold whose law drives the proposal; None = the highest usable one.
        delta: env -> FLOP cost of one env step.
        k: compute per (σ N D) (``flops_per_param_sample * batch``).
        variants: fit variants to use, in order of preference (per env rows only).
        critic_depth, n_quantiles: critic architecture for the width inversion.
    """
    fits = fits_data_efficiency.copy()
    if "source" not in fits:
        fits["source"] = ""
    fits = fits[fits["variant"].isin(list(variants))]
    rows: list[dict] = []
    for (agent, source, env), env_fits in fits.groupby(["agent", "source", "scope"], sort=True):
        law_row, why = None, "no fits"
        variant = ""
        for variant in variants:
            law_row, why = _law_row(env_fits[env_fits["variant"] == variant], threshold_idx)
            if law_row is not None:
                break
        base = {"env": env, "agent": agent, "source": source, "variant": variant}
        if why:
            log.warning("proposal %s / %s (%s, %s): %s", env, agent, source, variant, why)
        if law_row is None:
            rows.append({**base, "status": "failed", "reason": why})
            continue
        law = {name: float(law_row[name]) for name in DE_PARAMS}
        d = float(delta(str(env)))
        lines = None
        if budget_fits is not None and len(budget_fits):
            sel = budget_fits[(budget_fits["scope"] == env) & (budget_fits["agent"] == agent)]
            if "source" in sel:
                sel = sel[sel["source"] == source]
            if "variant" in sel:
                sel = sel[sel["variant"] == variant]
            lines = sel if len(sel) else None
        env_budgets = (
            np.asarray(budgets, dtype=float) if len(budgets) else default_budgets(lines, law, d, k)
        )
        rule, rule_text = batch_size_rule(fits_batch_size, str(agent), str(source), str(env))
        base.update(threshold_idx=int(law_row["threshold_idx"]), threshold=law_row["threshold"])
        ranges = tuple(
            float(law_row.get(c, np.nan))
            for c in ("utd_min", "utd_max", "critic_params_min", "critic_params_max")
        )
        for budget in env_budgets:
            row = _one_proposal(
                base, law, float(budget), d, k, lines, rule, rule_text, critic_depth, n_quantiles
            )
            if why and row.get("status") == "ok":  # say which higher thresholds were skipped
                row["reason"] = "; ".join(r for r in (row.get("reason"), why) if r)
            rows.append(_check_range(row, ranges))
    return pd.DataFrame(rows, columns=PROPOSAL_COLUMNS)


def _one_proposal(
    base: dict,
    law: Mapping[str, float],
    budget: float,
    delta: float,
    k: float,
    lines: pd.DataFrame | None,
    rule: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
    rule_text: str,
    critic_depth: int,
    n_quantiles: int,
) -> dict:
    row = {**base, "budget": budget, "batch_rule": rule_text}
    alloc = propose_allocation(law, np.array([budget]), delta, k=k).iloc[0]
    method = "threshold_law"
    utd, n, D, compute = alloc["utd"], alloc["critic_params"], alloc["D"], alloc["compute"]
    reason = "" if alloc["status"] == "ok" else str(alloc["reason"])
    if alloc["status"] != "ok" and lines is not None:
        line = propose_from_budget_lines(lines, np.array([budget]), delta).iloc[0]
        if np.isfinite(line["utd"]) and np.isfinite(line["critic_params"]):
            method = "budget_lines"
            utd, n, D, compute = line["utd"], line["critic_params"], line["D"], line["compute"]
            reason = f"threshold law: {reason}; used the budget-optimal lines"
    row.update(utd=utd, critic_params=n, D=D, compute=compute, method=method)
    if not (np.isfinite(utd) and np.isfinite(n) and utd > 0 and n > 0):
        row.update(status="failed", reason=reason or "no allocation")
        return row
    try:
        width = width_for(str(base["agent"]), str(base["env"]), float(n), critic_depth, n_quantiles)
    except ValueError as err:
        row.update(status="failed", reason=str(err))
        return row
    batch = float(rule(np.array(utd), np.array(n))) if rule is not None else float("nan")
    row.update(width=width, batch_size=batch)
    if not (np.isfinite(width) and np.isfinite(batch) and batch > 0):
        row.update(status="failed", reason=rule_text if rule is None else "no batch size")
        return row
    row.update(
        utd_run=round_utd(float(utd)),
        width_run=round_to_multiple(width),
        batch_size_run=round_to_multiple(batch),
        status="ok",
        reason=reason,
    )
    return row


def _check_range(row: dict, ranges: tuple[float, float, float, float]) -> dict:
    """Mark a proposal ``out_of_range`` when σ or N is beyond :data:`EXTRAPOLATION_FACTOR` times
    the fitted range (unknown ranges are not checked)."""
    if row.get("status") != "ok":
        return row
    utd_lo, utd_hi, n_lo, n_hi = ranges
    f = EXTRAPOLATION_FACTOR
    problems = []
    if np.isfinite(utd_lo) and not utd_lo / f <= row["utd"] <= utd_hi * f:
        problems.append(f"sigma {row['utd']:.3g} outside [{utd_lo / f:.3g}, {utd_hi * f:.3g}]")
    if np.isfinite(n_lo) and not n_lo / f <= row["critic_params"] <= n_hi * f:
        problems.append(f"N {row['critic_params']:.3g} outside [{n_lo / f:.3g}, {n_hi * f:.3g}]")
    if problems:
        row = {**row, "status": "out_of_range", "reason": "; ".join(problems)}
    return row


def _yaml_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def proposal_yaml(proposals: pd.DataFrame, header: Sequence[str] = ()) -> str:
    """Config fragment: a ``grid:`` list with one block per usable proposal of a trainable agent.

    Each block is preceded by a comment with the unrounded allocation; proposals of agents the
    engine cannot train, and failed ones, are listed as comments only.
    """
    lines = [f"# {h}" if h else "#" for h in header]
    ok = proposals[proposals["status"] == "ok"] if len(proposals) else proposals
    runnable = ok[ok["agent"].isin(TRAINABLE_AGENTS)] if len(ok) else ok
    blocks = []
    for row in runnable.itertuples(index=False):
        comment = (
            f"  # {row.env} / {row.agent} (fits on {row.source or 'all'}, {row.variant}, "
            f"threshold {row.threshold_idx}: J = {float(row.threshold):.4g}); "
            f"F = {row.budget:.3g} -> sigma = {row.utd:.3g}, N = {row.critic_params:.4g} "
            f"(W = {row.width:.1f}), B = {row.batch_size:.1f} [{row.batch_rule}], "
            f"D = {row.D:.4g}, C = {row.compute:.3g} [{row.method}]"
        )
        if isinstance(row.reason, str) and row.reason:
            comment += f"\n  # note: {row.reason}"
        block = {
            "envs": [str(row.env)],
            "agents": [str(row.agent)],
            "utd": [_yaml_number(row.utd_run)],
            "widths": [int(row.width_run)],
            "batch_sizes": [int(row.batch_size_run)],
        }
        text = yaml.safe_dump([block], default_flow_style=None, sort_keys=False).rstrip("\n")
        blocks.append(comment + "\n" + "\n".join("  " + t for t in text.splitlines()))
    if blocks:
        lines.append("grid:")
        lines.extend(blocks)
    else:
        lines.append("grid: []")
    others = proposals[~proposals.index.isin(runnable.index)] if len(proposals) else proposals
    if len(others):
        lines.append("")
        lines.append("# Not in the grid (agent not trainable by the engine, or no allocation):")
        for row in others.itertuples(index=False):
            if row.status in ("ok", "out_of_range"):
                note = "" if row.status == "ok" else f" (out of range: {row.reason})"
                lines.append(
                    f"#   {row.env} / {row.agent} ({row.source}): F = {row.budget:.3g} -> "
                    f"sigma = {row.utd_run:g}, width = {row.width_run}, "
                    f"batch size = {row.batch_size_run}{note}"
                )
            else:
                budget = (
                    ""
                    if not isinstance(row.budget, float) or math.isnan(row.budget)
                    else (f" F = {row.budget:.3g}:")
                )
                lines.append(f"#   {row.env} / {row.agent} ({row.source}):{budget} {row.reason}")
    return "\n".join(lines) + "\n"


def study_proposals(
    fits_data_efficiency: pd.DataFrame,
    fits_batch_size: pd.DataFrame | None,
    budget_fits: pd.DataFrame | None,
    *,
    budgets: Sequence[float],
    threshold_idx: int | None,
    deltas: Mapping[str, float],
    model: ComputeModel,
    critic_depth: int = 2,
    n_quantiles: int = 100,
    rounds: int = 4,
) -> pd.DataFrame:
    """The proposals of a study (:func:`propose_runs`) under its compute convention.

    Accounting convention: ``k = model.k``. Real-batch convention: each env's proposals are
    redone with ``k = flops_per_param_sample x B`` at the proposed (σ, N) (the median proposed
    batch size of the env), ``rounds`` fixed-point rounds (B changes slowly with σ and N).
    """

    def propose(fits: pd.DataFrame, k: float) -> pd.DataFrame:
        return propose_runs(
            fits,
            fits_batch_size,
            budget_fits,
            budgets=budgets,
            threshold_idx=threshold_idx,
            delta=lambda env: delta_for(env, deltas),
            k=k,
            critic_depth=critic_depth,
            n_quantiles=n_quantiles,
        )

    table = propose(fits_data_efficiency, model.k)
    if model.batch_convention != "real":
        return table
    for _ in range(rounds):
        frames = []
        for (agent, source, env), group in table.groupby(["agent", "source", "env"], sort=False):
            batch = float(np.nanmedian(group["batch_size"].to_numpy(float)))
            k = model.flops_per_param_sample * batch if np.isfinite(batch) else model.k
            sel = fits_data_efficiency[
                (fits_data_efficiency["agent"] == agent)
                & (fits_data_efficiency["source"] == source)
                & (fits_data_efficiency["scope"] == env)
            ]
            frames.append(propose(sel, k))
        table = pd.concat(frames, ignore_index=True) if frames else table
    return table


def proposal_header(model: ComputeModel) -> list[str]:
    """The comment lines at the top of ``proposal.yaml`` (how to use it, the compute model)."""
    batch = "B" if model.batch_convention == "real" else f"{model.accounting_batch:g}"
    return [
        "Compute-optimal runs proposed by the fitted laws (valuescale.pipeline.proposal).",
        "Paste the grid blocks into a study config (format: workflow/schemas/config.schema.yaml).",
        f"Budget F = C_J + delta * D_J in FLOPs, C_J = {model.flops_per_param_sample:g} x "
        f"{batch} x sigma x N x D_J.",
        "Each comment: the unrounded allocation (sigma, N, W, B, D, C) and how it was found.",
        "",
    ]
