"""Run the shared speed anchor (``../shared/tools/authors_bro_bench.py``) with several seeds.

The anchor stalls at ``--seeds 5`` on jax 0.10.2 before timing anything: the authors' learner
builds all seeds' networks in one ``jax.jit(jax.vmap(init))`` call, and a vmapped orthogonal
initialisation (a QR per seed) never finishes on XLA CPU (``docs/engine-speed.md``,
"The 5-seed stall"). This script loads the anchor as it is (nothing of it or of the authors'
code is copied) and changes one thing while their agent is *constructed*: the learner module's
``jax.vmap`` becomes a sequential ``jax.lax.map`` over the seeds, so the seeds are initialised one
after the other with the same per-seed keys. The update that is timed is untouched (their
``_do_multiple_updates`` was jitted at import; the learner's ``jax`` is restored right after
construction). With one seed the initial parameters are bit-identical to the unpatched anchor's.

Every flag is the anchor's (see its README); run it as the anchor, from the project root and in
the anchor's venv::

    ~/.cache/anchor-venv/bin/python benchmarks/authors_anchor_seeds.py --ours --seeds 1,5 \\
        --json anchor.json
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

ANCHOR = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "authors_bro_bench.py"


def load_anchor(path: Path = ANCHOR) -> types.ModuleType:
    """Import the anchor script as a module (it is not a package)."""
    if not path.is_file():
        raise SystemExit(
            f"speed anchor not found: {path} (expected beside the project in ../shared)"
        )
    spec = importlib.util.spec_from_file_location("authors_bro_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sequential_jax(jax_module: types.ModuleType) -> types.SimpleNamespace:
    """A stand-in for the ``jax`` module whose ``vmap`` maps a one-argument function over the
    leading axis sequentially (``jax.lax.map``); every other attribute is jax's own."""

    class SequentialJax(types.SimpleNamespace):
        def __getattr__(self, name):
            return getattr(jax_module, name)

    def vmap(fn, *args, **kwargs):
        if args or kwargs:
            raise TypeError("sequential vmap stand-in supports vmap(fn) only")
        return lambda xs: jax_module.lax.map(fn, xs)

    return SequentialJax(vmap=vmap)


def patch(anchor: types.ModuleType) -> None:
    """Wrap the anchor's ``make_authors_agent`` so that the authors' constructor initialises the
    seeds sequentially (the only change), recording that in the printed provenance."""
    build = anchor.make_authors_agent

    def make_authors_agent(agents, blm, *args, **kwargs):
        import jax

        blm.jax = _sequential_jax(jax)
        try:
            return build(agents, blm, *args, **kwargs)
        finally:
            blm.jax = jax

    anchor.make_authors_agent = make_authors_agent
    print(
        "patch: the authors' agent initialises its seeds with jax.lax.map instead of jax.vmap "
        "(construction only; benchmarks/authors_anchor_seeds.py)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    anchor = load_anchor()
    patch(anchor)
    return anchor.main(argv)


if __name__ == "__main__":
    sys.exit(main())
