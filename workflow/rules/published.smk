# The authors' published learning curves: fetch a zip (download from a URL base or copy from a
# local folder, config key published_source), verify its SHA-256, import it into the long table.


rule published_fetch:
    output:
        f"{RESOURCES}/published/{{name}}.zip",
    log:
        f"{LOGS}/published_fetch/{{name}}.log",
    retries: 2
    conda:
        CONDA_ENV
    params:
        sha256=lambda wildcards: config["published"]["zips"][wildcards.name]["sha256"],
        checksum_record=lambda wildcards: f"{RESOURCES}/published/checksums/{wildcards.name}.sha256",
    script:
        "../scripts/published_fetch.py"


rule published_import:
    input:
        archive=f"{RESOURCES}/published/{{name}}.zip",
    output:
        TABLE["published"],
    log:
        f"{LOGS}/published_import/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/published_import/{{name}}.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=config["resources"]["analysis"]["mem_mb"],
        runtime=config["resources"]["analysis"]["runtime"],
    script:
        "../scripts/published_import.py"
