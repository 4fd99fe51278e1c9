"""Environments by the paper's names: DeepMind Control suite tasks and (optionally) HumanoidBench.

``make_env(name, seed)`` returns a small single-environment wrapper with a uniform interface:

- ``obs_dim``, ``act_dim``, ``max_episode_steps``;
- ``reset() -> obs`` (float32, shape ``[obs_dim]``);
- ``step(action) -> (obs, reward, terminated, truncated)`` with ``action`` in ``[-1, 1]^act_dim``
  (clipped, then rescaled to the task's own bounds);
- ``get_state() -> dict`` / ``set_state(state)``: a small picklable snapshot (numpy arrays and
  Python scalars) that continues the environment bit for bit, used by checkpoint/resume.

DMC conventions (the paper's): action repeat 1 (one control step of the task per agent step),
episodes of ``max_episode_steps`` (default 1000) agent steps, no termination: ``terminated`` is
always False for the suite's tasks and the time limit is reported as ``truncated`` (bootstrap
through it). Observations are the task's observation dict flattened in the task's own key order
(the order of ``observation_spec()``), scalars as one element, cast to float32.

Names: ``cheetah-run``, ``finger-turn`` (dm_control's ``finger/turn_hard``), ``dog-trot``, ... and
generically ``<domain>-<task>`` for every dm_control suite task (``cartpole-swingup``,
``ball_in_cup-catch``, ``finger-turn_hard``). HumanoidBench ids (``h1-crawl-v0``, ...) need the
optional ``humanoid_bench`` package (not on PyPI; see ``HUMANOID_BENCH_INSTALL``): upstream
HumanoidBench at commit ``HUMANOID_BENCH_COMMIT``. ``import humanoid_bench`` imports torch through
one module that only hierarchical reach policies use; this adapter never builds those and puts a
stand-in for that module into ``sys.modules`` first (``_without_torch``), so neither torch nor
upstream's pins are needed.

Snapshot of a DMC env: the task's random state at the start of the current episode, its random
state now, MuJoCo's full integration state (``mj_getState(..., mjSTATE_INTEGRATION)``: time,
qpos, qvel, act, warm start, controls, ...) and the step within the episode. Restoring replays the
episode's ``reset()`` from the saved episode-start random state (this redoes any model changes the
task makes at the start of an episode, e.g. finger/fish/reacher target positions), then overwrites
the integration state and recomputes the position/velocity stage (``mj_step1``), which is the
invariant dm_control keeps between steps. Tasks that keep other Python-side state between steps are
not covered (none of the paper's tasks do).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import sys
import types
from typing import Any

import numpy as np

#: The paper's environment names that differ from ``<domain>-<task>`` in dm_control.
DMC_ALIASES: dict[str, tuple[str, str]] = {
    "finger-turn": ("finger", "turn_hard"),
}

#: DMC tasks used in the paper (Fu, Rybkin et al. 2025, Table 2).
PAPER_DMC_ENVS: tuple[str, ...] = (
    "humanoid-stand",
    "acrobot-swingup",
    "cheetah-run",
    "finger-turn",
    "fish-swim",
    "hopper-hop",
    "quadruped-run",
    "walker-run",
    "dog-run",
    "dog-trot",
    "dog-stand",
    "dog-walk",
    "humanoid-run",
    "humanoid-walk",
)

#: HumanoidBench tasks used in the paper (any other registered ``h1*`` id works too).
PAPER_HUMANOIDBENCH_ENVS: tuple[str, ...] = ("h1-crawl-v0", "h1-pole-v0", "h1-stand-v0")

#: Upstream HumanoidBench commit the adapter is tested with (``../shared/vendor`` holds a trimmed,
#: unmodified copy). Upstream's newest commit (791405f) fails with our mujoco pin.
HUMANOID_BENCH_COMMIT = "217b38fb55ac929d6191aa89253ed90ddc5b4f55"

HUMANOID_BENCH_INSTALL = (
    "HumanoidBench is not on PyPI. Install upstream's commit 217b38f as an editable clone, without "
    "its dependency pins (a plain pip install from git gives a wheel that cannot be imported):\n"
    "  git clone https://github.com/carlosferrazza/humanoid-bench && "
    f"git -C humanoid-bench checkout {HUMANOID_BENCH_COMMIT}\n"
    "  pip install --no-deps -e ./humanoid-bench\n"
    "  pip install -e '.[humanoidbench]'   (from the valuescale checkout; torch is not needed)"
)

#: The one HumanoidBench module that imports torch (and jax). ``wrappers.py`` and the reach, push
#: and package tasks import ``TorchModel``/``TorchPolicy`` from it; only the hierarchical reach
#: wrappers (``policy_type`` other than flat) build one, and ``HumanoidBenchEnv`` never asks for them.
_TORCH_MODULE = "humanoid_bench.mjx.flax_to_torch"

_HUMANOID_BENCH_RE = re.compile(r"^h1[a-z0-9_]*-[a-z0-9_]+-v\d+$")


class _QuietDeprecatedMjcf(logging.Filter):
    """Drops mujoco's compiler warning about dm_control's own ``settotalmass`` attribute (cheetah
    and others log it once per env built; it is not ours to fix)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "settotalmass" not in record.getMessage()


def _suite() -> Any:
    """``dm_control.suite``. dm_control and mujoco pick an OpenGL backend at import; DMC training
    never renders, so unless the user chose a backend (MUJOCO_GL) none is probed (this also
    silences the GLFW warning). HumanoidBench does the same (``_import_humanoid_bench``)."""
    os.environ.setdefault("MUJOCO_GL", "disable")
    from dm_control import suite

    absl_log = logging.getLogger("absl")
    if not any(isinstance(f, _QuietDeprecatedMjcf) for f in absl_log.filters):
        absl_log.addFilter(_QuietDeprecatedMjcf())

    return suite


def _dmc_tasks() -> list[tuple[str, str]]:
    return list(_suite().ALL_TASKS)


def list_envs() -> list[str]:
    """All accepted environment names: the paper's DMC names, every dm_control suite task as
    ``<domain>-<task>``, and the paper's HumanoidBench ids (those need ``humanoid_bench``)."""
    names = set(PAPER_DMC_ENVS) | set(DMC_ALIASES)
    names |= {f"{d}-{t}" for d, t in _dmc_tasks()}
    names |= set(PAPER_HUMANOIDBENCH_ENVS)
    return sorted(names)


def is_humanoid_bench(name: str) -> bool:
    """True for HumanoidBench ids (``h1-...-vN``, ``h1hand-...-vN``)."""
    return bool(_HUMANOID_BENCH_RE.match(name))


def resolve_dmc(name: str) -> tuple[str, str]:
    """``(domain, task)`` of a DMC env name; ValueError listing the valid names if unknown."""
    if name in DMC_ALIASES:
        return DMC_ALIASES[name]
    tasks = set(_dmc_tasks())
    if "-" in name:
        domain, task = name.split("-", 1)
        if (domain, task) in tasks:
            return domain, task
    raise ValueError(f"unknown env {name!r}; valid names: {', '.join(list_envs())}")


def check_env_name(name: str) -> None:
    """Raise ValueError (listing valid names, or how to install HumanoidBench) if ``name`` is not
    an environment ``make_env`` can build. Does not build the environment."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"env must be a non-empty string, got {name!r}")
    if is_humanoid_bench(name):
        _import_humanoid_bench(name)
        import gymnasium

        if name not in gymnasium.registry:
            raise ValueError(
                f"unknown HumanoidBench env {name!r}; registered: "
                + ", ".join(sorted(k for k in gymnasium.registry if is_humanoid_bench(k)))
            )
        return
    resolve_dmc(name)


class DMCEnv:
    """One dm_control suite task with flat float32 observations and actions in [-1, 1]."""

    def __init__(self, name: str, seed: int, max_episode_steps: int = 1000) -> None:
        suite = _suite()
        domain, task = resolve_dmc(name)
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.name = name
        self.seed = int(seed)
        self.max_episode_steps = int(max_episode_steps)
        # time_limit=inf: the episode length is ours (max_episode_steps), not the task's default.
        self._env = suite.load(
            domain, task, task_kwargs={"random": self.seed, "time_limit": float("inf")}
        )
        self._keys = list(self._env.observation_spec().keys())
        spec = self._env.action_spec()
        self._low = np.asarray(spec.minimum, dtype=np.float64) * np.ones(spec.shape)
        self._high = np.asarray(spec.maximum, dtype=np.float64) * np.ones(spec.shape)
        self.act_dim = int(np.prod(spec.shape))
        self.obs_dim = int(
            sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
        )
        self._t = 0
        self._episode_random_state: Any = None
        self._needs_reset = True

    def _flatten(self, observation: dict[str, Any]) -> np.ndarray:
        return np.concatenate(
            [np.asarray(observation[k], dtype=np.float32).reshape(-1) for k in self._keys]
        )

    def reset(self) -> np.ndarray:
        """Start a new episode; returns the first observation."""
        self._episode_random_state = self._env.task.random.get_state()
        ts = self._env.reset()
        self._t = 0
        self._needs_reset = False
        return self._flatten(ts.observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Apply ``action`` (in [-1, 1]) for one control step."""
        if self._needs_reset:
            raise RuntimeError(f"{self.name}: step() called before reset() (or after episode end)")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if a.shape[0] != self.act_dim:
            raise ValueError(
                f"{self.name}: action has {a.shape[0]} elements, expected {self.act_dim}"
            )
        ts = self._env.step(self._low + (a + 1.0) * 0.5 * (self._high - self._low))
        self._t += 1
        # The suite's tasks never terminate; a task that does says so with discount 0.
        terminated = bool(ts.last() and ts.discount is not None and ts.discount == 0.0)
        truncated = (self._t >= self.max_episode_steps or ts.last()) and not terminated
        if terminated or truncated:
            self._needs_reset = True
        return self._flatten(ts.observation), float(ts.reward), terminated, bool(truncated)

    def get_state(self) -> dict[str, Any]:
        """Picklable snapshot that continues this env bit for bit (see module docstring)."""
        import mujoco

        physics = self._env.physics
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(physics.model.ptr, spec), dtype=np.float64)
        mujoco.mj_getState(physics.model.ptr, physics.data.ptr, state, spec)
        return {
            "kind": "dmc",
            "name": self.name,
            "t": self._t,
            "needs_reset": self._needs_reset,
            "episode_random_state": self._episode_random_state,
            "random_state": self._env.task.random.get_state(),
            "physics": state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a snapshot taken with ``get_state`` of an env of the same name."""
        import mujoco

        if state.get("kind") != "dmc" or state.get("name") != self.name:
            raise ValueError(
                f"env snapshot is for {state.get('kind')}:{state.get('name')}, not dmc:{self.name}"
            )
        if state["episode_random_state"] is not None:
            # Redo this episode's reset: the same initial state and model changes (targets).
            self._env.task.random.set_state(state["episode_random_state"])
            self._env.reset()
            physics = self._env.physics
            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            mujoco.mj_setState(physics.model.ptr, physics.data.ptr, state["physics"], spec)
            mujoco.mj_step1(physics.model.ptr, physics.data.ptr)
        self._episode_random_state = state["episode_random_state"]
        self._env.task.random.set_state(state["random_state"])
        self._t = int(state["t"])
        self._needs_reset = bool(state["needs_reset"])


def _refuse_torch(*args: Any, **kwargs: Any) -> Any:
    raise ImportError(
        f"{_TORCH_MODULE} is valuescale's torch-free stand-in: HumanoidBench's hierarchical reach "
        "policies (policy_type other than flat) are not supported by valuescale's adapter"
    )


def _without_torch() -> bool:
    """Put a stand-in for ``humanoid_bench.mjx.flax_to_torch`` into ``sys.modules`` unless
    HumanoidBench is already imported; True if it did. The stand-in has the names upstream imports
    from it (``TorchModel``, ``TorchPolicy``, ``flax_to_torch``); building any of them raises
    ImportError. The flat tasks never build them, so their dynamics and observations are
    upstream's (checked bit for bit against a torch install)."""
    if "humanoid_bench" in sys.modules or _TORCH_MODULE in sys.modules:
        return False
    stub = types.ModuleType(_TORCH_MODULE, "valuescale's torch-free stand-in (see valuescale.envs)")
    stub.TorchModel = type("TorchModel", (), {"__init__": _refuse_torch})
    stub.TorchPolicy = type("TorchPolicy", (), {"__init__": _refuse_torch})
    stub.flax_to_torch = _refuse_torch
    stub.VALUESCALE_STAND_IN = True
    sys.modules[_TORCH_MODULE] = stub
    return True


def _import_humanoid_bench(name: str) -> None:
    # The adapter builds envs with render_mode=None (no OpenGL context), so no GL backend is
    # probed either (as for DMC; this also silences GLFW's "DISPLAY is missing" warning).
    os.environ.setdefault("MUJOCO_GL", "disable")
    stubbed = _without_torch()
    try:
        import humanoid_bench  # noqa: F401  (registers the h1* gymnasium ids)
    except ImportError as e:
        if stubbed:
            del sys.modules[_TORCH_MODULE]  # leave no trace of a failed import
        raise ValueError(
            f"env {name!r} is a HumanoidBench task, but `import humanoid_bench` failed ({e}).\n"
            + HUMANOID_BENCH_INSTALL
        ) from e


class HumanoidBenchEnv:
    """One HumanoidBench task (gymnasium API) with the same interface as ``DMCEnv``.

    ``terminated`` is cast to bool (mask 0 only on termination); the time limit is ours
    (``max_episode_steps``) and reported as truncation. The snapshot holds the episode-start and
    current ``np_random`` states, MuJoCo's integration state and the step within the episode.
    """

    def __init__(self, name: str, seed: int, max_episode_steps: int = 1000) -> None:
        check_env_name(name)
        import gymnasium

        self.name = name
        self.seed = int(seed)
        self.max_episode_steps = int(max_episode_steps)
        # render_mode=None: no viewer, no OpenGL context. Upstream prints a stray line on every
        # construction; it is dropped.
        with contextlib.redirect_stdout(io.StringIO()):
            env = gymnasium.make(name, render_mode=None)
        self._env = env.unwrapped  # our own time limit; no TimeLimit/autoreset wrappers
        self.obs_dim = int(np.prod(self._env.observation_space.shape))
        self.act_dim = int(np.prod(self._env.action_space.shape))
        self._low = np.asarray(self._env.action_space.low, dtype=np.float64).reshape(-1)
        self._high = np.asarray(self._env.action_space.high, dtype=np.float64).reshape(-1)
        self._seeded = False
        self._t = 0
        self._episode_random_state: Any = None
        self._needs_reset = True

    def reset(self) -> np.ndarray:
        """Start a new episode; returns the first observation."""
        if not self._seeded:
            obs, _ = self._env.reset(seed=self.seed)
            self._seeded = True
            # reset(seed=...) reseeds np_random before resetting; record the post-seed state by
            # replaying: the episode-start state is the freshly seeded generator's.
            self._episode_random_state = ("seed", self.seed)
        else:
            self._episode_random_state = self._env.np_random.bit_generator.state
            obs, _ = self._env.reset()
        self._t = 0
        self._needs_reset = False
        return np.asarray(obs, dtype=np.float32).reshape(-1)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Apply ``action`` (in [-1, 1]) for one step."""
        if self._needs_reset:
            raise RuntimeError(f"{self.name}: step() called before reset() (or after episode end)")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        obs, reward, terminated, _, _ = self._env.step(a.astype(np.float32))
        self._t += 1
        terminated = bool(terminated)
        truncated = self._t >= self.max_episode_steps and not terminated
        if terminated or truncated:
            self._needs_reset = True
        return np.asarray(obs, dtype=np.float32).reshape(-1), float(reward), terminated, truncated

    def get_state(self) -> dict[str, Any]:
        """Picklable snapshot (see class docstring)."""
        import mujoco

        model, data = self._env.model, self._env.data
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(model, spec), dtype=np.float64)
        mujoco.mj_getState(model, data, state, spec)
        return {
            "kind": "humanoidbench",
            "name": self.name,
            "t": self._t,
            "seeded": self._seeded,
            "needs_reset": self._needs_reset,
            "episode_random_state": self._episode_random_state,
            "random_state": self._env.np_random.bit_generator.state if self._seeded else None,
            "physics": state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a snapshot taken with ``get_state`` of an env of the same name."""
        import mujoco

        if state.get("kind") != "humanoidbench" or state.get("name") != self.name:
            raise ValueError(
                f"env snapshot is for {state.get('kind')}:{state.get('name')}, "
                f"not humanoidbench:{self.name}"
            )
        start = state["episode_random_state"]
        if start is not None:
            if isinstance(start, tuple) and start[0] == "seed":
                self._env.reset(seed=int(start[1]))
            else:
                self._env.np_random.bit_generator.state = start
                self._env.reset()
            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            mujoco.mj_setState(self._env.model, self._env.data, state["physics"], spec)
            mujoco.mj_forward(self._env.model, self._env.data)
        self._seeded = bool(state["seeded"])
        if state["random_state"] is not None:
            self._env.np_random.bit_generator.state = state["random_state"]
        self._episode_random_state = start
        self._t = int(state["t"])
        self._needs_reset = bool(state["needs_reset"])


Env = DMCEnv | HumanoidBenchEnv


def make_env(name: str, seed: int, max_episode_steps: int = 1000) -> Env:
    """Build environment ``name`` seeded with ``seed`` (see module docstring for conventions)."""
    if is_humanoid_bench(name):
        return HumanoidBenchEnv(name, seed, max_episode_steps)
    return DMCEnv(name, seed, max_episode_steps)


class ActionRepeat:
    """An env (this module's interface) stepped ``repeat`` times per agent step.

    Rewards of the repeated steps are summed; a termination or truncation inside the repeat ends
    the agent step early. The inner env's time limit (simulator steps) stays in force, so an
    episode has ``ceil(max_episode_steps / repeat)`` agent steps (500 for 1000 and 2).
    """

    def __init__(self, env: Any, repeat: int) -> None:
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ValueError(f"ActionRepeat: repeat must be a positive int, got {repeat!r}")
        self.env, self.repeat = env, repeat
        self.obs_dim, self.act_dim = env.obs_dim, env.act_dim
        self.max_episode_steps = math.ceil(env.max_episode_steps / repeat)

    def reset(self) -> np.ndarray:
        return self.env.reset()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated

    def get_state(self) -> dict[str, Any]:
        return self.env.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state)
