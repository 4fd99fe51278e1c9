"""A disk that fills up while the package writes: the write fails, and nothing partial is left
under the output's name (the previous file, if any, is intact; no temporary file stays behind).

The disk is made to fill up for real, by the kernel: the writer runs in a child process whose
file-size limit (``RLIMIT_FSIZE``) is smaller than what it writes, so the write system call fails
part-way (EFBIG, as ENOSPC would) after the first bytes went to disk. Python ignores SIGXFSZ, so
the writer sees the error as an ``OSError``, as it would on a full disk.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 1024  # bytes a file may grow to in the child: the old files are smaller

WRITERS = {
    # the analysis tables (aggregate, fits, allocation, ...): valuescale.analysis.ingest
    "table": """
        import numpy as np, pandas as pd
        from valuescale.analysis.ingest import write_table
        target = out / "curves.parquet"
        write_table(pd.DataFrame({"value": np.arange(10.0)}), target)
        old()
        write_table(pd.DataFrame({"value": rng.normal(size=100_000)}), target)
    """,
    "csv table": """
        import numpy as np, pandas as pd
        from valuescale.analysis.ingest import write_table
        target = out / "fit_errors.csv"
        write_table(pd.DataFrame({"value": np.arange(10.0)}), target)
        old()
        write_table(pd.DataFrame({"value": rng.normal(size=100_000)}), target)
    """,
    # the engine's checkpoint
    "checkpoint": """
        from valuescale.checkpoint import save_checkpoint
        target = out / "checkpoint.pkl"
        save_checkpoint(target, {"t": 1})
        old()
        save_checkpoint(target, {"t": 2, "leaves": [rng.normal(size=100_000)]})
    """,
    # a replay chunk of the checkpoint (written before the checkpoint that lists it)
    "replay chunk": """
        from valuescale import replay_store
        from valuescale.replay import Replay
        S, cap = 2, 4000
        target = out / "replay" / "train"
        target.mkdir(parents=True)
        f = lambda *shape: rng.normal(size=shape).astype("float32")
        replay = Replay(obs=f(S, cap, 3), actions=f(S, cap, 1), rewards=f(S, cap), masks=f(S, cap),
                        next_obs=f(S, cap, 3), pos=np.zeros(S, "int32"), size=np.full(S, cap, "int32"))
        old()
        replay_store.append(target, replay, cap, None)
    """,
}


def _run(writer: str, out: Path) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        """
        import resource, sys
        from pathlib import Path
        import numpy as np
        out = Path(sys.argv[1])
        rng = np.random.default_rng(0)
        def old():  # from here on, no file may grow past LIMIT bytes: the disk is "full"
            resource.setrlimit(resource.RLIMIT_FSIZE, (@, @))
        """
    ).replace("@", str(LIMIT))
    code += textwrap.dedent(WRITERS[writer])
    return subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _old_file_is_intact(writer: str, files: dict[str, bytes], out: Path) -> None:
    import numpy as np
    import pandas as pd

    from valuescale.checkpoint import load_checkpoint

    if writer == "replay chunk":
        assert files == {}  # no chunk: the checkpoint that would list it is never written
        return
    (name,) = files
    if writer == "checkpoint":
        assert name == "checkpoint.pkl" and load_checkpoint(out / name)["t"] == 1
        return
    table = pd.read_parquet(out / name) if name.endswith(".parquet") else pd.read_csv(out / name)
    np.testing.assert_array_equal(table["value"], np.arange(10.0))


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_full_disk_leaves_no_partial_file_under_the_output_name(tmp_path: Path, writer: str):
    out = tmp_path / "out"
    out.mkdir()
    proc = _run(writer, out)
    assert proc.returncode != 0, "the write past the limit must fail"
    assert "File too large" in proc.stderr, proc.stderr[-2000:]
    files = _files(out)
    assert not [name for name in files if name.endswith(".tmp")], list(files)
    _old_file_is_intact(writer, files, out)
