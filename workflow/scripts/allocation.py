"""Rule allocation: fitted laws -> compute-optimal and budget-optimal allocations."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    sm = snakemake  # noqa: F821
    pipeline.allocation(
        crossings=sm.input.crossings,
        fits_data_efficiency=sm.input.fits_data_efficiency,
        fits_batch_size=sm.input.fits_batch_size,
        out_compute_optimal=sm.output.compute_optimal,
        out_budget_optimal=sm.output.budget_optimal,
        out_budget_fits=sm.output.budget_fits,
        settings=sm.params.settings,
    )
