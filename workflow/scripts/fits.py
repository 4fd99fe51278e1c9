"""Rule fits: crossings and best batch sizes -> batch-size and data-efficiency law fits."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    sm = snakemake  # noqa: F821
    pipeline.fits(
        crossings=sm.input.crossings,
        best_batch_size=sm.input.best_batch_size,
        out_batch_size=sm.output.batch_size,
        out_data_efficiency=sm.output.data_efficiency,
        settings=sm.params.settings,
    )
