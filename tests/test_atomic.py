"""Atomic writers: complete file or nothing, usual permissions, no temporary files left."""

import os
import stat

import pytest

from valuescale.atomic import atomic_open, atomic_path, atomic_write_text


def test_write_replaces_target_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    atomic_write_text(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_error_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, fsync=True) as fh:
        fh.write(b"half written")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_atomic_path_yields_a_path_beside_the_target(tmp_path):
    target = tmp_path / "fig.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert not target.exists()
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"


def test_compilation_cache_entries_are_written_atomically(tmp_path, monkeypatch):
    """JAX's persistent compilation cache, as the engine sets it up: a writer that dies before
    its entry is complete leaves no entry under the key (JAX itself writes in place and never
    replaces an existing entry, so a truncated one would stay); the next writer's entry is whole."""
    from jax._src import lru_cache

    import valuescale.atomic
    from valuescale.train import atomic_cache_entries

    atomic_cache_entries()
    atomic_cache_entries()  # idempotent: one wrapper
    cache = lru_cache.LRUCache(str(tmp_path), max_size=-1)
    value = os.urandom(1 << 16)

    def killed(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    with monkeypatch.context() as m:
        m.setattr(valuescale.atomic.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            cache.put("jit_step-abc", value)
    assert list(tmp_path.iterdir()) == [] and cache.get("jit_step-abc") is None
    cache.put("jit_step-abc", value)
    assert cache.get("jit_step-abc") == value
    assert [p.name for p in tmp_path.iterdir()] == ["jit_step-abc-cache"]
    cache.put("jit_step-abc", b"other")  # as JAX: an existing entry is kept
    assert cache.get("jit_step-abc") == value
