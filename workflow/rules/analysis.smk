# From learning curves to scaling laws (method.md section 3): thresholds and crossings D_J with a
# seed bootstrap, best batch sizes, fitted laws, compute- and budget-optimal allocation,
# evaluation tables and the proposal for the next runs. Settings come from config['analysis'] as
# params, so editing one reruns the stages that read it and never training.


rule crossings:
    input:
        curves=TABLE["curves"],
    output:
        crossings=TABLE["crossings"],
        thresholds=report(
            TABLE["thresholds"],
            caption="../report/thresholds.rst",
            category="Tables",
            subcategory="Data efficiency",
        ),
        best_batch_size=report(
            TABLE["best_batch_size"],
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
        crossings=TABLE["crossings"],
        best_batch_size=TABLE["best_batch_size"],
    output:
        batch_size=report(
            TABLE["fits_batch_size"],
            caption="../report/fits_batch_size.rst",
            category="Tables",
            subcategory="Batch size",
        ),
        data_efficiency=report(
            TABLE["fits_data_efficiency"],
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
        crossings=TABLE["crossings"],
        fits_data_efficiency=TABLE["fits_data_efficiency"],
        fits_batch_size=TABLE["fits_batch_size"],
    output:
        compute_optimal=report(
            TABLE["compute_optimal"],
            caption="../report/compute_optimal.rst",
            category="Tables",
            subcategory="Allocation",
        ),
        budget_optimal=report(
            TABLE["budget_optimal"],
            caption="../report/budget_optimal.rst",
            category="Tables",
            subcategory="Allocation",
        ),
        budget_fits=report(
            TABLE["budget_fits"],
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
        crossings=TABLE["crossings"],
        fits_data_efficiency=TABLE["fits_data_efficiency"],
        best_batch_size=TABLE["best_batch_size"],
        fits_batch_size=TABLE["fits_batch_size"],
    output:
        report(
            TABLE["fit_errors"],
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
        crossings=TABLE["crossings"],
        design=get_design_tables(),
    output:
        report(
            TABLE["allocation_strategies"],
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
        curves=TABLE["curves"],
    output:
        report(
            TABLE["passive_critic_slopes"],
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
        fits_data_efficiency=TABLE["fits_data_efficiency"],
        fits_batch_size=TABLE["fits_batch_size"],
        compute_optimal=TABLE["compute_optimal"],
        budget_fits=TABLE["budget_fits"],
    output:
        report(
            TABLE["proposal"],
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
