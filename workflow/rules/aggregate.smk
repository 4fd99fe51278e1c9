# All train jobs' curves -> one long table of own runs, then merged with the imported published
# archives into the study's curve table.


rule aggregate:
    input:
        runs=get_train_runs(),
    output:
        TABLE["curves_own"],
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    script:
        "../scripts/aggregate.py"


rule merge_curves:
    input:
        tables=get_curve_tables(),
    output:
        TABLE["curves"],
    log:
        f"{LOGS}/merge_curves.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    script:
        "../scripts/merge_curves.py"
