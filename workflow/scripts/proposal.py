"""Rule proposal: the compute-optimal (utd, width, batch size) to run next, as a config fragment."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    sm = snakemake  # noqa: F821
    pipeline.proposal(
        fits_data_efficiency=sm.input.fits_data_efficiency,
        fits_batch_size=sm.input.fits_batch_size,
        compute_optimal=sm.input.compute_optimal,
        budget_fits=sm.input.budget_fits,
        out=sm.output[0],
        settings=sm.params.settings,
    )
