"""``TrainConfig``: every setting of one training cell (one env, one hyperparameter set, S seeds).

Importing this module does not import JAX (the CLI parses and validates flags, pins the process to
its cores, and only then imports JAX).

UTD semantics (``utd`` = sigma, gradient updates per env step after the warm-up): the k-th env
step after the warm-up (k = 0, 1, ...) is followed by ``floor((k + 1) * sigma) - floor(k * sigma)``
updates, with sigma read as the exact decimal it is written as (``Fraction(repr(utd))``). For an
integer sigma that is sigma updates every step; sigma = 0.25 gives one update every 4 env steps;
sigma = 1.5 alternates 1 and 2 updates. After T post-warm-up env steps the agent has taken exactly
``floor(T * sigma)`` gradient steps (:meth:`TrainConfig.gradient_steps_after`).

Settings: the loop's are ``TrainConfig``'s fields, the agent's those of its config class
(``valuescale.agents``); each is declared once (``valuescale.settings``), and the CLI, run.json and
the workflow schema's ``train`` block derive from those declarations (``train_settings_schema``;
``python -m valuescale.config --write-schema`` rewrites the schema's block).

Action repeat (the one home of the step conventions): an agent config with an ``action_repeat``
field (SimbaV2's, 2) has every env of the run (training, evaluation, validation) wrapped in
``valuescale.envs.ActionRepeat``: one *agent step* (one action, one replay transition, one host
statistics update) is ``action_repeat`` simulator steps. The loop's step settings (``steps``,
``warmup_steps``, ``eval_interval``, ``log_interval``, ``checkpoint_every``, ``validation_every``,
``max_episode_steps``) and every logged step (curves' ``step``, run.json's ``env_steps``) count
*simulator* steps and must be multiples of ``action_repeat`` (``max_episode_steps`` excepted: the
time limit applies before the repeat); ``utd`` counts updates per *agent* step (the published
SimbaV2 convention), so ``updates_at(k)`` is indexed by post-warm-up agent steps and
``total_updates = floor((steps - warmup_steps) / action_repeat * utd)``. Without the field (BRO)
``action_repeat`` is 1 and agent steps are env steps.

Reset schedule: ``reset_interval`` (an agent setting; BRO's) is in gradient steps, as in the paper (2.5M). Resets are
scheduled in env steps, at every positive multiple of ``round(reset_interval / utd)`` env steps
below ``steps`` (:attr:`TrainConfig.reset_every_env_steps`), which is where the analysis looks for
post-reset dips (multiples of 2.5M/sigma env steps).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from valuescale.agents import AGENTS as _REGISTRY
from valuescale.agents import RESERVED_AGENTS as RESERVED_AGENTS
from valuescale.agents import config_class
from valuescale.agents.base import GRID_FIELDS
from valuescale.settings import ConfigError, check_fields, field_docs, public_fields, setting

CURVE_COLUMNS: tuple[str, ...] = (
    "env",
    "agent",
    "utd",
    "width",
    "critic_params",
    "batch_size",
    "lr",
    "seed",
    "step",
    "metric",
    "value",
)
"""Columns of the engine's long ``curves.parquet`` format, in order (the analysis reads the same)."""

AGENTS: tuple[str, ...] = tuple(_REGISTRY)
"""Implemented agents (``valuescale.agents.AGENTS``)."""

#: Fields that may differ between a checkpoint and the config that resumes it: they do not change
#: the trajectory up to the checkpoint (``steps`` may be raised to extend a run).
RESUMABLE_CHANGES: tuple[str, ...] = ("steps", "checkpoint_every")

#: Loop settings counted in simulator steps that must be multiples of ``action_repeat``.
REPEATED_STEPS: tuple[str, ...] = (
    "steps",
    "warmup_steps",
    "eval_interval",
    "log_interval",
    "checkpoint_every",
    "validation_every",
)

#: Settings that are part of a cell's run path (wildcards), not of the schema's ``train`` block.
PATH_SETTINGS: tuple[str, ...] = ("env", "agent", "seeds", "utd", *GRID_FIELDS)


@dataclass(frozen=True, init=False)
class TrainConfig:
    """One training cell: environment, seeds and the loop's schedule (the fields below), and the
    agent's hyperparameters (``agent_config``, an instance of the agent's config class).

    Built flat: ``TrainConfig("cheetah-run", agent="bro", utd=2, critic_width=256, ...)`` takes
    the loop settings and the agent's settings as keyword arguments (an ``agent_config`` instance
    may be given instead, with settings on top); the agent's settings read as attributes too
    (``cfg.critic_width``). ``to_dict`` is flat as well (``run.json``'s ``config``).
    """

    env: str = setting("")
    """Environment name (paper names such as ``cheetah-run``, ``finger-turn``; any dm_control
    suite task as ``<domain>-<task>``; HumanoidBench ids such as ``h1-crawl-v0``)."""
    agent: str = setting("bro")
    """Agent (``valuescale.agents.AGENTS``): bro or simbav2."""
    seeds: tuple[int, ...] = (0,)
    """Seeds trained together in one process (leading seed axis); each a distinct int >= 0."""
    utd: float = setting(1.0, low=0.0, low_open=True)
    """UTD ratio sigma: gradient updates per agent step (= env step without action repeat;
    fractional: one update every 1/sigma steps; see the module docstring)."""
    steps: int = setting(1_000_000, low=1)
    """Environment steps per seed, warm-up included."""
    replay_size: int = setting(1_000_000, low=1)
    """Replay capacity per seed in transitions; must be >= the batch size."""
    warmup_steps: int = setting(2_500, low=0)
    """Env steps with uniform random actions and no updates at the start."""
    eval_interval: int = setting(25_000, low=1)
    """Env steps between deterministic evaluations (one more at the end)."""
    eval_episodes: int = setting(5, low=1)
    """Episodes per evaluation (deterministic policy, separate eval envs)."""
    validation: bool = setting(False)
    """TD-overfitting instrumentation: a held-out replay filled from a second env (another seed)
    stepped with the same policy every validation_every env steps, and the critic's validation
    TD loss on one batch from it (metric validation_critic_loss)."""
    validation_every: int = setting(10, low=1)
    """Env steps between validation-env steps / validation losses (k)."""
    checkpoint_every: int = setting(50_000, low=0)
    """Env steps between atomic checkpoints in the run folder (0 = never)."""
    log_interval: int = setting(1_000, low=1)
    """Env steps over which training metrics are averaged into one logged value."""
    max_episode_steps: int = setting(1_000, low=1)
    """Episode length (a time limit that is bootstrapped through)."""
    agent_config: Any = None
    """The agent's hyperparameters (an instance of ``valuescale.agents.config_class(agent)``)."""
    _debug_nan_reward: tuple[int, int] | None = field(default=None, repr=False)
    """Test hook: ``(seed, step)`` replaces that seed's reward at that env step with NaN."""

    def __init__(self, env: str, agent: str = "bro", **settings: Any) -> None:
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "agent", agent)
        _check_str(self, "env")
        _check_str(self, "agent")
        try:
            agent_cls = config_class(agent)
        except KeyError as e:
            raise ConfigError("agent", e.args[0]) from None
        given = settings.pop("agent_config", None)
        loop = {f.name: f for f in dataclasses.fields(TrainConfig)}
        agent_names = {f.name for f in dataclasses.fields(agent_cls)}
        agent_settings = {k: settings.pop(k) for k in list(settings) if k in agent_names}
        unknown = sorted(k for k in settings if k not in loop or k in ("env", "agent"))
        if unknown:
            raise ConfigError(
                unknown[0],
                f"not a setting of the loop or of agent {agent!r}: {', '.join(unknown)}",
            )
        for name, f in loop.items():
            if name not in ("env", "agent", "agent_config"):
                object.__setattr__(self, name, settings.get(name, f.default))
        if given is None:
            built = agent_cls(**agent_settings)
        elif not isinstance(given, agent_cls):
            raise ConfigError(
                "agent_config",
                f"agent {agent!r} takes a {agent_cls.__name__}, got {type(given).__name__}",
            )
        else:
            built = dataclasses.replace(given, **agent_settings) if agent_settings else given
        object.__setattr__(self, "agent_config", built)
        self._check()

    def __getattr__(self, name: str) -> Any:
        """The agent's settings read as attributes (``cfg.critic_width``, ``cfg.batch_size``)."""
        if name.startswith("__") or name == "agent_config":
            raise AttributeError(name)
        agent_config = self.__dict__.get("agent_config")
        if agent_config is not None and name in {f.name for f in dataclasses.fields(agent_config)}:
            return getattr(agent_config, name)
        raise AttributeError(
            f"{type(self).__name__} (agent {self.agent!r}) has no setting {name!r}"
        )

    def _check(self) -> None:
        seeds = self.seeds
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = (seeds,)
        if not isinstance(seeds, tuple | list) or len(seeds) == 0:
            raise ConfigError("seeds", f"need a non-empty sequence of ints, got {self.seeds!r}")
        for s in seeds:
            if not _is_int(s) or s < 0 or s >= 2**31:
                raise ConfigError("seeds", f"each seed must be an int in [0, 2**31), got {s!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError("seeds", f"seeds must be distinct, got {list(seeds)}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        check_fields(self)
        if _is_int(self.utd):
            object.__setattr__(self, "utd", float(self.utd))
        if self.replay_size < self.batch_size:
            raise ConfigError(
                "replay_size",
                f"replay_size ({self.replay_size}) must be >= batch_size ({self.batch_size})",
            )
        repeat = self.action_repeat
        for name in REPEATED_STEPS:
            if getattr(self, name) % repeat:
                raise ConfigError(
                    name,
                    f"{name} ({getattr(self, name)}) must be a multiple of action_repeat "
                    f"({repeat}): the loop counts simulator steps, {repeat} per agent step",
                )
        if self.reset_interval > 0 and self.reset_every_env_steps < 1:
            raise ConfigError(
                "reset_interval",
                f"reset_interval ({self.reset_interval}) / utd ({self.utd}) is below one env step",
            )
        if self._debug_nan_reward is not None:
            seed, step = self._debug_nan_reward
            if seed not in self.seeds or not _is_int(step) or step % repeat:
                raise ConfigError("_debug_nan_reward", f"bad (seed, step) {self._debug_nan_reward}")
        try:
            from valuescale.envs import check_env_name

            check_env_name(self.env)
        except ValueError as e:
            raise ConfigError("env", str(e)) from None

    # ----------------------------------------------------------------- derived values

    @property
    def width(self) -> int:
        """The paper's width (the critic's)."""
        return self.agent_config.critic_width

    @property
    def reset_interval(self) -> int:
        """Gradient steps between full resets: the agent's ``reset_interval`` (0 without one)."""
        return int(getattr(self.agent_config, "reset_interval", 0))

    @property
    def action_repeat(self) -> int:
        """Simulator steps per agent step: the agent's ``action_repeat`` (1 without one)."""
        return int(getattr(self.agent_config, "action_repeat", 1))

    @property
    def utd_fraction(self) -> Fraction:
        """sigma as an exact fraction of its decimal representation."""
        return Fraction(repr(float(self.utd)))

    def updates_at(self, k: int) -> int:
        """Gradient updates after the k-th post-warm-up agent step (k >= 0; an env step without
        action repeat)."""
        sigma = self.utd_fraction
        return math.floor((k + 1) * sigma) - math.floor(k * sigma)

    def gradient_steps_after(self, env_steps_after_warmup: int) -> int:
        """Total gradient steps after that many post-warm-up env (simulator) steps."""
        return gradient_steps(env_steps_after_warmup, self.utd, self.action_repeat)

    @property
    def total_updates(self) -> int:
        """Gradient steps of the whole run (``steps`` env steps, warm-up included)."""
        return self.gradient_steps_after(self.steps - self.warmup_steps)

    @property
    def reset_every_env_steps(self) -> int:
        """Env steps between resets, ``round(reset_interval / utd)`` agent steps (0: no
        resets)."""
        if self.reset_interval == 0:
            return 0
        return int(round(Fraction(self.reset_interval) / self.utd_fraction)) * self.action_repeat

    def reset_steps(self) -> list[int]:
        """Env steps (< steps) at which all networks and optimiser states are re-initialised."""
        every = self.reset_every_env_steps
        if every == 0:
            return []
        return list(range(every, self.steps, every))

    def eval_steps(self) -> list[int]:
        """Env steps after which a deterministic evaluation runs (multiples and the end)."""
        out = list(range(self.eval_interval, self.steps + 1, self.eval_interval))
        if not out or out[-1] != self.steps:
            out.append(self.steps)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every setting, the loop's then the agent's (the resolved
        config of ``run.json`` and checkpoints)."""
        out = {f.name: getattr(self, f.name) for f in loop_fields()}
        out["seeds"] = list(self.seeds)
        out.update(dataclasses.asdict(self.agent_config))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        data = dict(data)
        if "env" not in data:
            raise ConfigError("env", "missing")
        if "seeds" in data:
            data["seeds"] = tuple(data["seeds"])
        return cls(**data)


def loop_fields() -> list[dataclasses.Field]:
    """``TrainConfig``'s own settings (the loop's), without ``agent_config`` and test hooks."""
    return [f for f in public_fields(TrainConfig) if f.name != "agent_config"]


def gradient_steps(env_steps_after_warmup: int, utd: float, action_repeat: int = 1) -> int:
    """Gradient steps after that many post-warm-up env (simulator) steps at UTD ``utd`` (updates
    per agent step of ``action_repeat`` simulator steps): ``floor(agent steps * utd)`` with
    ``utd`` as the exact fraction of its decimal representation."""
    agent_steps = max(0, int(env_steps_after_warmup)) // int(action_repeat)
    return math.floor(agent_steps * Fraction(repr(float(utd))))


def setting_fields(agent: str) -> list[dataclasses.Field]:
    """Every setting of a run of ``agent``: the loop's, then the agent config's."""
    return loop_fields() + public_fields(config_class(agent))


def setting_docs(agent: str) -> dict[str, str]:
    """``{setting: docstring}`` of a run of ``agent`` (the CLI's help, the schema's descriptions)."""
    return {**field_docs(TrainConfig), **field_docs(config_class(agent))}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, str) or not value:
        raise ConfigError(name, f"must be a non-empty string, got {value!r}")


# ----------------------------------------------------------------------------- the schema's block

SCHEMA_BLOCK = "train_settings"
"""The workflow schema's ``$defs`` entry derived from the settings (the ``train`` block and every
``train_overrides`` entry)."""

_SCHEMA_DESCRIPTION = (
    "Training settings that are not part of a cell's path: the training loop's (TrainConfig) and "
    "every agent's hyperparameters (its config class; '(bro)' names the agents that read a key). "
    "Flags of `python -m valuescale.train` with dashes. Changing any of them reruns the affected "
    "train jobs (Snakemake's params rerun trigger). Generated from the package by `python -m "
    "valuescale.config --write-schema`; a test keeps it in step."
)


def train_settings_schema(agents: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The JSON schema of the workflow's ``train`` block, derived from the declarations: the
    loop's settings, then each agent's (``agents``: default all implemented), path settings
    left out. A key that several agents declare appears once; where their defaults differ its
    default is null (each agent's own default) and its description lists them."""
    from valuescale.settings import schema_property

    agents = AGENTS if agents is None else agents
    props: dict[str, Any] = {}
    loop_docs = field_docs(TrainConfig)
    for f in loop_fields():
        if f.name not in PATH_SETTINGS:
            props[f.name] = schema_property(f, loop_docs[f.name])
    owners: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for agent in agents:
        cls = config_class(agent)
        for f in public_fields(cls):
            if f.name in props:
                raise TypeError(f"agent {agent!r}: setting {f.name!r} clashes with a loop setting")
            if f.name not in PATH_SETTINGS:
                owners.setdefault(f.name, []).append((agent, f))
    for name, declared in owners.items():
        agent, f = declared[0]
        spec = schema_property(f, field_docs(config_class(agent))[name])
        for other, g in declared[1:]:
            theirs = schema_property(g, spec["description"])
            if {k: v for k, v in theirs.items() if k != "default"} != {
                k: v for k, v in spec.items() if k != "default"
            }:
                raise TypeError(
                    f"setting {name!r}: agents {agent!r} and {other!r} declare it "
                    "with other types or bounds; give one of them another name"
                )
        defaults = {a: g.default for a, g in declared}
        names = ", ".join(a for a, _ in declared)
        description = f"({names}) {spec['description']}"
        if len(set(map(repr, defaults.values()))) > 1:
            kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"], "null"]
            spec["type"] = kinds
            spec["default"] = None
            each = ", ".join(f"{a} {d!r}" for a, d in defaults.items())
            description += f" null: each agent's own default ({each})."
        spec["description"] = description
        props[name] = spec
    return {
        "description": _SCHEMA_DESCRIPTION,
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }


_BEGIN = f"  # BEGIN {SCHEMA_BLOCK}: generated by `python -m valuescale.config --write-schema`\n"
_END = f"  # END {SCHEMA_BLOCK}\n"


def render_schema_block() -> str:
    """The YAML text of the schema's block (indented for ``$defs``, between its markers)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = ">" if len(value) > 60 else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump(
        {SCHEMA_BLOCK: train_settings_schema()},
        Dumper=Dumper,
        sort_keys=False,
        width=90,
        allow_unicode=True,
    )
    return _BEGIN + "".join("  " + line + "\n" for line in body.splitlines()) + _END


def write_schema_block(path: str) -> bool:
    """Replace the generated block of the schema file ``path``; True if its text changed."""
    from pathlib import Path

    text = Path(path).read_text()
    if _BEGIN not in text or _END not in text:
        raise ValueError(f"{path}: no '{_BEGIN.strip()}' ... '{_END.strip()}' markers")
    head, rest = text.split(_BEGIN, 1)
    _, tail = rest.split(_END, 1)
    new = head + render_schema_block() + tail
    if new != text:
        Path(path).write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    """``python -m valuescale.config --write-schema [PATH]``: rewrite the schema's generated
    ``train_settings`` block from the settings' declarations (default: the workflow's schema)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m valuescale.config", description=main.__doc__)
    parser.add_argument("--write-schema", nargs="?", metavar="PATH", const="", default=None)
    args = parser.parse_args(argv)
    if args.write_schema is None:
        print(render_schema_block(), end="")
        return 0
    path = args.write_schema or str(
        Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    )
    changed = write_schema_block(path)
    print(f"{path}: {'rewritten' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
