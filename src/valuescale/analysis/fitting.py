"""Robust fitting of positive scaling laws in log space (method.md §3.5).

Every scaling-law fit of the analysis (batch size, learning rate, data efficiency) goes through
:func:`fit_scaled`:

* the loss is the mean squared error between the log prediction and the log target;
* each input is log-rescaled so that its data range maps onto ``[0.5, 2]``
  (``x~ = c * x**p``, see :class:`LogRescale`) and the target is divided by its mean;
* parameters are kept positive as ``softplus`` of unconstrained variables;
* several seeded starts (row 0 deterministic) are optimised together by a batched
  Levenberg-Marquardt on the same loss (one vectorised Jacobian per iteration for all starts); the
  best start is polished by scipy L-BFGS-B with the analytic gradient and bounds;
* parameter confidence intervals come from refitting every bootstrap resample of the targets
  (a ``[K, n]`` matrix) warm-started at the best fit, again by the batched Levenberg-Marquardt,
  and taking the 5th and 95th percentiles of the refitted parameters (in original units).
  (L-BFGS-B on the K stacked resamples needs thousands of iterations where LM needs tens:
  Gauss-Newton steps suit these small least-squares problems.)

A law is a :class:`ScaledProblem`: it binds the data, does the rescaling, evaluates the log
prediction and its Jacobian for a stack of parameter vectors, proposes starts, and maps fitted
parameters back to original units. Data problems (too few points, constant targets, non-finite
loss, optimiser failure, parameters at absurd values or overflowing in original units) never raise
out of the public fit functions: they return a :class:`FitResult` whose ``status`` is ``"failed"``
or ``"degenerate"`` with a ``reason``.

Degenerate fits (:class:`DegeneracyRules`; the law-specific rules, a collapsed exponent and a loss
far above the other thresholds', live with the data-efficiency law): a fit is ``degenerate``, never
``ok``, when

* a parameter sits at a bound of the optimiser: above :data:`ABSURD_HIGH` (rescaled units), an
  exponent below :data:`ABSURD_EXPONENT_LOW`, or a parameter that must stay positive (a prefactor:
  its term would vanish) below :data:`LOWER_BOUND_TOL`; a floor parameter (``D_min``) may be 0;
* the 5-95 % bootstrap interval of an exponent spans more than ``ci_decades`` decades (the data do
  not determine it), or fewer than half of the bootstrap refits give a usable law (with at least
  :data:`MIN_BOOT_OK` resamples). Prefactors are not judged by their interval: in ``(a / x)**alpha`` the
  interval of ``log a`` is the term's own divided by ``alpha``, so it grows without bound as
  ``alpha`` shrinks even when the term itself is well determined.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_DEGENERATE = "degenerate"

# The data range of every input is mapped log-linearly onto [RESCALE_LO, RESCALE_HI].
RESCALE_LO = 0.5
RESCALE_HI = 2.0
# Unconstrained variables are bounded so that softplus(u) stays in [~1e-22, UPPER_BOUND].
U_LOWER = -50.0
UPPER_BOUND = 60.0
# A fitted parameter (in rescaled units) above ABSURD_HIGH or an exponent below ABSURD_EXPONENT_LOW
# marks the fit as degenerate.
ABSURD_HIGH = 40.0
ABSURD_EXPONENT_LOW = 1e-3
# A non-floor parameter (a prefactor) below this (rescaled units) sits at the optimiser's lower
# bound softplus(U_LOWER) ~ 2e-22: its term vanishes from the law.
LOWER_BOUND_TOL = 1e-9
# Percentiles of the bootstrap refits reported as ``_lo`` / ``_hi``.
CI_PERCENTILES = (5.0, 95.0)
# Fewer usable bootstrap refits than this leave the confidence interval NaN.
MIN_BOOT_OK = 10


@dataclass(frozen=True)
class DegeneracyRules:
    """When a converged fit is reported ``degenerate`` instead of ``ok`` (config
    ``analysis.fits.degenerate``).

    Attributes:
        ci_decades: an exponent whose 5-95 % bootstrap interval spans more than this many
            decades (``log10(hi / lo)``) is not determined by the data.
        collapse_span: a term ``(a / x)**alpha`` whose factor changes by less than this in log
            units over the data range of ``x`` (``alpha * ln(x_max / x_min) < collapse_span``;
            0.2 = a change under 22 %) ...
        d_min_fraction: ... while ``D_min`` is below this fraction of the smallest measured D,
            stands in for the missing ``D_min``: the exponent has collapsed
            (:func:`valuescale.analysis.data_efficiency.flag_degenerate`).
        loss_factor: a fit whose loss exceeds this multiple of the median loss of the same law
            over the thresholds (same agent, source, variant, scope) fits its data far worse than
            the others (data-efficiency fits only; at least 3 thresholds) ...
        loss_floor: ... with the median taken as at least this (0.0025: a 5 % rms log error, the
            scatter that D measured at a finite evaluation interval has anyway), so that a set of
            near-exact fits does not make an ordinary one an outlier.
        min_effect: a term whose input changes the fitted D by less than this in log units over
            the whole data range (σ from its smallest to its largest value at the largest N, N
            likewise at the largest σ; 0.02 = 2 %) is absent from the data.
    """

    ci_decades: float = 2.0
    collapse_span: float = 0.2
    d_min_fraction: float = 0.01
    loss_factor: float = 5.0
    loss_floor: float = 0.0025
    min_effect: float = 0.02

    @classmethod
    def from_settings(cls, spec: Mapping[str, object] | None) -> DegeneracyRules:
        """Rules from a ``analysis.fits.degenerate`` mapping (missing keys: the defaults).

        Raises:
            ValueError: an unknown key or a non-positive value, naming it.
        """
        spec = dict(spec or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(
                f"analysis.fits.degenerate: unknown key(s) {unknown}; known: {sorted(known)}"
            )
        values = {}
        for key, value in spec.items():
            number = float(value)  # type: ignore[arg-type]
            if not number > 0:
                raise ValueError(f"analysis.fits.degenerate.{key} must be > 0, got {value!r}")
            values[key] = number
        return cls(**values)


class FitDataError(Exception):
    """Raised inside a fit when the data cannot support the law; turned into a FitResult."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class FitResult:
    """Outcome of one fit.

    Attributes:
        params: fitted parameters in original units (NaN when the fit failed).
        loss: mean squared error of log prediction vs log target on the fitted points.
        status: ``"ok"``, ``"failed"`` (no usable fit) or ``"degenerate"`` (a fit exists but
            the data do not determine it: constant target, parameters at absurd values, ...).
        reason: empty for ``ok``; otherwise why.
        n: number of points the fit used.
        lo, hi: 5th / 95th percentiles of the bootstrap refits (NaN without bootstrap).
        n_boot_ok: bootstrap refits that converged to a usable fit.
        n_boot: bootstrap resamples given.
    """

    params: dict[str, float]
    loss: float
    status: str
    reason: str
    n: int
    lo: dict[str, float] = field(default_factory=dict)
    hi: dict[str, float] = field(default_factory=dict)
    n_boot_ok: int = 0
    n_boot: int = 0

    @property
    def ok(self) -> bool:
        """True when the fit is usable."""
        return self.status == STATUS_OK

    def row(self) -> dict[str, float | str | int]:
        """Flat dict for a table: every parameter with ``_lo`` / ``_hi``, loss, status, reason."""
        out: dict[str, float | str | int] = {}
        for name, value in self.params.items():
            out[name] = value
            out[f"{name}_lo"] = self.lo.get(name, np.nan)
            out[f"{name}_hi"] = self.hi.get(name, np.nan)
        out.update(
            loss=self.loss,
            status=self.status,
            reason=self.reason,
            n_points=self.n,
            n_boot_ok=self.n_boot_ok,
            n_boot=self.n_boot,
        )
        return out


def failed_result(names: Sequence[str], status: str, reason: str, n: int = 0) -> FitResult:
    """A FitResult with NaN parameters and the given status / reason."""
    nan = dict.fromkeys(names, np.nan)
    return FitResult(dict(nan), np.nan, status, reason, n, dict(nan), dict(nan))


@dataclass(frozen=True)
class LogRescale:
    """Maps ``[x_min, x_max]`` log-linearly onto ``[0.5, 2]``: ``x~ = c * x**p``.

    For a power-law term this is a change of units that the law absorbs exactly, so fitted
    parameters map back to original units in closed form (:func:`unscale_power_term`).
    """

    log_min: float
    log_max: float

    @classmethod
    def from_values(cls, x: np.ndarray, what: str = "input") -> LogRescale:
        """Rescaling for the finite positive values of ``x``.

        Raises:
            FitDataError: if ``x`` has no positive values or takes a single value.
        """
        x = np.asarray(x, dtype=float)
        x = x[np.isfinite(x) & (x > 0)]
        if x.size == 0:
            raise FitDataError(STATUS_FAILED, f"{what} has no finite positive values")
        log_min, log_max = float(np.log(x.min())), float(np.log(x.max()))
        if log_max - log_min < 1e-9:
            raise FitDataError(STATUS_DEGENERATE, f"{what} takes a single value ({x[0]:g})")
        return cls(log_min, log_max)

    @property
    def p(self) -> float:
        """Exponent of the rescaling."""
        return float(np.log(RESCALE_HI / RESCALE_LO) / (self.log_max - self.log_min))

    @property
    def log_c(self) -> float:
        """Log of the prefactor of the rescaling."""
        return float(np.log(RESCALE_LO) - self.p * self.log_min)

    def log_apply(self, x: np.ndarray) -> np.ndarray:
        """``log x~`` for original ``x``."""
        return self.log_c + self.p * np.log(np.asarray(x, dtype=float))


def unscale_power_term(
    a_scaled: np.ndarray, alpha_scaled: np.ndarray, rescale: LogRescale, log_y_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Original-unit ``(a, alpha)`` of a term ``s * (a~ / x~)**alpha~ = (a / x)**alpha``.

    With ``x~ = c x**p`` and target scale ``s``: ``alpha = p alpha~`` and
    ``log a = (log s / alpha~ + log a~ - log c) / p``.
    """
    alpha_scaled = np.asarray(alpha_scaled, dtype=float)
    log_a = (
        np.asarray(log_y_scale) / alpha_scaled + np.log(np.asarray(a_scaled)) - rescale.log_c
    ) / rescale.p
    return np.exp(log_a), rescale.p * alpha_scaled


def softplus(u: np.ndarray) -> np.ndarray:
    """``log(1 + exp(u))``, computed stably."""
    return np.logaddexp(0.0, u)


def inverse_softplus(theta: np.ndarray) -> np.ndarray:
    """``u`` with ``softplus(u) = theta`` for ``theta > 0``."""
    theta = np.asarray(theta, dtype=float)
    return np.where(theta > 30.0, theta, np.log(np.expm1(np.minimum(theta, 30.0))))


def sigmoid(u: np.ndarray) -> np.ndarray:
    """Derivative of softplus."""
    return 0.5 * (1.0 + np.tanh(0.5 * u))


class ScaledProblem(ABC):
    """A positive law bound to its data, in rescaled units.

    Subclasses set ``names`` (original-unit parameter names, in the order of the parameter
    vector), ``exponents`` (indices of exponent parameters), ``log_y_offset`` (``log`` of the
    target scale of every point: ``log y~ = log y - log_y_offset``) and implement the methods.
    """

    names: tuple[str, ...]
    exponents: tuple[int, ...] = ()
    #: Indices of parameters that may legitimately reach 0 (a floor such as ``D_min``).
    floor_params: tuple[int, ...] = ()
    log_y_offset: np.ndarray

    @abstractmethod
    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log prediction in rescaled units for a stack of parameter vectors.

        Args:
            theta: ``[S, P]`` positive parameters (rescaled units).

        Returns:
            ``(log_pred [S, n], jacobian [S, n, P])`` with ``jacobian = d log_pred / d theta``.
        """

    @abstractmethod
    def starts(self, rng: np.random.Generator, n_starts: int) -> np.ndarray:
        """``[n_starts, P]`` positive starting points (rescaled units); row 0 deterministic."""

    @abstractmethod
    def unscale(self, theta: np.ndarray) -> np.ndarray:
        """``[S, P]`` rescaled parameters -> ``[S, P]`` parameters in original units."""

    @property
    def n_params(self) -> int:
        """Number of parameters P."""
        return len(self.names)

    def log_predict_blocks(
        self, theta: np.ndarray, blocks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`log_predict` for the optimiser's blocks ``blocks`` (their indices); a single
        problem is the same for every block, a stack (:meth:`stack`) picks each block's data."""
        return self.log_predict(theta)

    def stack_key(self) -> object:
        """Problems with equal keys (not None) can be optimised as one :meth:`stack`; None: this
        problem is optimised alone."""
        return None

    @classmethod
    def stack(cls, problems: Sequence[ScaledProblem], n_blocks: Sequence[int]) -> ScaledProblem:
        """One problem over the blocks of several (``n_blocks[i]`` blocks of ``problems[i]``, in
        order) whose :meth:`log_predict_blocks` gives each block its own problem's prediction,
        computed exactly as that problem computes it. Only for problems of equal
        :meth:`stack_key`."""
        raise NotImplementedError(f"{cls.__name__} cannot be stacked")


@dataclass
class _StackedOutcome:
    theta: np.ndarray  # [S, P] fitted parameters (rescaled units)
    loss: np.ndarray  # [S] mean squared log error per block (NaN for empty blocks)
    success: np.ndarray  # [S] bool: the optimiser converged for this block
    message: str


def _block_weights(mask: np.ndarray) -> np.ndarray:
    """``1 / n_valid`` per valid entry, so that ``sum(w r^2)`` is the mean squared error."""
    return mask / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)


def _block_loss(
    problem: ScaledProblem, theta: np.ndarray, log_y: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """``[S]`` mean squared log error of every block."""
    log_pred, _ = problem.log_predict(theta)
    resid = np.where(mask, log_pred - log_y, 0.0)
    loss = np.sum(_block_weights(mask) * resid * resid, axis=1)
    loss[mask.sum(axis=1) == 0] = np.nan
    return loss


def _levenberg_marquardt(
    problem: ScaledProblem,
    log_y: np.ndarray,
    mask: np.ndarray,
    theta0: np.ndarray,
    *,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> _StackedOutcome:
    """Batched Levenberg-Marquardt on S independent blocks, in the softplus variables ``u``.

    Minimises the same loss as :func:`_lbfgsb_polish` (mean squared log error per block) with
    a damped Gauss-Newton step and its own damping ``lam`` per block; one Jacobian evaluation of
    the still-active blocks per iteration. A block stops when a near-Gauss-Newton step
    (``lam < 1``) gains less than ``tol`` of its loss, or its gradient vanishes. Used to explore
    the starts and to refit bootstrap resamples, where it needs tens of iterations against
    thousands for L-BFGS-B on the stacked problem.
    """
    n_blocks, n_params = theta0.shape
    u_upper = float(inverse_softplus(np.array(UPPER_BOUND)))
    sqrt_w_all = np.sqrt(_block_weights(mask))
    target_all = np.where(mask, log_y, 0.0)
    eye = np.eye(n_params)

    def evaluate(
        u: np.ndarray, sqrt_w: np.ndarray, mask_w: np.ndarray, target: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        log_pred, jac = problem.log_predict_blocks(softplus(u), rows)
        resid = sqrt_w * np.where(mask_w, log_pred - target, 0.0)
        jac_u = sqrt_w[:, :, None] * jac * sigmoid(u)[:, None, :]
        loss = np.sum(resid * resid, axis=1)
        bad = ~np.isfinite(loss + jac_u.sum(axis=(1, 2)))
        loss[bad] = np.inf
        resid[bad] = 0.0
        jac_u[bad] = 0.0
        return loss, resid, jac_u

    u_out = np.clip(inverse_softplus(np.clip(theta0, 1e-12, UPPER_BOUND)), U_LOWER, u_upper)
    loss_out, resid, jac_u = evaluate(u_out, sqrt_w_all, mask, target_all, np.arange(n_blocks))
    converged = np.zeros(n_blocks, dtype=bool)
    # The working set: the still-active blocks' state, compacted (gathered once per change of
    # the set rather than every iteration); each block's arithmetic is the same as one at a time.
    idx = np.flatnonzero(np.isfinite(loss_out))
    u, loss, resid, jac_u = u_out[idx], loss_out[idx], resid[idx], jac_u[idx]
    sqrt_w, mask_w, target = sqrt_w_all[idx], mask[idx], target_all[idx]
    lam = np.full(idx.size, 1e-3)
    for _ in range(max_iter):
        if idx.size == 0:
            break
        jac_t = jac_u.transpose(0, 2, 1)
        grad = (jac_t @ resid[:, :, None])[:, :, 0]
        hess = jac_t @ jac_u
        diag = np.diagonal(hess, axis1=1, axis2=2)
        damping = lam[:, None] * (diag + 1e-9 * (diag.max(axis=1, keepdims=True) + 1e-12))
        system = hess + damping[:, :, None] * eye
        try:
            step = -np.linalg.solve(system, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:  # some block's system is singular: solve block by block
            step = _blockwise_step(system, grad)
        step = np.where(np.isfinite(step), step, 0.0)
        u_new = np.minimum(np.maximum(u + step, U_LOWER), u_upper)  # np.clip, cheaper
        loss_new, resid_new, jac_new = evaluate(u_new, sqrt_w, mask_w, target, idx)
        better = loss_new <= loss
        gain = np.where(better, loss - loss_new, 0.0)
        if better.all():  # every step kept: take the new arrays whole
            u, resid, jac_u, loss = u_new, resid_new, jac_new, loss_new
        else:
            u[better] = u_new[better]
            resid[better] = resid_new[better]
            jac_u[better] = jac_new[better]
            loss[better] = loss_new[better]
        small_gain = better & (lam < 1.0) & (gain <= tol * loss + 1e-300)
        flat = np.max(np.abs(grad), axis=1) <= 1e-12
        lam = np.where(better, np.maximum(lam / 3.0, 1e-12), lam * 4.0)
        stuck = lam >= 1e12
        done = small_gain | flat | stuck
        if done.any():
            finished = idx[done]
            u_out[finished] = u[done]
            loss_out[finished] = loss[done]
            converged[finished] = True
            keep = ~done
            idx, u, loss, resid, jac_u = idx[keep], u[keep], loss[keep], resid[keep], jac_u[keep]
            sqrt_w, mask_w, target, lam = sqrt_w[keep], mask_w[keep], target[keep], lam[keep]
    # blocks still active after max_iter keep their last state (and count as converged)
    u_out[idx] = u
    loss_out[idx] = loss
    converged[idx] = True
    theta = softplus(u_out)
    out_loss = np.where(np.isfinite(loss_out), loss_out, np.nan)
    out_loss[mask.sum(axis=1) == 0] = np.nan
    return _StackedOutcome(theta, out_loss, converged, "levenberg-marquardt")


def _blockwise_step(system: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """The damped Gauss-Newton step of each block, a scaled gradient step where its system is
    singular (so that one block's singular system leaves the others' steps alone)."""
    step = np.empty_like(grad)
    for b in range(system.shape[0]):
        try:
            step[b] = -np.linalg.solve(system[b : b + 1], grad[b : b + 1, :, None])[0, :, 0]
        except np.linalg.LinAlgError:
            step[b] = -grad[b] / np.maximum(np.diagonal(system[b]), 1e-12)
    return step


def _levenberg_marquardt_many(
    jobs: Sequence[tuple[ScaledProblem, np.ndarray, np.ndarray, np.ndarray]],
) -> list[_StackedOutcome]:
    """:func:`_levenberg_marquardt` of every ``(problem, log_y, mask, theta0)`` job, the jobs
    whose problems share a :meth:`ScaledProblem.stack_key` (and point count) in one call.

    Each block's arithmetic is that of a call of its own (every operation of the optimiser acts
    on each block separately), so the outcomes are those of one call per job; the batched calls
    only pay the per-iteration overhead once for all of them.
    """
    out: list[_StackedOutcome | None] = [None] * len(jobs)
    groups: dict[object, list[int]] = {}
    for j, (problem, log_y, _, theta0) in enumerate(jobs):
        key = problem.stack_key()
        if key is None:
            groups[("alone", j)] = [j]
        else:
            groups.setdefault((key, log_y.shape[1], theta0.shape[1]), []).append(j)
    for members in groups.values():
        if len(members) == 1:
            problem, log_y, mask, theta0 = jobs[members[0]]
            out[members[0]] = _levenberg_marquardt(problem, log_y, mask, theta0)
            continue
        sizes = [jobs[j][3].shape[0] for j in members]
        problem = type(jobs[members[0]][0]).stack([jobs[j][0] for j in members], sizes)
        whole = _levenberg_marquardt(
            problem,
            np.concatenate([jobs[j][1] for j in members]),
            np.concatenate([jobs[j][2] for j in members]),
            np.concatenate([jobs[j][3] for j in members]),
        )
        start = 0
        for j, size in zip(members, sizes, strict=True):
            part = slice(start, start + size)
            out[j] = _StackedOutcome(
                whole.theta[part], whole.loss[part], whole.success[part], whole.message
            )
            start += size
    return out  # type: ignore[return-value]


def _lbfgsb_polish(
    problem: ScaledProblem,
    log_y: np.ndarray,
    mask: np.ndarray,
    theta0: np.ndarray,
    *,
    maxiter: int,
) -> _StackedOutcome:
    """scipy L-BFGS-B on ``sum_s mean_i mask (log_pred - log_y)^2`` with analytic gradient.

    ``log_y``/``mask`` are ``[S, n]``, ``theta0`` ``[S, P]``; blocks share no parameters. Used
    with one block to polish the best start.
    """
    n_blocks, n_params = theta0.shape
    weights = _block_weights(mask)
    target = np.where(mask, log_y, 0.0)

    def objective(u_flat: np.ndarray) -> tuple[float, np.ndarray]:
        u = u_flat.reshape(n_blocks, n_params)
        log_pred, jac = problem.log_predict(softplus(u))
        resid = np.where(mask, log_pred - target, 0.0)
        value = float(np.sum(weights * resid * resid))
        if not np.isfinite(value):
            return 1e30, np.zeros_like(u_flat)
        grad_theta = 2.0 * np.einsum("sn,snp->sp", weights * resid, jac)
        grad_u = grad_theta * sigmoid(u)
        return value, np.nan_to_num(grad_u.ravel(), nan=0.0, posinf=0.0, neginf=0.0)

    u_upper = float(inverse_softplus(np.array(UPPER_BOUND)))
    u0 = np.clip(inverse_softplus(np.clip(theta0, 1e-12, UPPER_BOUND)), U_LOWER, u_upper).ravel()
    res = minimize(
        objective,
        u0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(U_LOWER, u_upper)] * u0.size,
        options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": 1e-15, "gtol": 1e-10},
    )
    theta = softplus(res.x.reshape(n_blocks, n_params))
    loss = _block_loss(problem, theta, log_y, mask)
    # An ABNORMAL line search at an exact optimum is harmless; the gradient check judges it.
    success = bool(res.success) or "ABNORMAL" in str(res.message)
    return _StackedOutcome(theta, loss, np.full(n_blocks, success), str(res.message))


def _gradient_small(
    problem: ScaledProblem, log_y: np.ndarray, mask: np.ndarray, theta: np.ndarray
) -> bool:
    """True if the loss gradient (w.r.t. the softplus variables) at ``theta`` is ~0."""
    log_pred, jac = problem.log_predict(theta[None, :])
    resid = np.where(mask, log_pred[0] - log_y, 0.0)
    u = inverse_softplus(theta)
    grad = 2.0 * (resid @ jac[0]) / mask.sum() * sigmoid(u)
    return bool(np.all(np.isfinite(grad)) and np.max(np.abs(grad)) < 1e-6)


def _absurd_flags(
    problem: ScaledProblem, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The absurdity rules on rows ``theta`` ``[S, P]`` (rescaled units): ``[S]`` non-finite
    rows, and ``[S, P]`` parameters above ``ABSURD_HIGH``, exponents below
    ``ABSURD_EXPONENT_LOW``, other non-floor parameters below ``LOWER_BOUND_TOL``."""
    nonfinite = ~np.all(np.isfinite(theta), axis=1)
    high = theta > ABSURD_HIGH
    is_exponent = np.isin(np.arange(problem.n_params), list(problem.exponents))
    skip = set(problem.exponents) | set(problem.floor_params)
    is_bounded = np.isin(np.arange(problem.n_params), list(skip), invert=True)
    low = is_exponent & (theta < ABSURD_EXPONENT_LOW)
    at_bound = is_bounded & (theta < LOWER_BOUND_TOL)
    return nonfinite, high, low, at_bound


def _absurd_reason(problem: ScaledProblem, theta: np.ndarray) -> str:
    """Why ``theta`` (one vector, rescaled units) is absurd, or ``""``."""
    nonfinite, high, low, at_bound = (f[0] for f in _absurd_flags(problem, theta[None, :]))
    if nonfinite:
        return "non-finite parameters"
    messages = (
        (high, "parameter(s) {} at absurd values (diverged)"),
        (low, "exponent(s) {} collapsed to ~0 (term not identified)"),
        (at_bound, "parameter(s) {} at the lower bound (term vanishes)"),
    )
    for flags, message in messages:
        if flags.any():
            return message.format(", ".join(np.asarray(problem.names)[flags]))
    return ""


def _sane_rows(problem: ScaledProblem, theta: np.ndarray) -> np.ndarray:
    """``[S]`` bool: the rows of ``theta`` ``[S, P]`` for which :func:`_absurd_reason` is ``""``."""
    nonfinite, high, low, at_bound = _absurd_flags(problem, theta)
    return ~nonfinite & ~(high | low | at_bound).any(axis=1)


def _ci_reason(
    problem: ScaledProblem, lo: Mapping[str, float], hi: Mapping[str, float], decades: float
) -> str:
    """Why the bootstrap intervals of the exponents leave them undetermined, or ``""``."""
    wide = []
    for i in problem.exponents:
        name = problem.names[i]
        low, high = float(lo.get(name, np.nan)), float(hi.get(name, np.nan))
        if not (np.isfinite(low) and np.isfinite(high)) or low <= 0:
            continue
        span = float(np.log10(high / low))
        if span > decades:
            wide.append(f"{name} in [{low:.3g}, {high:.3g}] ({span:.1f} decades)")
    if not wide:
        return ""
    return (
        f"exponent not determined: 5-95 % bootstrap interval {'; '.join(wide)} "
        f"spans more than {decades:g} decades"
    )


def _scaled_log_targets(problem: ScaledProblem, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log y~, mask)`` for targets ``y`` (any leading shape; last axis = points)."""
    mask = np.isfinite(y) & (y > 0)
    log_y = np.where(mask, np.log(np.where(mask, y, 1.0)) - problem.log_y_offset, 0.0)
    return log_y, mask


def fit_scaled(
    problem: ScaledProblem,
    y: np.ndarray,
    y_boot: np.ndarray | None = None,
    *,
    n_starts: int = 8,
    seed: int = 0,
    maxiter: int = 2000,
    rules: DegeneracyRules | None = None,
) -> FitResult:
    """Fit ``problem`` to targets ``y`` (original units), optionally with bootstrap CIs.

    All ``n_starts`` seeded starts are first optimised together by a batched Levenberg-Marquardt
    on the log loss; the best one is then polished by scipy L-BFGS-B (analytic gradient, softplus
    variables, bounds keeping parameters in ``[~0, UPPER_BOUND]``).

    Args:
        problem: the law bound to its inputs.
        y: ``[n]`` targets; non-finite or non-positive entries are ignored.
        y_boot: optional ``[K, n]`` resampled targets (NaN = missing in that resample). Each row
            is refitted, warm-started at the best fit; refits with too few points, non-finite
            loss or absurd parameters are dropped before taking percentiles.
        n_starts: number of seeded starts (row 0 of ``problem.starts`` is deterministic).
        seed: seed of the random starts.
        maxiter: L-BFGS-B iteration limit.
        rules: when a converged fit is ``degenerate`` (default :class:`DegeneracyRules`).

    Returns:
        A :class:`FitResult`; never raises for data problems.
    """
    return fit_scaled_many(
        [(problem, y, y_boot)], n_starts=n_starts, seed=seed, maxiter=maxiter, rules=rules
    )[0]


def fit_scaled_many(
    fits: Sequence[tuple[ScaledProblem, np.ndarray, np.ndarray | None]],
    *,
    n_starts: int = 8,
    seed: int = 0,
    maxiter: int = 2000,
    rules: DegeneracyRules | None = None,
) -> list[FitResult]:
    """:func:`fit_scaled` of every ``(problem, y, y_boot)``, with the same results.

    The Levenberg-Marquardt runs (starts, bootstrap refits) of problems that can be stacked
    (:meth:`ScaledProblem.stack_key`, e.g. the data-efficiency law at every threshold of an
    env) run as one batched optimisation each (:func:`_levenberg_marquardt_many`): the cost of a
    fit is mostly the optimiser's per-iteration overhead, paid once per batch instead of once
    per fit. The L-BFGS-B polish runs per fit.
    """
    rules = rules or DegeneracyRules()
    results: list[FitResult | None] = [None] * len(fits)
    # 1. targets and starts of every fit with enough data
    todo = []  # (index, problem, log_y, mask, n, theta0)
    for i, (problem, y, _) in enumerate(fits):
        names, n_params = problem.names, problem.n_params
        log_y, mask = _scaled_log_targets(problem, np.asarray(y, dtype=float))
        n = int(mask.sum())
        if n <= n_params:
            why = f"{n} usable points for {n_params} parameters"
            results[i] = failed_result(names, STATUS_FAILED, why, n)
        elif np.ptp(log_y[mask] + problem.log_y_offset[mask]) < 1e-9:
            results[i] = failed_result(names, STATUS_DEGENERATE, "target is constant", n)
        else:
            theta0 = problem.starts(np.random.default_rng(seed), max(1, n_starts))
            todo.append((i, problem, log_y, mask, n, theta0))
    # 2. all starts, batched
    explored_all = _levenberg_marquardt_many(
        [
            (
                problem,
                np.repeat(log_y[None, :], theta0.shape[0], axis=0),
                np.repeat(mask[None, :], theta0.shape[0], axis=0),
                theta0,
            )
            for _, problem, log_y, mask, _, theta0 in todo
        ]
    )
    # 3. per fit: the best start, polished; converged fits wait for their bootstrap
    finishing = []  # (index, problem, result, theta, y_boot)
    for (i, problem, log_y, mask, n, _), explored in zip(todo, explored_all, strict=True):
        outcome = _best_polished(problem, log_y, mask, n, explored, maxiter)
        if isinstance(outcome, FitResult):
            results[i] = outcome
            continue
        params, loss, theta = outcome
        result = _checked(problem, params, loss, n, theta)
        y_boot = fits[i][2]
        if y_boot is None or result.status != STATUS_OK:
            results[i] = result
        else:
            finishing.append((i, problem, result, theta, y_boot))
    # 4. all bootstrap refits, batched, then each fit's intervals and checks
    refits = []  # (index into finishing, problem, log_y, mask, theta0)
    for k, (_, problem, result, theta, y_boot) in enumerate(finishing):
        y_boot = np.atleast_2d(np.asarray(y_boot, dtype=float))
        result.n_boot = y_boot.shape[0]
        log_y, mask = _scaled_log_targets(problem, y_boot)
        usable = mask.sum(axis=1) > problem.n_params
        if result.n_boot and usable.any():
            theta0 = np.repeat(theta[None, :], int(usable.sum()), axis=0)
            refits.append((k, (problem, log_y[usable], mask[usable], theta0)))
    outcomes = dict(
        zip(
            [k for k, _ in refits],
            _levenberg_marquardt_many([job for _, job in refits]),
            strict=True,
        )
    )
    for k, (i, problem, result, _, _) in enumerate(finishing):
        results[i] = _with_bootstrap(problem, result, outcomes.get(k), rules)
    return results  # type: ignore[return-value]


def _best_polished(
    problem: ScaledProblem,
    log_y: np.ndarray,
    mask: np.ndarray,
    n: int,
    explored: _StackedOutcome,
    maxiter: int,
) -> FitResult | tuple[dict[str, float], float, np.ndarray]:
    """The best explored start polished by L-BFGS-B: ``(params, loss, theta)``, or a failed
    :class:`FitResult`."""
    names = problem.names
    losses = np.where(np.isfinite(explored.loss), explored.loss, np.inf)
    if not np.isfinite(losses).any():
        return failed_result(names, STATUS_FAILED, "non-finite loss from every start", n)
    order = np.argsort(losses)
    best = int(order[0])
    # Prefer a start with sane parameters if it is (almost) as good as the best.
    for idx in order:
        if losses[idx] > losses[best] * (1 + 1e-6) + 1e-12:
            break
        if not _absurd_reason(problem, explored.theta[idx]):
            best = int(idx)
            break
    polished = _lbfgsb_polish(
        problem, log_y[None, :], mask[None, :], explored.theta[best : best + 1], maxiter=maxiter
    )
    if np.isfinite(polished.loss[0]) and polished.loss[0] <= losses[best]:
        theta, loss, message = polished.theta[0], float(polished.loss[0]), polished.message
    else:
        theta, loss, message = explored.theta[best], float(losses[best]), explored.message
    with np.errstate(all="ignore"):
        params = dict(zip(names, problem.unscale(theta[None, :])[0].tolist(), strict=True))
    if not np.isfinite(loss):
        return failed_result(names, STATUS_FAILED, "non-finite loss", n)
    if not _gradient_small(problem, log_y, mask, theta) and not polished.success[0]:
        result = failed_result(names, STATUS_FAILED, f"optimiser did not converge: {message}", n)
        result.params, result.loss = params, loss
        return result
    return params, loss, theta


def _checked(
    problem: ScaledProblem, params: dict[str, float], loss: float, n: int, theta: np.ndarray
) -> FitResult:
    """The result of a converged fit after the absurdity and overflow checks (no CIs yet)."""
    names = problem.names
    reason = _absurd_reason(problem, theta)
    if not reason:
        overflow = [k for k, v in params.items() if not np.isfinite(v)]
        if overflow:
            reason = f"parameter(s) {', '.join(overflow)} overflow in original units"
    status = STATUS_DEGENERATE if reason else STATUS_OK
    nan = dict.fromkeys(names, np.nan)
    return FitResult(params, loss, status, reason, n, dict(nan), dict(nan))


def _with_bootstrap(
    problem: ScaledProblem,
    result: FitResult,
    refit: _StackedOutcome | None,
    rules: DegeneracyRules,
) -> FitResult:
    """Bootstrap confidence intervals of an ``ok`` fit from its refits (None: no usable
    resample) and their check; ``result.n_boot`` is set."""
    names = problem.names
    n_boot = result.n_boot
    if n_boot == 0:
        return result
    if refit is not None:
        with np.errstate(all="ignore"):
            boot_params = problem.unscale(refit.theta)
        good = (
            np.isfinite(refit.loss)
            & np.all(np.isfinite(boot_params), axis=1)
            & _sane_rows(problem, refit.theta)
        )
        result.n_boot_ok = int(good.sum())
    # Most resamples of the data give no usable law: the fit is not stable.
    unstable = n_boot >= MIN_BOOT_OK and result.n_boot_ok < 0.5 * n_boot
    if result.n_boot_ok < MIN_BOOT_OK:
        result.reason = f"only {result.n_boot_ok} of {n_boot} bootstrap refits usable: no CI"
        if unstable:
            result.status = STATUS_DEGENERATE
        return result
    lo, hi = np.percentile(boot_params[good], CI_PERCENTILES, axis=0)
    result.lo = dict(zip(names, lo.tolist(), strict=True))
    result.hi = dict(zip(names, hi.tolist(), strict=True))
    reason = _ci_reason(problem, result.lo, result.hi, rules.ci_decades)
    if not reason and unstable:
        reason = f"only {result.n_boot_ok} of {n_boot} bootstrap refits usable (under half)"
    if reason:
        result.status, result.reason = STATUS_DEGENERATE, reason
    return result


def fit_loglinear(inputs: Mapping[str, np.ndarray], y: np.ndarray) -> FitResult:
    """Log-linear baseline ``log y = log_intercept + sum_j slope_<name_j> * log x_j``.

    Least squares in log space on the points where ``y`` and every input are finite and positive.
    Parameters are ``log_intercept`` and ``slope_<name>`` per input.
    """
    names = ["log_intercept", *[f"slope_{k}" for k in inputs]]
    y = np.asarray(y, dtype=float)
    columns = [np.asarray(v, dtype=float) for v in inputs.values()]
    mask = np.isfinite(y) & (y > 0)
    for col in columns:
        mask &= np.isfinite(col) & (col > 0)
    n = int(mask.sum())
    if n <= len(names):
        return failed_result(
            names, STATUS_FAILED, f"{n} usable points for {len(names)} parameters", n
        )
    design = np.column_stack([np.ones(n), *[np.log(c[mask]) for c in columns]])
    target = np.log(y[mask])
    coef, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
    resid = design @ coef - target
    loss = float(np.mean(resid**2))
    params = dict(zip(names, coef.tolist(), strict=True))
    if rank < design.shape[1]:
        result = FitResult(params, loss, STATUS_DEGENERATE, "inputs are collinear or constant", n)
    else:
        result = FitResult(params, loss, STATUS_OK, "", n)
    nan = dict.fromkeys(names, np.nan)
    result.lo, result.hi = dict(nan), dict(nan)
    return result


def predict_loglinear(params: Mapping[str, float], inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Prediction of a :func:`fit_loglinear` fit at ``inputs`` (same names)."""
    log_pred = np.asarray(params["log_intercept"], dtype=float)
    for name, values in inputs.items():
        log_pred = log_pred + params[f"slope_{name}"] * np.log(np.asarray(values, dtype=float))
    return np.exp(log_pred)


def relative_error(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """``|predicted - actual| / actual`` elementwise (NaN where ``actual`` is not positive)."""
    predicted = np.asarray(predicted, dtype=float)
    actual = np.asarray(actual, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(actual > 0, np.abs(predicted - actual) / actual, np.nan)
