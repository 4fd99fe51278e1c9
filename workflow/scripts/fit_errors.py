"""Rule fit_errors: relative errors of the fits on fitted / interpolated / extrapolated runs."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    sm = snakemake  # noqa: F821
    pipeline.fit_errors(
        crossings=sm.input.crossings,
        fits_data_efficiency=sm.input.fits_data_efficiency,
        best_batch_size=sm.input.best_batch_size,
        fits_batch_size=sm.input.fits_batch_size,
        out=sm.output[0],
        settings=sm.params.settings,
    )
