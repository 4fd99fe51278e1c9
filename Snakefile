# Compute-optimal scaling for value-based deep RL (Fu, Rybkin et al. 2025): train a grid of BRO
# agents, fit the paper's scaling laws to the learning curves (own and/or published), and render
# the tables, figures and report. See config/README.md for the configuration.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# Jobs find the package's interpreter through PATH (see workflow/rules/common.smk).
envvars:
    "PATH",


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/published.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/summary.smk"


# Run by Snakemake itself, also under a cluster executor: the target rule, and downloads (compute
# nodes often have no internet).
localrules:
    all,
    published_fetch,


rule all:
    input:
        get_final_output(),
