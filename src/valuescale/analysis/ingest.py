"""Ingest learning curves: the authors' published zips and our own runs, into one long table.

Every curve table of the analysis has the engine's long format, one row per
(configuration, seed, evaluation step, metric):

==========================  ===========  ==================================================
column                      dtype        meaning
==========================  ===========  ==================================================
``env``                     str          paper env name (``h1-crawl-v0``, ``finger-turn``)
``agent``                   str          ``bro`` or ``simbav2``
``utd``                     float64      sigma, gradient updates per env step
``width``                   Int64        critic width W; null where only N is known
``critic_params``           int64        N, critic parameter count (both heads)
``batch_size``              int64        B
``lr``                      float64      eta, learning rate
``seed``                    int64        seed index within the configuration
``step``                    int64        environment step of the evaluation
``metric``                  str          see :data:`METRIC_NAMES`
``value``                   float64      never NaN (padding is dropped)
``source``                  str          zip stem (``fitted_bs``) or ``own``
``passive_width``           Int64        width of the passive critic, null if none
``passive_critic_params``   Int64        its parameter count, null if none
==========================  ===========  ==================================================

Decisions on the published data (method.md section 5), each applied by :func:`import_published`:

* **Metric names** are normalised to the engine's (:data:`METRIC_NAMES`); a ``🦕`` in a stored name
  stands for ``/``. Unknown metric names are kept as stored.
* **NaN padding** rows are dropped (curves of different lengths, losses logged on a finer grid than
  returns, the placeholder all-NaN passive-critic metrics of runs without a passive critic).
  The authors' return arrays forward-fill a seed's last return after it stopped; those values are
  kept as published.
* **SimbaV2** columns are each already a mean over 5 seeds: they are kept as ``seed`` 0..k-1 (one
  "seed" = one 5-seed mean). Its critic size comes from :data:`SIMBAV2_CRITIC_PARAMS`; its ``lr`` is
  1e-4, the initial value of SimbaV2's default schedule (decayed linearly to 5e-5).
* **BRO ablation** (``dmc_bro_ablations``): arrays have no step column; evaluation ``i`` (0-based) is
  at step ``25_000 * (i + 1)``. Sizes map to N via :data:`ABLATION_CRITIC_PARAMS`; ``width`` is null
  (BRO's size ladder varies depth as well as width, so no single width is implied). B = 1024,
  lr = 3e-4, 10 seeds. Only DeepMind Control tasks are imported; MetaWorld (``*-goal-observable``) and
  MyoSuite (``myo-*``) members are skipped with a logged count.
* The BRO run name's other fields (hard target updates, target noise, n-step) have the same default
  value in every published file; a member with another value is refused rather than silently merged
  with the default configuration.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from valuescale import catalog
from valuescale.atomic import atomic_path
from valuescale.config import CURVE_COLUMNS as ENGINE_CURVE_COLUMNS

log = logging.getLogger(__name__)

# Columns of the engine's long curve format, in order.
CURVE_COLUMNS: list[str] = list(ENGINE_CURVE_COLUMNS)
# Columns added by the ingest: the data's origin and the passive critic's size.
EXTRA_COLUMNS: list[str] = ["source", "passive_width", "passive_critic_params"]
TABLE_COLUMNS: list[str] = CURVE_COLUMNS + EXTRA_COLUMNS
# Columns that identify a configuration (seeds are samples of it): the catalogue's configuration
# keys and the passive critic's size.
HYPERPARAMETER_COLUMNS: list[str] = [*catalog.CONFIG_KEYS, "passive_width", "passive_critic_params"]

_DTYPES: dict[str, str] = {
    "env": "str",
    "agent": "str",
    "utd": "float64",
    "width": "Int64",
    "critic_params": "int64",
    "batch_size": "int64",
    "lr": "float64",
    "seed": "int64",
    "step": "int64",
    "metric": "str",
    "value": "float64",
    "source": "str",
    "passive_width": "Int64",
    "passive_critic_params": "Int64",
}

# Stored metric name -> engine metric name (after the 🦕 -> "/" substitution).
METRIC_NAMES: dict[str, str] = {
    "return": "return",
    "avg_return": "return",
    "critic_loss": "critic_loss",
    "validation_critic_loss": "validation_critic_loss",
    "val_critic_loss": "validation_critic_loss",
    "separate_critic_loss": "passive_critic_loss",
    "sep_validation_critic_loss": "passive_validation_critic_loss",
}
SLASH_STANDIN = "\N{SAUROPOD}"  # 🦕: the authors' stand-in for "/" in metric names

# SimbaV2 critic parameter count by width (method.md section 5).
SIMBAV2_CRITIC_PARAMS: dict[int, int] = {
    128: 604_362,
    256: 2_322_634,
    512: 9_101_514,
    1024: 36_028_618,
    2048: 143_360_202,
}
SIMBAV2_LR = 1e-4

# BRO ablation size label -> critic parameter count (method.md section 5).
ABLATION_CRITIC_PARAMS: dict[str, int] = {
    "xs": 550_000,
    "s": 1_050_000,
    "sm": 2_830_000,
    "m": 4_920_000,
    "l": 26_310_000,
}
ABLATION_BATCH_SIZE = 1024
ABLATION_LR = 3e-4
ABLATION_EVAL_EVERY = 25_000
# Ablation task name -> paper env name, where they differ.
ABLATION_ENV_ALIASES: dict[str, str] = {"finger-turn_hard": "finger-turn"}
# dm_control suite domains: an ablation task is DMC when its name starts with "<domain>-".
DMC_DOMAINS: frozenset[str] = frozenset(
    {
        "acrobot",
        "ball_in_cup",
        "cartpole",
        "cheetah",
        "dog",
        "finger",
        "fish",
        "hopper",
        "humanoid",
        "humanoid_CMU",
        "manipulator",
        "pendulum",
        "point_mass",
        "quadruped",
        "reacher",
        "stacker",
        "swimmer",
        "walker",
    }
)

_NUM = r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?"
_BRO_RE = re.compile(
    rf"^[^/]+/w(?P<width>\d+)p(?P<params>\d+)/utd_(?P<utd>{_NUM})/(?P<env>[^/]+)/(?P<metric>[^/]+)/"
    rf"bs_(?P<batch_size>\d+)_lr_(?P<lr>{_NUM})_hard_(?P<hard>True|False)_(?P<interval>\d+)"
    rf"_targnoise_(?P<noise>[^_/]+)_(?P<noise_scale>{_NUM})_sep_(?P<sep>True|False)"
    rf"_w(?P<sep_width>\d+)p(?P<sep_params>\d+)_nstep_(?P<nstep>\d+)_usenstep_(?P<usenstep>True|False)"
    r"\.npy$"
)
_SIMBA_RE = re.compile(
    rf"^[^/]+/w(?P<width>\d+)/utd_(?P<utd>{_NUM})/(?P<env>[^/]+)/(?P<metric>[^/]+)/"
    r"bs_(?P<batch_size>\d+)\.npy$"
)
_ABLATION_RE = re.compile(rf"^[^/]+/rr(?P<utd>{_NUM})_(?P<size>xs|s|sm|m|l)/(?P<task>[^/]+)\.npy$")
# The only values of the BRO run-name fields that the analysis supports.
_BRO_DEFAULT_FIELDS = {
    "hard": "False",
    "noise": "none",
    "nstep": "1",
    "usenstep": "False",
}


class PublishedDataError(ValueError):
    """A published archive (or one of its members) is unreadable or not in the expected layout."""


@dataclass(frozen=True)
class _Member:
    """Hyperparameters of one array in an archive, before it is expanded to long rows."""

    env: str
    agent: str
    utd: float
    width: int | None
    critic_params: int
    batch_size: int
    lr: float
    metric: str
    passive_width: int | None
    passive_critic_params: int | None


def normalise_metric(stored: str) -> str:
    """The engine's name for a stored metric name (🦕 -> '/', then :data:`METRIC_NAMES`)."""
    name = stored.replace(SLASH_STANDIN, "/")
    return METRIC_NAMES.get(name, name)


def _is_skippable(name: str) -> bool:
    """Archive entries that carry no data: directories and OS metadata files."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return name.endswith("/") or base.startswith(".") or name.startswith("__MACOSX/")


def _parse_member(zip_path: Path, name: str) -> tuple[str, _Member | None]:
    """Parse an archive path into its layout and hyperparameters.

    Returns ``(layout, member)`` with layout ``"bro"``, ``"simbav2"`` or ``"ablation"``; ``member`` is
    ``None`` for ablation tasks outside DeepMind Control (to be skipped).
    """
    if m := _BRO_RE.match(name):
        g = m.groupdict()
        for field, default in _BRO_DEFAULT_FIELDS.items():
            if g[field] != default:
                raise PublishedDataError(
                    f"{zip_path}: member {name!r}: unsupported run variant {field}={g[field]!r} "
                    f"(only {default!r} is supported)"
                )
        passive = g["sep"] == "True"
        return "bro", _Member(
            env=g["env"],
            agent="bro",
            utd=float(g["utd"]),
            width=int(g["width"]),
            critic_params=int(g["params"]),
            batch_size=int(g["batch_size"]),
            lr=float(g["lr"]),
            metric=normalise_metric(g["metric"]),
            passive_width=int(g["sep_width"]) if passive else None,
            passive_critic_params=int(g["sep_params"]) if passive else None,
        )
    if m := _SIMBA_RE.match(name):
        g = m.groupdict()
        width = int(g["width"])
        if width not in SIMBAV2_CRITIC_PARAMS:
            raise PublishedDataError(
                f"{zip_path}: member {name!r}: SimbaV2 width {width} has no known critic parameter "
                f"count (known widths: {sorted(SIMBAV2_CRITIC_PARAMS)})"
            )
        return "simbav2", _Member(
            env=g["env"],
            agent="simbav2",
            utd=float(g["utd"]),
            width=width,
            critic_params=SIMBAV2_CRITIC_PARAMS[width],
            batch_size=int(g["batch_size"]),
            lr=SIMBAV2_LR,
            metric=normalise_metric(g["metric"]),
            passive_width=None,
            passive_critic_params=None,
        )
    if m := _ABLATION_RE.match(name):
        g = m.groupdict()
        task = g["task"]
        if task.startswith("myo-") or task.endswith("-goal-observable"):
            return "ablation", None
        if task.split("-", 1)[0] not in DMC_DOMAINS or "-" not in task:
            raise PublishedDataError(
                f"{zip_path}: member {name!r}: task {task!r} is neither a DeepMind Control task "
                "nor a known MetaWorld/MyoSuite task"
            )
        return "ablation", _Member(
            env=ABLATION_ENV_ALIASES.get(task, task),
            agent="bro",
            utd=float(g["utd"]),
            width=None,
            critic_params=ABLATION_CRITIC_PARAMS[g["size"]],
            batch_size=ABLATION_BATCH_SIZE,
            lr=ABLATION_LR,
            metric="return",
            passive_width=None,
            passive_critic_params=None,
        )
    raise PublishedDataError(
        f"{zip_path}: member {name!r}: path matches none of the published layouts "
        "(BRO '<name>/w<W>p<N>/utd_<s>/<env>/<metric>/bs_<B>_lr_..._usenstep_<b>.npy', "
        "SimbaV2 '<name>/w<W>/utd_<s>/<env>/<metric>/bs_<B>.npy', "
        "ablation 'ablations_rr/rr<s>_<size>/<task>.npy')"
    )


def _load_array(zf: zipfile.ZipFile, zip_path: Path, name: str) -> np.ndarray:
    """Read one ``.npy`` member as float64, turning every read failure into a PublishedDataError."""
    try:
        raw = zf.read(name)
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, zlib.error, ValueError, EOFError, ...
        raise PublishedDataError(
            f"{zip_path}: member {name!r} cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise PublishedDataError(
            f"{zip_path}: member {name!r}: expected a numeric array, got dtype "
            f"{getattr(array, 'dtype', type(array))}"
        )
    return array.astype(np.float64, copy=False)


def _steps_and_values(
    zip_path: Path, name: str, layout: str, array: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Split an array into steps [T] (int64) and per-seed values [T, S], checking its shape."""
    if array.ndim != 2:
        raise PublishedDataError(
            f"{zip_path}: member {name!r}: expected a 2-D array, got shape {array.shape}"
        )
    if layout == "ablation":
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise PublishedDataError(
                f"{zip_path}: member {name!r}: expected shape (evaluations, seeds) with both >= 1, "
                f"got {array.shape}"
            )
        steps = ABLATION_EVAL_EVERY * np.arange(1, array.shape[0] + 1, dtype=np.int64)
        return steps, array
    if array.shape[0] < 1 or array.shape[1] < 2:
        raise PublishedDataError(
            f"{zip_path}: member {name!r}: expected shape (evaluations, 1 + seeds) with a step "
            f"column and at least one seed column, got {array.shape}"
        )
    raw_steps = array[:, 0]
    if not np.all(np.isfinite(raw_steps)) or np.any(raw_steps != np.round(raw_steps)):
        raise PublishedDataError(
            f"{zip_path}: member {name!r}: column 0 (env step) must hold finite whole numbers"
        )
    steps = raw_steps.astype(np.int64)
    if np.any(np.diff(steps) <= 0):
        raise PublishedDataError(
            f"{zip_path}: member {name!r}: column 0 (env step) is not strictly increasing"
        )
    return steps, array[:, 1:]


def _empty_table() -> pd.DataFrame:
    return _coerce(pd.DataFrame({c: [] for c in TABLE_COLUMNS}), "empty table")


def _coerce(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Order the columns as :data:`TABLE_COLUMNS` (extras after) and apply the schema's dtypes."""
    out = df.copy()
    for column in ("passive_width", "passive_critic_params"):
        if column not in out:
            out[column] = pd.array([pd.NA] * len(out), dtype="Int64")
    for column, dtype in _DTYPES.items():
        try:
            out[column] = out[column].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{where}: column {column!r} cannot be cast to {dtype}: {exc}"
            ) from exc
    extra = [c for c in out.columns if c not in TABLE_COLUMNS]
    return out[TABLE_COLUMNS + extra].reset_index(drop=True)


def import_published(zip_path: str | os.PathLike, name: str | None = None) -> pd.DataFrame:
    """Read one of the authors' published curve archives into the long curve table.

    Args:
        zip_path: path to ``<name>.zip`` (any of the layouts of method.md section 5).
        name: value of the ``source`` column; defaults to the zip's stem (``fitted_bs``).

    Returns:
        The long table (module docstring) with NaN padding dropped, sorted by configuration,
        metric, seed and step.

    Raises:
        PublishedDataError: the file is not a readable zip, a member cannot be read, its path
            matches no known layout, or its array has the wrong number of dimensions or columns.
    """
    path = Path(zip_path)
    source = name if name is not None else path.stem
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PublishedDataError(f"{path}: not a readable zip archive: {exc}") from exc

    members: list[_Member] = []
    steps_list: list[np.ndarray] = []
    values_list: list[np.ndarray] = []
    skipped = 0
    with zf:
        for info in zf.infolist():
            if _is_skippable(info.filename):
                continue
            layout, member = _parse_member(path, info.filename)
            if member is None:
                skipped += 1
                continue
            array = _load_array(zf, path, info.filename)
            steps, values = _steps_and_values(path, info.filename, layout, array)
            members.append(member)
            steps_list.append(steps)
            values_list.append(values)
    if skipped:
        log.info("%s: skipped %d MetaWorld/MyoSuite members (DMC only)", path.name, skipped)
    if not members:
        log.warning("%s: no curves imported", path)
        return _empty_table()
    return _members_to_table(members, steps_list, values_list, source)


def _members_to_table(
    members: list[_Member],
    steps_list: list[np.ndarray],
    values_list: list[np.ndarray],
    source: str,
) -> pd.DataFrame:
    """Expand per-member arrays to long rows in one pass (no per-member DataFrames)."""
    seen: dict[_Member, int] = {}
    for i, member in enumerate(members):
        if member in seen:
            raise PublishedDataError(
                f"source {source!r}: two members hold the same curves ({member}); "
                "each (configuration, metric) must appear once"
            )
        seen[member] = i
    member_idx, seeds, steps, values = [], [], [], []
    for i, (st, va) in enumerate(zip(steps_list, values_list, strict=True)):
        keep = ~np.isnan(va).T  # [S, T]
        s_idx, t_idx = np.nonzero(keep)  # row-major: ordered by seed, then step
        seeds.append(s_idx.astype(np.int64))
        steps.append(st[t_idx])
        values.append(va.T[keep])
        member_idx.append(np.full(len(s_idx), i, dtype=np.int64))
    idx = np.concatenate(member_idx)
    meta = pd.DataFrame(
        {
            "env": [m.env for m in members],
            "agent": [m.agent for m in members],
            "utd": [m.utd for m in members],
            "width": pd.array([m.width for m in members], dtype="Int64"),
            "critic_params": [m.critic_params for m in members],
            "batch_size": [m.batch_size for m in members],
            "lr": [m.lr for m in members],
            "metric": [m.metric for m in members],
            "passive_width": pd.array([m.passive_width for m in members], dtype="Int64"),
            "passive_critic_params": pd.array(
                [m.passive_critic_params for m in members], dtype="Int64"
            ),
        }
    )
    df = meta.iloc[idx].reset_index(drop=True)
    df["seed"] = np.concatenate(seeds)
    df["step"] = np.concatenate(steps)
    df["value"] = np.concatenate(values)
    df["source"] = source
    df = _coerce(df, f"source {source!r}")
    return df.sort_values(
        ["env", "agent", "utd", "critic_params", "batch_size", "lr", "metric", "seed", "step"],
        kind="stable",
        ignore_index=True,
    )


def read_sha256sums(path: str | os.PathLike) -> dict[str, str]:
    """Parse a ``sha256sum``-style file (``<hex>  <name>`` or ``<hex> *<name>`` per line).

    Returns a mapping file name -> lower-case hex digest. Blank lines and ``#`` comments are ignored.

    Raises:
        ValueError: a line is not ``<64 hex digits> <name>``, naming the file and the line number.
    """
    sums: dict[str, str] = {}
    text = Path(path).read_text()
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64})\s+\*?(.+)", stripped)
        if m is None:
            raise ValueError(f"{path}: line {lineno} is not '<sha256>  <file name>': {line!r}")
        sums[m.group(2).strip()] = m.group(1).lower()
    return sums


def sha256_file(path: str | os.PathLike) -> str:
    """Lower-case hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Check a file's SHA-256 digest.

    Raises:
        PublishedDataError: the digest differs from ``expected`` (both are named).
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        raise PublishedDataError(
            f"{path}: SHA-256 mismatch: expected {expected.lower()}, got {actual}"
        )


def import_published_dir(
    directory: str | os.PathLike,
    names: Iterable[str] | None = None,
    verify: bool = True,
) -> pd.DataFrame:
    """Import several published archives of a directory into one table.

    Args:
        directory: folder with ``<name>.zip`` files (and ``SHA256SUMS`` when ``verify``).
        names: zip stems to import; default every ``*.zip`` in the folder, sorted.
        verify: check each zip against the folder's ``SHA256SUMS`` first.

    Raises:
        FileNotFoundError: a requested zip (or ``SHA256SUMS`` when verifying) is missing.
        PublishedDataError: a checksum differs, a zip is not listed in ``SHA256SUMS``, or an
            archive cannot be imported.
    """
    folder = Path(directory)
    stems = sorted(p.stem for p in folder.glob("*.zip")) if names is None else list(names)
    sums = read_sha256sums(folder / "SHA256SUMS") if verify else {}
    tables = []
    for stem in stems:
        zip_path = folder / f"{stem}.zip"
        if not zip_path.is_file():
            raise FileNotFoundError(f"{zip_path}: published archive not found")
        if verify:
            if zip_path.name not in sums:
                raise PublishedDataError(f"{zip_path}: not listed in {folder / 'SHA256SUMS'}")
            verify_sha256(zip_path, sums[zip_path.name])
        tables.append(import_published(zip_path))
    if not tables:
        return _empty_table()
    return pd.concat(tables, ignore_index=True)


def import_runs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate our engine's per-cell ``curves.parquet`` files, with ``source = "own"``.

    Each file must hold the :data:`CURVE_COLUMNS`; ``passive_width`` / ``passive_critic_params``
    are optional (null when absent); other columns are kept. Rows whose ``value`` is NaN are dropped.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file lacks a required column or a column has the wrong type (naming the file
            and the column).
    """
    tables = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: run curves file not found")
        df = read_table(path)
        missing = [c for c in CURVE_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing required column(s) {missing}")
        df = df.loc[df["value"].notna()].copy()
        df["source"] = "own"
        tables.append(_coerce(df, str(path)))
    if not tables:
        return _empty_table()
    return pd.concat(tables, ignore_index=True)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``.parquet`` or ``.csv`` table written by :func:`write_table`."""
    p = Path(path)
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    if p.suffix == ".csv":
        return pd.read_csv(p)
    raise ValueError(f"{p}: unsupported table format {p.suffix!r} (use .parquet or .csv)")


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table atomically as ``.parquet`` or ``.csv`` (chosen by the suffix).

    The table goes to a temporary file in the target's folder, which then replaces the target
    (``os.replace``): readers never see a partial file, and on error nothing is left behind.
    Parent folders are created.

    Raises:
        ValueError: the suffix is neither ``.parquet`` nor ``.csv``.
    """
    p = Path(path)
    if p.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{p}: unsupported table format {p.suffix!r} (use .parquet or .csv)")
    with atomic_path(p) as tmp:
        if p.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


def coerce_table(df: pd.DataFrame, where: str = "table") -> pd.DataFrame:
    """Apply the curve table's column order and dtypes (adding null passive-critic columns).

    Raises:
        ValueError: a column is missing or cannot be cast, naming ``where`` and the column.
    """
    missing = [c for c in CURVE_COLUMNS + ["source"] if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing required column(s) {missing}")
    return _coerce(df, where)


def dtypes() -> Mapping[str, str]:
    """The curve table's column dtypes (a copy)."""
    return dict(_DTYPES)
