"""Rule crossings: curves -> thresholds, bootstrap crossings D_J and best batch sizes."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    sm = snakemake  # noqa: F821
    pipeline.crossings(
        curves=sm.input.curves,
        out_crossings=sm.output.crossings,
        out_thresholds=sm.output.thresholds,
        out_best_batch_size=sm.output.best_batch_size,
        settings=sm.params.settings,
    )
