"""Rule figure: one named figure (PDF + PNG) from the tables it is drawn from."""

from _logging import logged

with logged(snakemake):  # noqa: F821
    from valuescale import pipeline

    sm = snakemake  # noqa: F821
    pipeline.figure(
        name=sm.wildcards.figure,
        inputs={key: str(path) for key, path in sm.input.items()},
        out_pdf=sm.output.pdf,
        out_png=sm.output.png,
        settings=sm.params.settings,
    )
