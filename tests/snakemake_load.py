"""Load the workflow (the Snakefile and its config checks, no DAG) once per config, all in one
process: ``python snakemake_load.py SNAKEFILE CASES.json`` prints, as JSON, one entry per
``[workdir, configfile]`` of CASES.json: null when the workflow loaded, else the error with its
traceback. Snakemake's API changes into each workdir and keeps global state, hence a process of
its own (``studies.load_workflows``); importing Snakemake once instead of once per config is what
makes it cheap (about 0.4 s per config instead of 3 s)."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings


def load(snakefile: Path, workdir: Path, configfile: Path) -> str | None:
    try:
        with SnakemakeApi(OutputSettings()) as api:
            workflow = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=[configfile]),
                snakefile=snakefile,
                workdir=workdir,
            )
            workflow.dag()  # reads the Snakefile: every config check runs here
    except Exception as error:  # noqa: BLE001 - reported to the test, which asserts on it
        return "".join(traceback.format_exception(error))
    return None


if __name__ == "__main__":
    snakefile, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    results = [load(snakefile, Path(w), Path(c)) for w, c in cases]
    print(json.dumps(results))
