# The paper's figures, each as PDF and as PNG (the report embeds the PNGs).


rule figure:
    input:
        unpack(get_figure_inputs),
    output:
        pdf=catalog.figure_path("{figure}", "pdf", RESULTS),
        png=report(
            catalog.figure_path("{figure}", "png", RESULTS),
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
    log:
        f"{LOGS}/figures/{{figure}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{figure}}.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    params:
        settings=analysis_settings("figures"),
    script:
        "../scripts/figure.py"
