"""The catalogue of tables and figures (valuescale.catalog) is their one home: the plots, the
workflow's rule files, the stage functions and the analysis benchmark read it, and none keeps its
own copy of a table's file name. (That the stages write the catalogue's columns:
``tests/test_pipeline.py::test_stages_write_the_catalogue_columns``.)"""

from __future__ import annotations

import re
from pathlib import Path

from valuescale import catalog
from valuescale.analysis.batch_size_fit import BATCH_PARAMS
from valuescale.analysis.data_efficiency import DE_PARAMS
from valuescale.plots import FIGURE_INPUTS, FIGURE_SPECS, FIGURES

REPO = Path(__file__).resolve().parents[1]


def test_every_figure_reads_catalogue_tables_and_columns() -> None:
    assert list(FIGURES) == list(catalog.FIGURES)
    for name, specs in FIGURE_SPECS.items():
        figure = catalog.FIGURES[name]
        assert FIGURE_INPUTS[name] == figure.required
        assert set(figure.required) <= set(specs) <= set(figure.inputs), name
        for key, spec in specs.items():
            known = set(catalog.TABLES[key].all_columns)
            unknown = (set(spec.required) | set(spec.optional)) - known
            assert not unknown, f"{name} reads {sorted(unknown)} of {key}: not in the catalogue"


def test_table_entries_are_consistent() -> None:
    assert set(DE_PARAMS) <= set(catalog.columns("fits_data_efficiency"))
    assert set(BATCH_PARAMS) <= set(catalog.columns("fits_batch_size"))
    files = [t.file for t in catalog.TABLES.values()]
    assert len(set(files)) == len(files)
    for table in catalog.TABLES.values():
        assert set(table.required) <= set(table.columns), table.key
        assert not set(table.columns) & set(table.extra_columns), table.key
        assert set(table.inputs) <= set(catalog.TABLES), table.key
    for figure in catalog.FIGURES.values():
        assert set(figure.optional) <= set(figure.inputs) <= set(catalog.TABLES), figure.name
    assert catalog.table_path("published", "out/", name="x") == "out/tables/published/x.parquet"
    assert catalog.figure_path("fig_budget", "png", "out") == "out/figures/fig_budget.png"


def test_no_hand_kept_copies_of_file_names() -> None:
    """The rule files, the stage functions and the benchmark name tables through the catalogue."""
    readers = [
        *sorted((REPO / "workflow" / "rules").glob("*.smk")),
        REPO / "src" / "valuescale" / "pipeline.py",
        REPO / "benchmarks" / "analysis.py",
    ]
    names = [Path(t.file).name for t in catalog.TABLES.values() if "{" not in t.file]
    names += [f"{name}.pdf" for name in catalog.FIGURES] + [f"{n}.png" for n in catalog.FIGURES]
    for path in readers:
        text = path.read_text()
        # a table's name in quotes or under tables/ (a run folder's own curves.parquet is the
        # engine's file, not the study's table)
        pattern = r"(tables/|TABLES\}/|[\"'])NAME[\"']"
        copies = [n for n in names if re.search(pattern.replace("NAME", re.escape(n)), text)]
        assert not copies, f"{path.relative_to(REPO)} names {copies}: use valuescale.catalog"
