"""Shared fixtures and run-wide settings of the test suite.

- One JAX persistent compilation cache for every test of a run, in this process and in every
  process it starts (engine CLIs, Snakemake jobs, SLURM jobs): the same computation compiles once.
- ``default_study``: the trained study of ``studies.py``, built once per run in the background while
  the other tests run; the tests that read it come after the costly ones (last in one process).
- The order of the run: the costly tests first (the ``TOGETHER`` groups, tests marked ``slow``),
  then the shared study's, then the cheap ones, which even out the workers' last minutes.
- pytest-xdist (``-n``, in addopts): the controller process owns the scratch folder, the cache and
  the study build (it is idle otherwise); workers get the folder through ``workerinput`` and read
  the built study from its record. The workers run niced (``TEST_NICENESS``, their session's
  autogroup too), so that the build, which the last tests wait for, finishes first. Tests are handed out one by one, except those of ``TOGETHER``,
  which share a costly module or session fixture: one worker runs each of those groups.
- ``published_dir`` / ``published_table``: the authors' published curve archives (read from
  ``../shared``, never copied).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from studies import SERVER, BuiltStudy, StudyBuild, wait_for_build

REPO = Path(__file__).resolve().parents[1]
SHARED_STUDY = "default_study"
_BUILD = pytest.StashKey[StudyBuild]()
_SCRATCH = pytest.StashKey[Path]()
_NEEDED = "default-study.needed"  # a worker collected tests of the shared study


#: test files (or folders) whose tests one xdist worker runs together, and why
TOGETHER = {
    "tests/slurm/": "one SLURM cluster per run (session fixture slurm_cluster)",
    "tests/test_cli.py": "the interrupt tests share one reference run",
    "tests/test_rundir.py": "the resume tests share one real checkpoint",
    "tests/test_pipeline.py": "the published-study fixture is built once",
    "tests/test_workflow_dag.py": "the DAG tests share one touched study",
}


def _scope(nodeid: str) -> str:
    """The unit an xdist worker takes: a group of ``TOGETHER``, else the test itself."""
    return next((group for group in TOGETHER if nodeid.startswith(group)), nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    # xdist's own --dist loadgroup does nothing with pytest 9.2 (its nodeid suffix is ignored)
    from xdist.scheduler import LoadScopeScheduling

    class Together(LoadScopeScheduling):
        def __init__(self, config, log=None) -> None:
            super().__init__(config, log)
            # units in collection order (pytest_collection_modifyitems), not by size
            config.option.loadscopereorder = False

        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return Together(config, log)


def _worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


#: niceness of the xdist workers (and what they start): the shared study build (a session of its own), which the last
#: tests wait for, gets the cores first; the tests run on what it leaves (its serial stages, the
#: start-up of its jobs) and take the cores once it is done
TEST_NICENESS = 5


def _lower_priority() -> None:
    """Nice this process; where the kernel groups CPU time by session (autogroup), nice the
    session's group too, since niceness alone then only ranks the processes within a session."""
    os.nice(TEST_NICENESS)
    try:
        Path("/proc/self/autogroup").write_text(str(TEST_NICENESS))
    except OSError:  # no autogroup on this kernel: os.nice is all there is
        pass


def pytest_configure(config: pytest.Config) -> None:
    if _worker(config):
        scratch = Path(config.workerinput["valuescale_scratch"])
        _lower_priority()  # not the controller: the build it starts keeps the default priority
    else:
        scratch = Path(tempfile.mkdtemp(prefix="valuescale-tests-"))
    config.stash[_SCRATCH] = scratch
    # JAX reads these at import; child processes inherit them. VALUESCALE_COMPILATION_CACHE is the
    # engine CLI's default cache; workflow train jobs get theirs from the config key.
    cache = os.environ.get("VALUESCALE_TEST_XLA_CACHE") or str(scratch / "xla-cache")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    os.environ["VALUESCALE_COMPILATION_CACHE"] = cache
    # Bytecode in one folder per run: every Python process the run starts (xdist workers, engine
    # runs, Snakemake and its jobs, SLURM jobs) reads the imports' compiled bytecode from there
    # instead of compiling jax, pandas, Snakemake, ... again. Where the environment forbids
    # writing bytecode (PYTHONDONTWRITEBYTECODE, set on the CI box) and the installer wrote none
    # (uv), that compiling cost each process 3-7 CPU-s (2026-12-06). Nothing is written outside
    # the scratch folder, so the user's tree stays as that setting wants it.
    os.environ["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
    sys.dont_write_bytecode = False


def _reads_study(item: pytest.Item) -> bool:
    return SHARED_STUDY in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The run's order, by unit (``_scope``; stable within each rank): the costly first, so that
    the run ends on short tests that even out the workers' last minutes: 0 the groups of
    ``TOGETHER`` (long chains on one worker), 1 tests marked ``slow``, then the cheap tests.
    The units that read the shared study (it trains meanwhile) come after the slow ones under
    xdist (the build is done by then; a worker that gets one earlier waits for it), last in one
    process (the build in its background thread has then had the whole run)."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_scope(item.nodeid), []).append(item)
    study_rank = 2 if _worker(config) else 4

    def rank(unit: str) -> int:
        members = units[unit]
        if any(_reads_study(item) for item in members):
            return study_rank
        if unit in TOGETHER:
            return 0
        return 1 if any(item.get_closest_marker("slow") for item in members) else 3

    ranks = {unit: rank(unit) for unit in units}
    items.sort(key=lambda item: ranks[_scope(item.nodeid)])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist controller, per worker
    node.workerinput["valuescale_scratch"] = str(node.config.stash[_SCRATCH])


def _study_dir(config: pytest.Config) -> Path:
    return config.stash[_SCRATCH] / "default-study"


def _start_build(config: pytest.Config) -> StudyBuild:
    build = StudyBuild(_study_dir(config)).start()
    config.stash[_BUILD] = build
    return build


@pytest.hookimpl(tryfirst=True)  # a worker: before xdist reports the collection
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if config.option.collectonly:
        return
    if any(_reads_study(item) for item in session.items):
        if _worker(config):
            (config.stash[_SCRATCH] / _NEEDED).touch()
        else:
            _start_build(config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids) -> None:  # xdist controller
    config = node.config
    if (config.stash[_SCRATCH] / _NEEDED).exists() and config.stash.get(_BUILD, None) is None:
        _start_build(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    SERVER.stop()  # reaped here, so that the run's CPU total includes it
    if _worker(config):
        return  # the controller stops the build and removes the scratch folder
    build = config.stash.get(_BUILD, None)
    if build is not None:
        build.stop()
    scratch = config.stash.get(_SCRATCH, None)
    if scratch is not None and not os.environ.get("VALUESCALE_TEST_KEEP"):
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- CPU time per test
# Under xdist, tests share 2 cores with other workers and the study build, so their wall times
# (--durations) say little about cost; the suite is bound by CPU. Each test's CPU time (its
# process and the children it waited for, setup and teardown included) is sent with its teardown
# report and printed at the end, with the run's total (the process that prints it has waited for
# every worker) and what lies outside the tests (mostly the shared study build). The Snakemake
# runs of a test (studies.SERVER) count for it too.

_CPU_START = pytest.StashKey[float]()
_ROWS: list[tuple[float, str]] = []  # (CPU s, test), collected where the reports arrive


def _cpu_seconds() -> float:
    import resource

    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    # + the Snakemake runs of studies.SERVER, a child process not yet waited for
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + SERVER.cpu_s


_WALL_START = pytest.StashKey[float]()
_SPANS: dict[str, list[tuple[float, float]]] = {}  # worker -> (start, end) of its tests (epoch s)
_RUN_START = time.time()  # the process that prints the summary: before its workers start


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_CPU_START] = _cpu_seconds()
    item.stash[_WALL_START] = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown" and _CPU_START in item.stash:
        report.user_properties.append(("cpu_s", _cpu_seconds() - item.stash[_CPU_START]))
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        report.user_properties.append(("span", (worker, item.stash[_WALL_START], time.time())))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == "cpu_s" and report.when == "teardown":
            _ROWS.append((value, report.nodeid))
        if key == "span" and report.when == "teardown":
            worker, start, end = value
            _SPANS.setdefault(worker, []).append((start, end))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if _worker(config) or not _ROWS:
        return
    rows = sorted(_ROWS, reverse=True)
    write = terminalreporter.write_line
    terminalreporter.section("CPU time per test (s; process and waited-for children)")
    for seconds, nodeid in rows[:30]:
        write(f"{seconds:8.1f}  {nodeid}")
    per_file: dict[str, float] = {}
    for seconds, nodeid in rows:
        path = nodeid.split("::")[0]
        per_file[path] = per_file.get(path, 0.0) + seconds
    terminalreporter.section("CPU time per test file (s)")
    for path, seconds in sorted(per_file.items(), key=lambda item: -item[1]):
        write(f"{seconds:8.1f}  {path}")
    in_tests, whole = sum(s for s, _ in rows), _cpu_seconds()
    write(f"{in_tests:8.1f}  all {len(rows)} tests")
    # this process and every child it waited for: the xdist workers, the shared study build
    write(f"{whole - in_tests:8.1f}  outside the tests (the shared study build, start-up)")
    write(f"{whole:8.1f}  the whole run")
    build = config.stash.get(_BUILD, None)
    for stage in build.study.stages if build is not None else []:
        write(f"shared study build: snakemake {' '.join(stage.args)}: {stage.seconds:.0f} s wall")
    # where the run's wall time went per worker (idle: waiting for work or for the run's end)
    now = time.time()
    write(f"{whole / (now - _RUN_START) * 100:8.0f} % CPU over the run's {now - _RUN_START:.0f} s")
    for worker, spans in sorted(_SPANS.items()):
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        busy = sum(e - s for s, e in spans)
        write(
            f"{worker}: {len(spans)} tests, in tests {busy:.0f} s; first test at "
            f"{first - _RUN_START:.0f} s, its last one done at {last - _RUN_START:.0f} s"
        )


@pytest.fixture(scope="session")
def default_study(request: pytest.FixtureRequest) -> BuiltStudy:
    """The shared trained study (see ``studies.py``); read-only: copy it to change it."""
    config = request.config
    if _worker(config):
        return wait_for_build(_study_dir(config))
    build = config.stash.get(_BUILD, None) or _start_build(config)  # None: collected lazily
    return build.result()


@pytest.fixture(scope="session")
def published_dir() -> Path:
    """``<repo>/../shared/data/published``; fails under CI (env var CI set) if missing, else skips."""
    path = (REPO / ".." / "shared" / "data" / "published").resolve()
    if not path.is_dir():
        message = f"published curve archives not found at {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def published_table(published_dir: Path) -> Callable[[str], pd.DataFrame]:
    """Loader ``stem -> long curve table`` of one published zip, imported once per session."""
    from valuescale.analysis.ingest import import_published

    cache: dict[str, pd.DataFrame] = {}

    def load(stem: str) -> pd.DataFrame:
        if stem not in cache:
            cache[stem] = import_published(published_dir / f"{stem}.zip")
        return cache[stem].copy()

    return load
