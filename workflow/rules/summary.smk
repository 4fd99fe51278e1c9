# The study summary page of the HTML report: cells by state, wall time and core-hours per cell,
# and the fitted laws' parameters with their confidence intervals (valuescale.summary).


rule summary:
    input:
        runs=get_train_summaries(),
        fits_data_efficiency=TABLE["fits_data_efficiency"],
        fits_batch_size=TABLE["fits_batch_size"],
    output:
        report(
            TABLE["summary"],
            caption="../report/summary.rst",
            category="Study summary",
        ),
    log:
        f"{LOGS}/summary.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    script:
        "../scripts/summary.py"
