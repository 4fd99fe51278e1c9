"""The pieces of benchmark scripts that change what another program runs (no timings here)."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sequential_init_gives_the_vmapped_parameters_and_restores_jax():
    seeds_tool = _load("authors_anchor_seeds")

    def init(seed):  # the shape of the authors' per-seed initialiser: a key from an int seed
        key = jax.random.PRNGKey(seed)
        return jax.nn.initializers.orthogonal(np.sqrt(2.0))(key, (7, 5)), jnp.sin(seed * 1.0)

    seeds = jnp.arange(3)
    sequential = seeds_tool._sequential_jax(jax)
    assert sequential.random is jax.random  # everything but vmap is jax's own
    got = jax.jit(sequential.vmap(init))(seeds)
    want = [init(s) for s in range(3)]
    for i in range(3):
        np.testing.assert_allclose(got[0][i], want[i][0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[1][i], want[i][1], rtol=1e-6)
    with pytest.raises(TypeError, match="vmap\\(fn\\) only"):
        sequential.vmap(init, in_axes=0)

    # the patch swaps the learner module's jax only while the agent is built
    seen = {}
    learner = types.SimpleNamespace(jax=jax)

    def build(agents, blm, *args):
        seen["jax"] = blm.jax
        raise RuntimeError("constructor failed")

    anchor = types.SimpleNamespace(make_authors_agent=build)
    seeds_tool.patch(anchor)
    with pytest.raises(RuntimeError, match="constructor failed"):
        anchor.make_authors_agent(None, learner)
    assert seen["jax"] is not jax and seen["jax"].numpy is jax.numpy
    assert learner.jax is jax
