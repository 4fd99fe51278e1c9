"""Rule aggregate: every train job's curves.parquet (and run.json) -> tables/curves_own.parquet."""

from _logging import logged

with logged(snakemake):  # noqa: F821 (snakemake is injected by Snakemake)
    from valuescale import pipeline

    pipeline.aggregate_runs(runs=list(snakemake.input.runs), out=snakemake.output[0])  # noqa: F821
