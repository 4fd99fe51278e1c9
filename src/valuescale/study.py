"""A study's config and its training cells: the one home of how a config becomes train jobs.

The workflow (``workflow/rules/common.smk``) and ``python -m valuescale.status`` both enumerate a
study's cells here: ``train_jobs(cfg)`` (every train job of the grid, after the cross-field
checks), ``run_name(job)`` (the job's folder under ``<results_dir>/runs`` and its log under
``<results_dir>/logs/train``), ``train_settings(cfg, env)``. ``load_config`` reads a study's config
files as Snakemake does (``--configfile`` merged over ``config/config.yaml``, the schema's
defaults filled in). Neither JAX nor dm_control is imported here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

#: A study config's schema, relative to the repository root (the Snakefile's folder).
SCHEMA_RELPATH = Path("workflow") / "schemas" / "config.schema.yaml"
#: The study config Snakemake reads first (``configfile:`` in the Snakefile), relative to the
#: working directory.
DEFAULT_CONFIGFILE = Path("config") / "config.yaml"

#: A train job's folder under ``<results_dir>/runs`` and its log under ``<results_dir>/logs/train``
#: (``.log`` appended): Snakemake wildcards, filled by ``run_name``.
RUN_NAME = "{env}/{agent}/utd{utd}_w{width}_b{batch_size}_lr{lr}/seeds{first}-{last}"

TrainJob = namedtuple(
    "TrainJob", ["env", "agent", "utd", "width", "batch_size", "lr", "first", "last"]
)
"""One train job: the seeds ``first..last`` of one cell configuration (path forms of its values)."""


def config_error(key: str, message: str) -> ValueError:
    """The one way a bad config fails: a ValueError that names the offending key."""
    return ValueError(f"invalid config key '{key}': {message}")


# ----------------------------------------------------------------------------- path forms


def fmt_utd(value: float) -> str:
    """Canonical path form of a UTD ratio: 0.5, 1, 2, 0.25 (round-trips through float)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def fmt_lr(value: float) -> str:
    """Canonical path form of a learning rate: 3e-4, 1.5e-4, 1e-3 (round-trips through float)."""
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    exp10 = exponent + len(digits) - 1
    if len(mantissa) > 1:
        mantissa = f"{mantissa[0]}.{mantissa[1:]}"
    return f"{'-' if sign else ''}{mantissa}e{exp10}"


def run_name(job: TrainJob) -> str:
    """The job's path below ``<results_dir>/runs`` (and, with ``.log``, below ``logs/train``)."""
    return RUN_NAME.format(**job._asdict())


# ----------------------------------------------------------------------------- grid and seeds


def seed_list(value: int | Sequence[int]) -> list[int]:
    """Seeds from the config: an int n means 0..n-1; a list is taken as given (sorted)."""
    return list(range(value)) if isinstance(value, int) else sorted(int(s) for s in value)


def seed_blocks(seeds: Iterable[int], per_job: int | None) -> list[tuple[int, int]]:
    """Pack seeds into train jobs: (first, last) ranges of consecutive seeds.

    per_job None: one job per run of consecutive seeds (all seeds in one job when they are
    0..n-1). per_job k: fixed blocks [j*k, (j+1)*k) cut by runs, so a block's job depends only on
    which of its own seeds are configured: adding seeds outside it never changes it.
    """
    blocks: list[list] = []
    for seed in sorted(seeds):
        key = None if per_job is None else seed // per_job
        if blocks and blocks[-1][1] == seed - 1 and blocks[-1][2] == key:
            blocks[-1][1] = seed
        else:
            blocks.append([seed, seed, key])
    return [(first, last) for first, last, _ in blocks]


def train_settings(cfg: dict, env: str) -> dict[str, Any]:
    """Train settings of one env: cfg['train'] with cfg['train_overrides'][env] on top."""
    settings = dict(cfg["train"])
    settings.update(cfg["train_overrides"].get(env, {}))
    return settings


def check_action_repeat(cfg: dict, env: str, agents: list[str], settings: dict) -> None:
    """The step settings of ``env`` are multiples of the action repeat of every agent that has
    one (``valuescale.config``: the loop counts simulator steps, ``action_repeat`` per agent
    step); a ValueError naming the key otherwise."""
    from valuescale.agents import config_class
    from valuescale.config import REPEATED_STEPS

    key = f"train_overrides.{env}" if env in cfg["train_overrides"] else "train"
    for agent in agents:
        declared = getattr(config_class(agent), "__dataclass_fields__", {}).get("action_repeat")
        if declared is None:
            continue
        repeat = settings.get("action_repeat") or declared.default
        for name in REPEATED_STEPS:
            if settings[name] % repeat:
                raise config_error(
                    f"{key}.{name}",
                    f"{name} ({settings[name]}) must be a multiple of {agent}'s action_repeat "
                    f"({repeat}) for env {env}",
                )


def train_jobs(
    cfg: dict, check_envs: Callable[[list[tuple[str, str]]], None] | None = None
) -> list[TrainJob]:
    """All train jobs of a validated config's grid (deduplicated, in config order) after the
    cross-field checks (a ValueError naming the key). ``check_envs`` gets the grid's
    ``(config key, env name)`` pairs to check the names (the workflow passes one that asks
    dm_control; the status command passes none)."""
    from valuescale.config import AGENTS, setting_fields

    jobs: dict[TrainJob, None] = {}
    env_keys = []
    for i, block in enumerate(cfg["grid"]):
        where = f"grid[{i}]"
        env_keys += [(f"{where}.envs", env) for env in block["envs"]]
        for agent in block["agents"]:
            if agent not in AGENTS:
                raise config_error(
                    f"{where}.agents",
                    f"agent {agent!r} is not implemented by the engine (available: "
                    f"{', '.join(AGENTS)})",
                )
        seeds = seed_list(block.get("seeds", cfg["seeds"]))
        blocks = seed_blocks(seeds, cfg["seeds_per_job"])
        for env in block["envs"]:
            settings = train_settings(cfg, env)
            for batch_size in block["batch_sizes"]:
                if batch_size > settings["replay_size"]:
                    raise config_error(
                        f"{where}.batch_sizes",
                        f"batch size {batch_size} is larger than the replay buffer "
                        f"(train.replay_size = {settings['replay_size']}) for env {env}",
                    )
            check_action_repeat(cfg, env, block["agents"], settings)
            resets = any(
                "reset_interval" in {f.name for f in setting_fields(agent)}
                for agent in block["agents"]
            )
            for utd in block["utd"]:
                reset = settings["reset_interval"] if resets else 0
                if reset and round(reset / utd) < 1:
                    raise config_error(
                        "train.reset_interval",
                        f"{reset} gradient steps at utd {utd} is less than one env step",
                    )
            utds = [fmt_utd(u) for u in block["utd"]]
            lrs = [fmt_lr(lr) for lr in block["lrs"]]
            for agent in block["agents"]:
                for utd in utds:
                    for width in block["widths"]:
                        for batch_size in block["batch_sizes"]:
                            for lr in lrs:
                                for first, last in blocks:
                                    job = TrainJob(
                                        env,
                                        agent,
                                        utd,
                                        int(width),
                                        int(batch_size),
                                        lr,
                                        first,
                                        last,
                                    )
                                    jobs[job] = None
    if check_envs is not None:
        check_envs(list(dict.fromkeys(env_keys)))
    grid_envs = {env for block in cfg["grid"] for env in block["envs"]}
    for env in cfg["train_overrides"]:
        if env not in grid_envs:
            raise config_error(f"train_overrides.{env}", f"env {env!r} is not in the grid")
    for env in grid_envs:
        settings = train_settings(cfg, env)
        key = f"train_overrides.{env}" if env in cfg["train_overrides"] else "train"
        if settings["warmup_steps"] >= settings["steps"]:
            raise config_error(
                f"{key}.warmup_steps",
                f"warmup_steps ({settings['warmup_steps']}) must be below steps "
                f"({settings['steps']}) for env {env}, or nothing is trained",
            )
    return list(jobs)


#: Observation and action sizes the runtime estimate assumes for every env (humanoid's, the largest
#: inputs of the paper's DMC tasks; above h1's 51 + 19), so that no env must be built to plan jobs.
NOMINAL_OBS_ACT = (67, 21)


def train_runtime_minutes(cfg: dict, job: TrainJob) -> int:
    """A scheduler's runtime estimate of one train job, in minutes:
    ``runtime_base_min + ceil(runtime_safety * updates * FLOPs per update / (runtime_gflops * 1e9)
    / 60)``, with the planned gradient updates of all the job's seeds (the agent's step
    conventions, ``valuescale.config.gradient_steps``) and the agent's analytic FLOPs of one update
    (``valuescale.flops.update_flops``, at :data:`NOMINAL_OBS_ACT`). The job's fields may be
    their path forms (Snakemake's wildcards: strings)."""
    from valuescale.config import gradient_steps

    res = cfg["resources"]["train"]
    settings = train_settings(cfg, job.env)
    frozen = tuple(sorted((k, v) for k, v in settings.items() if not isinstance(v, list | dict)))
    width, batch_size = int(job.width), int(job.batch_size)
    flops, action_repeat = _update_cost(job.agent, job.env, width, batch_size, frozen)
    updates = gradient_steps(
        settings["steps"] - settings["warmup_steps"], float(job.utd), action_repeat
    )
    total = flops * updates * (int(job.last) - int(job.first) + 1)
    minutes = res["runtime_safety"] * total / (res["runtime_gflops"] * 1e9) / 60.0
    return int(res["runtime_base_min"] + math.ceil(minutes))


@functools.lru_cache(maxsize=4096)
def _update_cost(
    agent: str, env: str, width: int, batch_size: int, settings: tuple
) -> tuple[int, int]:
    """(FLOPs of one update, action repeat) of ``agent`` at ``width`` x ``batch_size`` with the
    train ``settings`` (sorted items); cached: the agent's config validates every field."""
    from valuescale.agents import config_class
    from valuescale.flops import update_flops

    cls = config_class(agent)
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in settings if k in names and v is not None}
    agent_cfg = cls(**{**given, "critic_width": width, "batch_size": batch_size})
    if hasattr(agent_cfg, "for_env"):  # SimbaV2: critic heads by env
        agent_cfg = agent_cfg.for_env(env)
    flops = update_flops(*NOMINAL_OBS_ACT, agent_cfg)
    return flops, int(getattr(agent_cfg, "action_repeat", 1))


# ----------------------------------------------------------------------------- loading


def repo_root() -> Path:
    """The repository this package runs from (the Snakefile's folder): the working directory
    when it holds the workflow, else the checkout of an editable install."""
    here = Path.cwd()
    if (here / SCHEMA_RELPATH).is_file():
        return here
    return Path(__file__).resolve().parents[2]


def _yaml(text: str) -> Any:
    """``yaml.safe_load`` with libyaml's parser when PyYAML has it (the same documents, faster)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def _merge(base: dict, update: dict) -> dict:
    """Snakemake's merge of a ``--configfile`` over the config so far: dicts are merged key by
    key, anything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(configfiles: Sequence[str | os.PathLike] = ()) -> dict:
    """A study's config as the workflow sees it: ``config/config.yaml`` of the working directory
    (when present) with each of ``configfiles`` merged over it, validated against the schema
    with its defaults filled in (a ValueError naming the key or the file)."""
    import yaml

    files = [Path(f) for f in configfiles]
    if DEFAULT_CONFIGFILE.is_file():
        files.insert(0, DEFAULT_CONFIGFILE)
    elif not files:
        raise ValueError(
            f"no study config: {DEFAULT_CONFIGFILE} is not in {Path.cwd()} and no --configfile "
            "was given (run from the study's working directory or name its config)"
        )
    cfg: dict = {}
    for path in files:
        try:
            loaded = _yaml(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"config file {path} cannot be read ({e})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} does not hold a mapping of config keys")
        cfg = _merge(cfg, loaded)
    validate(cfg)
    return cfg


def _default_filling(validator_class: Any) -> Any:
    """``validator_class`` that also fills in each missing property's ``default`` (jsonschema's
    documented recipe, the one ``snakemake.utils.validate(set_default=True)`` uses)."""
    from jsonschema import validators

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001, ANN202
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def validate(cfg: dict) -> None:
    """Schema validation of ``cfg`` in place (defaults filled in, ints written as 64.0 made
    ints), a ValueError naming the key: what the workflow does when it loads a config (the
    schema has no external references; Snakemake itself is not imported, so that
    ``valuescale status`` starts fast)."""
    from jsonschema import Draft202012Validator, ValidationError

    schema = _yaml((repo_root() / SCHEMA_RELPATH).read_text())
    try:
        _default_filling(Draft202012Validator)(schema).validate(cfg)
    except ValidationError as cause:
        key = _dotted(list(cause.absolute_path))
        hint = ""
        if isinstance(cause.instance, str) and re.fullmatch(
            r"[-+]?[0-9]+[eE][-+]?[0-9]+", cause.instance
        ):
            hint = f" (YAML reads {cause.instance} as a string; write it with a dot, e.g. 3.0e-4)"
        if cause.validator == "additionalProperties":
            hint = " (unknown key)"
        raise config_error(key, cause.message + hint) from None
    for block in cfg["grid"]:
        block["widths"] = [int(w) for w in block["widths"]]
        block["batch_sizes"] = [int(b) for b in block["batch_sizes"]]


def _dotted(path: list) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"
