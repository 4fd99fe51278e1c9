"""Rule summary: the run folders and the fits tables -> the report's study summary page."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale.summary import write_summary

    sm = snakemake  # noqa: F821
    write_summary(
        sm.config,
        sm.output[0],
        fits_data_efficiency=sm.input.fits_data_efficiency,
        fits_batch_size=sm.input.fits_batch_size,
    )
