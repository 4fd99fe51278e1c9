"""Agents by name: the engine's registry (JAX-free).

``AGENTS`` maps each implemented agent's name to its package; the package's ``Config`` (its config
dataclass) loads without JAX, the rest (``valuescale.agents.base.Agent``'s functions) on first use.
Adding an agent: its package (``Config``, ``NAME`` and the protocol's functions), one line here,
its name out of ``RESERVED_AGENTS``, then ``python -m valuescale.config --write-schema`` (the
workflow schema's ``train`` block gains its settings) and the schema's agent enum.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from valuescale.agents.base import GRID_FIELDS, Agent

AGENTS: dict[str, str] = {
    "bro": "valuescale.agents.bro",
    "simbav2": "valuescale.agents.simbav2",
}
"""Implemented agents: name -> package."""

RESERVED_AGENTS: tuple[str, ...] = ()
"""Agent names the workflow already knows that are not implemented yet."""


def _package(name: str) -> Any:
    if name not in AGENTS:
        if name in RESERVED_AGENTS:
            raise KeyError(f"agent {name!r} is reserved but not implemented yet")
        raise KeyError(f"unknown agent {name!r}; valid: {', '.join(AGENTS)}")
    return importlib.import_module(AGENTS[name])


def config_class(name: str) -> type:
    """The config dataclass of agent ``name`` (no JAX import); ``KeyError`` saying why for an
    unknown or reserved name."""
    cls = _package(name).Config
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [f for f in GRID_FIELDS if f not in names]
    if missing:
        raise TypeError(f"agent {name!r}: {cls.__name__} lacks the grid fields {missing}")
    return cls


def get_agent(name: str) -> Agent:
    """The implementation of agent ``name`` (its functions import JAX on first use)."""
    return _package(name)
