"""Rule merge_curves: own runs + imported published archives -> tables/curves.parquet."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    pipeline.merge_curves(tables=list(snakemake.input.tables), out=snakemake.output[0])  # noqa: F821
