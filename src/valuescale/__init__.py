"""valuescale: compute-optimal scaling laws for value-based deep RL.

Subpackages: ``networks`` and ``agents`` (JAX BRO / SimbaV2), ``envs`` and ``replay``,
``train`` (the vmapped multi-seed training engine and its CLI), ``analysis`` (scaling-law
fits) and ``plots`` (the paper's figures).
"""

__version__ = "0.1.0"
