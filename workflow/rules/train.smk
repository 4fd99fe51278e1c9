# One train job = the seeds of one block of one cell configuration (env, agent, utd, width,
# batch size, lr), trained together in one process. Training settings that are not in the path
# are params, so changing them reruns the job; an interrupted job resumes from the checkpoint the
# engine keeps in the run folder; a checkpoint (or run.json) written with other training settings
# is deleted by the engine first, with a line in the log (--discard-stale, valuescale.rundir). The
# engine replaces the job's shell (exec): a signal to the job reaches it and nothing outlives it. It
# writes the outputs only when the run is complete (progress.* beside the checkpoint until then)
# and holds the run folder while it trains: a rerun's engine (--wait) waits for an engine that
# outlived a killed Snakemake, then returns the run it completed (kept in .complete/), untrained.


rule train:
    output:
        curves=f"{RUN_DIR}/curves.parquet",
        run=f"{RUN_DIR}/run.json",
    log:
        f"{LOGS}/train/{RUN_NAME}.log",
    benchmark:
        f"{BENCHMARKS}/train/{RUN_NAME}.tsv"
    conda:
        CONDA_ENV
    threads: config["resources"]["train"]["threads"]
    resources:
        mem_mb=get_train_mem_mb,
        runtime=get_train_runtime,
        gpu=config["resources"]["train"]["gpu"],
    params:
        args=get_train_args,
        run_args=get_train_run_args,
    shell:
        "args='--env {wildcards.env} --agent {wildcards.agent} --utd {wildcards.utd}"
        " --width {wildcards.width} --batch-size {wildcards.batch_size} --lr {wildcards.lr}"
        " {params.args} {params.run_args} --threads {threads} --discard-stale --wait';"
        " exec python -m valuescale.train $args > {log} 2>&1"
