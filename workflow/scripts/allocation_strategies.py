"""Rule allocation_strategies: data needed by compute-optimal vs utd-only vs model-only runs."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    sm = snakemake  # noqa: F821
    pipeline.allocation_strategies(
        crossings=sm.input.crossings,
        design=list(sm.input.design),
        out=sm.output[0],
        settings=sm.params.settings,
    )
