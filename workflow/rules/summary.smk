# The study summary page of the HTML report: cells by state, wall time and core-hours per cell,
# and the fitted laws' parameters with their confidence intervals (valuescale.summary).


rule summary:
    input:
        runs=get_train_summaries(),
        fits_data_efficiency=f"{TABLES}/fits_data_efficiency.csv",
        fits_batch_size=f"{TABLES}/fits_batch_size.csv",
    output:
        report(
            f"{RESULTS}/summary.html",
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
