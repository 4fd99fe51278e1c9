"""Rule passive_critic_slopes: log-log slopes of validation TD loss vs main / passive width."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    sm = snakemake  # noqa: F821
    pipeline.passive_critic_slopes(
        curves=sm.input.curves, out=sm.output[0], settings=sm.params.settings
    )
