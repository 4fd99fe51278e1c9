"""Rule published_import: resources/published/<name>.zip -> tables/published/<name>.parquet."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    pipeline.import_published(
        archive=snakemake.input.archive,  # noqa: F821
        name=snakemake.wildcards.name,  # noqa: F821
        out=snakemake.output[0],  # noqa: F821
    )
