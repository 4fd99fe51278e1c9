# From learning curves to scaling laws (method.md section 3): thresholds and crossings D_J with a
# seed bootstrap, best batch sizes, fitted laws, compute- and budget-optimal allocation,
# evaluation tables and the proposal for the next runs. Settings come from config['analysis'] as
# params, so editing one reruns the stages that read it and never training.


rule crossings:
    input:
        curves=f"{TABLES}/curves.parquet",
    output:
        crossings=f"{TABLES}/crossings.parquet",
        thresholds=report(
            f"{TABLES}/thresholds.csv",
            caption="../report/thresholds.rst",
            category="Tables",
            subcategory="Data efficiency",
        ),
        best_batch_size=report(
            f"{TABLES}/best_batch_size.csv",
            caption="../report/best_batch_size.rst",
            category="Tables",
            subcategory="Batch size",
        ),
    log:
        f"{LOGS}/crossings.log",
    benchmark:
        f"{BENCHMARKS}/crossings.tsv"
    conda:
        CONDA_ENV
    threads: config["resources"]["analysis"]["threads"]
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    params:
        settings=analysis_settings("crossings"),
    script:
        "../scripts/crossings.py"


rule fits:
    input:
        crossings=f"{TABLES}/crossings.parquet",
        best_batch_size=f"{TABLES}/best_batch_size.csv",
    output:
        batch_size=report(
            f"{TABLES}/fits_batch_size.csv",
            caption="../report/fits_batch_size.rst",
            category="Tables",
            subcategory="Batch size",
        ),
        data_efficiency=report(
            f"{TABLES}/fits_data_efficiency.csv",
            caption="../report/fits_data_efficiency.rst",
            category="Tables",
            subcategory="Data efficiency",
        ),
    log:
        f"{LOGS}/fits.log",
    benchmark:
        f"{BENCHMARKS}/fits.tsv"
    conda:
        CONDA_ENV
    threads: config["resources"]["analysis"]["threads"]
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    params:
        settings=analysis_settings("fits"),
    script:
        "../scripts/fits.py"


rule allocation:
    input:
        crossings=f"{TABLES}/crossings.parquet",
        fits_data_efficiency=f"{TABLES}/fits_data_efficiency.csv",
        fits_batch_size=f"{TABLES}/fits_batch_size.csv",
    output:
        compute_optimal=report(
            f"{TABLES}/compute_optimal.csv",
            caption="../report/compute_optimal.rst",
            category="Tables",
            subcategory="Allocation",
        ),
        budget_optimal=report(
            f"{TABLES}/budget_optimal.csv",
            caption="../report/budget_optimal.rst",
            category="Tables",
            subcategory="Allocation",
        ),
        budget_fits=report(
            f"{TABLES}/budget_fits.csv",
            caption="../report/budget_fits.rst",
            category="Tables",
            subcategory="Allocation",
        ),
    log:
        f"{LOGS}/allocation.log",
    benchmark:
        f"{BENCHMARKS}/allocation.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    params:
        settings=analysis_settings("allocation"),
    script:
        "../scripts/allocation.py"


rule fit_errors:
    input:
        crossings=f"{TABLES}/crossings.parquet",
        fits_data_efficiency=f"{TABLES}/fits_data_efficiency.csv",
        best_batch_size=f"{TABLES}/best_batch_size.csv",
        fits_batch_size=f"{TABLES}/fits_batch_size.csv",
    output:
        report(
            f"{TABLES}/fit_errors.csv",
            caption="../report/fit_errors.rst",
            category="Tables",
            subcategory="Evaluation",
        ),
    log:
        f"{LOGS}/fit_errors.log",
    benchmark:
        f"{BENCHMARKS}/fit_errors.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    params:
        settings=analysis_settings("evaluation"),
    script:
        "../scripts/fit_errors.py"


rule allocation_strategies:
    input:
        crossings=f"{TABLES}/crossings.parquet",
        design=get_design_tables(),
    output:
        report(
            f"{TABLES}/allocation_strategies.csv",
            caption="../report/allocation_strategies.rst",
            category="Tables",
            subcategory="Evaluation",
        ),
    log:
        f"{LOGS}/allocation_strategies.log",
    benchmark:
        f"{BENCHMARKS}/allocation_strategies.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    params:
        settings=analysis_settings("evaluation"),
    script:
        "../scripts/allocation_strategies.py"


rule passive_critic_slopes:
    input:
        curves=f"{TABLES}/curves.parquet",
    output:
        report(
            f"{TABLES}/passive_critic_slopes.csv",
            caption="../report/passive_critic_slopes.rst",
            category="Tables",
            subcategory="Evaluation",
        ),
    log:
        f"{LOGS}/passive_critic_slopes.log",
    benchmark:
        f"{BENCHMARKS}/passive_critic_slopes.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    params:
        settings=analysis_settings("evaluation"),
    script:
        "../scripts/passive_critic_slopes.py"


rule proposal:
    input:
        fits_data_efficiency=f"{TABLES}/fits_data_efficiency.csv",
        fits_batch_size=f"{TABLES}/fits_batch_size.csv",
        compute_optimal=f"{TABLES}/compute_optimal.csv",
        budget_fits=f"{TABLES}/budget_fits.csv",
    output:
        report(
            f"{RESULTS}/proposal.yaml",
            caption="../report/proposal.rst",
            category="Proposal",
        ),
    log:
        f"{LOGS}/proposal.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    params:
        settings=analysis_settings("proposal"),
    script:
        "../scripts/proposal.py"
