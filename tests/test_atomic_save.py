"""Saves are atomic end to end: a process killed with SIGKILL at any step of ``save`` leaves the old or the new
complete index loadable at the path, and the next save removes the temporary folders it left."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from m3_rag import persistence
from m3_rag.store import HybridStore
from test_store import make_encoded

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store_v1" / "colbert_int8"

EXCHANGE_STEPS = ["tmp-created", "wrote dense.npy", "wrote records.json", "written", "exchanged", "old-removed"]
RENAME_STEPS = ["tmp-created", "written", "old-renamed", "new-renamed", "old-removed"]
NEW_FROM = {"exchanged", "new-renamed", "old-removed"}


def _store(seed: int, n: int) -> HybridStore:
    store = HybridStore()
    store.add_encoded(make_encoded(np.random.default_rng(seed), n), ids=[f"s{seed}-{i}" for i in range(n)],
                      texts=[f"text {i}" for i in range(n)])
    return store


def _save_killed_at(store: HybridStore, path: Path, step: str, exchange: bool) -> None:
    """Fork; the child saves with the kill hook set at ``step`` and is killed there with SIGKILL."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            persistence._USE_EXCHANGE = exchange

            def hook(name: str) -> None:
                if name == step:
                    os.kill(os.getpid(), signal.SIGKILL)

            persistence._checkpoint = hook
            store.save(path)
        finally:
            os._exit(3)  # reached only if the step never came
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"step {step!r} was not reached"


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


needs_fork = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork")


@needs_fork
@pytest.mark.parametrize("exchange,step", [(True, s) for s in EXCHANGE_STEPS] + [(False, s) for s in RENAME_STEPS])
def test_kill_during_save_leaves_old_or_new_index(tmp_path, exchange, step):
    path = tmp_path / "index"
    old, new = _store(1, 12), _store(2, 20)
    old.save(path)
    _save_killed_at(new, path, step, exchange)
    loaded = HybridStore.load(path)
    expected = new if step in NEW_FROM else old
    assert loaded.ids() == expected.ids() and len(loaded) == len(expected)
    assert loaded.export()[1].dense.tobytes() == expected.export()[1].dense.tobytes()
    # the next save cleans whatever the killed one left, and its result loads
    new.save(path)
    assert _leftovers(path) == []
    assert HybridStore.load(path).ids() == new.ids()


@needs_fork
def test_kill_during_first_save_leaves_nothing_then_cleans(tmp_path):
    path = tmp_path / "index"
    store = _store(3, 5)
    _save_killed_at(store, path, "written", True)
    assert not path.exists() and len(_leftovers(path)) == 1  # the killed save's temporary folder
    with pytest.raises(FileNotFoundError):
        HybridStore.load(path)
    store.save(path)
    assert _leftovers(path) == [] and HybridStore.load(path).ids() == store.ids()


def test_exchange_is_used_on_linux(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not persistence._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the two-rename fallback is used")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_a_live_saves_temporary_folder_is_not_removed(tmp_path):
    path = tmp_path / "index"
    _store(4, 3).save(path)
    live = tmp_path / f".index.tmp-{os.getpid()}-abcdef12"  # as if another thread of this process were saving
    live.mkdir()
    dead = tmp_path / ".index.tmp-999999999-abcdef12"
    dead.mkdir()
    _store(5, 3).save(path)
    assert live.exists() and not dead.exists()


def test_v1_fixture_still_loads_and_resaves(tmp_path):
    store = HybridStore.load(FIXTURE_V1)
    assert len(store) > 0
    store.save(tmp_path / "copy")
    again = HybridStore.load(tmp_path / "copy")
    assert again.ids() == store.ids()
    assert again.export()[1].dense.tobytes() == store.export()[1].dense.tobytes()
