"""Save and load a HybridStore folder: one ``.npy`` file per array, records and a versioned header in JSON.

Layout (format version 1; version 2 adds the ``bm25`` mode): ``store.json`` (format name and version, settings, the encoder fingerprint, and
the sha256, size, shape and dtype of every file), ``records.json`` (ids, texts, metadatas) and each
per-mode index's arrays (:meth:`m3_rag.index.ModeIndex.to_arrays`). Never pickle: ``np.save`` with
``allow_pickle=False``; FAISS HNSW graphs are FAISS's own serialisation as a ``uint8`` array.

Saves are atomic end to end (see :func:`save_store`): the files are written to a temporary sibling folder,
fsynced, then swapped in by one atomic exchange of the two folders (or, without it, by two renames with a
fallback on load), so the old or the new complete index is at the path at every instant.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .index.bm25 import BM25Index
from .index.colbert import ColbertIndex
from .index.dense import DenseIndex
from .index.sparse import SparseIndex
from .types import STORE_MODES
from .validation import MAX_DEPTH, check_depth

if TYPE_CHECKING:  # pragma: no cover
    from .store import HybridStore

__all__ = ["save_store", "load_store", "check_fingerprint", "FORMAT_VERSION"]

#: Newest version of the on-disk layout: 2 adds the ``bm25`` mode (its settings under ``store.json``'s ``"bm25"``
#: key, its arrays ``bm25_*.npy``). A store without bm25 is still written as version 1, readable by older m3_rag.
FORMAT_VERSION = 2
#: The versions this m3_rag reads.
READABLE_VERSIONS = (1, 2)
FORMAT_NAME = "m3-rag.HybridStore"
#: The deepest JSON nesting accepted in store.json (a valid header nests 3 levels).
HEADER_MAX_DEPTH = 8
_INDEX_CLASSES = {"dense": DenseIndex, "sparse": SparseIndex, "colbert": ColbertIndex, "bm25": BM25Index}


def check_fingerprint(path: Any, saved_fp: str | None, encoder: Any | None) -> None:
    """Refuse an encoder whose fingerprint differs from the one recorded with the index at ``path`` (shared by
    ``HybridStore.load`` and ``QdrantEdgeStore``'s reopen: the same error for the same mistake)."""
    if encoder is not None and saved_fp is not None and encoder.fingerprint != saved_fp:
        raise ValueError(
            f"the index at {path} was built with a model of fingerprint {saved_fp}, but the encoder given has "
            f"fingerprint {encoder.fingerprint} ({getattr(encoder, 'name', '?')}). Load it with the same model, "
            "or re-index the documents with this one."
        )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Writer:
    """Writes files into ``folder`` (fsynced) and records their checksums for the header."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, dict[str, Any]] = {}

    def array(self, name: str, arr: Any) -> None:
        target = self.folder / name
        if isinstance(arr, tuple) and arr and arr[0] == "blocks":  # float32 row blocks, never concatenated in memory
            _, blocks, shape = arr
            with open(target, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
                for block in blocks:
                    f.write(np.ascontiguousarray(block, dtype="<f4").data)
                f.flush()
                os.fsync(f.fileno())
            shape_l, dtype = list(shape), "<f4"
        else:
            a = np.ascontiguousarray(arr)
            with open(target, "wb") as f:
                np.save(f, a, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            shape_l, dtype = list(a.shape), a.dtype.str
        self.files[name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size, "shape": shape_l, "dtype": dtype}
        _checkpoint(f"wrote {name}")

    def json(self, name: str, obj: Any) -> None:
        target = self.folder / name
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        with open(target, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        _checkpoint(f"wrote {name}")


def _check_target(path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"cannot save to {path}: it is a file, not a folder")
        if any(path.iterdir()) and not (path / "store.json").is_file():
            raise ValueError(
                f"refusing to overwrite {path}: the folder is not empty and holds no store.json "
                "(choose an empty or new folder)"
            )


def _pool_factor(path: Any, header: Mapping[str, Any]) -> int:
    pf = header.get("colbert_pool_factor", 1)  # absent in folders written before pooling existed
    if isinstance(pf, bool) or not isinstance(pf, int) or pf < 1:
        raise ValueError(f"{path}/store.json: colbert_pool_factor must be an int >= 1; got {pf!r}")
    return pf


def _write(store: "HybridStore", folder: Path) -> None:
    w = _Writer(folder)
    header: dict[str, Any] = {
        "format": FORMAT_NAME, "format_version": 2 if "bm25" in store.modes else 1, "fingerprint": store.fingerprint,
        "modes": list(store._modes or ()), "count": len(store._slot_ids), "dense_dim": store.dense_dim,
        "colbert_dim": store.colbert_dim, "colbert_dtype": store.colbert_dtype, "dense_index": store.dense_index,
        "hnsw_m": store.hnsw_m, "hnsw_ef_search": store.hnsw_ef_search,
        "hnsw_ef_construction": store.hnsw_ef_construction, "sparse_nnz": 0, "colbert_tokens": 0,
        "colbert_pool_factor": store.colbert_pool_factor,
        "sparse_dim": store.sparse_dim,
    }
    if store._declared is not None:
        header["declared_modes"] = list(store._declared)
    if "bm25" in store.modes:
        header["bm25_options"] = dict(store.bm25_options)
    for mode, index in store._indexes.items():
        meta, arrays = index.to_arrays()
        if mode == "bm25":  # its own namespace: its keys ("format", "k1", ...) must not clobber the header's
            header["bm25"] = meta
            meta = {}
        for key, value in meta.items():
            if key not in ("dense_dim", "dense_index", "hnsw_m", "hnsw_ef_search", "hnsw_ef_construction", "colbert_dtype"):
                header[key] = value
        for name, arr in arrays.items():
            w.array(name, arr)
    w.json("records.json", {"ids": store._slot_ids, "texts": store._texts, "metadatas": store._metas})
    header["files"] = w.files
    with open(folder / "store.json", "w", encoding="utf-8") as f:
        json.dump(header, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


#: Test hook: called with the name of each step of :func:`save_store` (the kill-during-save test kills there).
def _checkpoint(step: str) -> None:
    pass


#: Swap the new folder in with one atomic ``renameat2(RENAME_EXCHANGE)`` where the OS has it (Linux).
_USE_EXCHANGE = True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange the folders ``a`` and ``b``; ``False`` when the OS or file system cannot."""
    if not _USE_EXCHANGE or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _siblings(path: Path, kind: str) -> list[Path]:
    """``.NAME.tmp-PID-RAND`` / ``.NAME.old-PID-RAND`` folders next to ``path`` (our temporary folders)."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"))


def _owner_pid(folder: Path) -> int | None:
    try:
        return int(folder.name.rsplit(".", 1)[1].split("-")[1])
    except (IndexError, ValueError):
        return None


def _clean_stale(path: Path) -> None:
    """Remove temporary folders left by killed saves: every ``tmp`` folder whose process is gone, and every ``old``
    folder once a complete store is at ``path`` (an ``old`` folder is the fallback only while ``path`` is missing)."""
    for tmp in _siblings(path, "tmp"):
        pid = _owner_pid(tmp)
        if pid is None or not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
    if (path / "store.json").is_file():
        for old in _siblings(path, "old"):
            pid = _owner_pid(old)
            if pid is None or not _pid_alive(pid) or pid == os.getpid():
                shutil.rmtree(old, ignore_errors=True)


def _fallback(path: Path) -> Path:
    """``path``, or when nothing is there the previous version a save killed between its renames left aside."""
    if path.exists():
        return path
    olds = [p for p in _siblings(path, "old") if (p / "store.json").is_file()]
    return max(olds, key=lambda p: p.stat().st_mtime) if olds else path


def save_store(store: "HybridStore", path: str | os.PathLike[str]) -> None:
    """Write ``store`` to the folder ``path`` atomically (compacting it first).

    At every instant a complete index is at ``path``, the old or the new one: the files are written and fsynced
    in a temporary sibling folder, then swapped in with one atomic ``renameat2(RENAME_EXCHANGE)`` (Linux).
    Where the OS lacks it, the old folder is renamed aside before the new one is renamed in, and
    :func:`load_store` falls back to the old folder if a crash left nothing at ``path``. Temporary folders left
    by killed saves are removed by the next save. An existing folder at ``path`` is replaced only if it holds a
    saved HybridStore (or is empty).
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    _check_target(path)
    _clean_stale(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with store._lock.write():
        store._compact()
        tmp = parent / f".{path.name}.tmp-{tag}"
        tmp.mkdir()
        _checkpoint("tmp-created")
        try:
            _write(store, tmp)
            _fsync_dir(tmp)
            _checkpoint("written")
            if path.exists():
                if _exchange(tmp, path):  # path now holds the new store, tmp the old one
                    _fsync_dir(parent)
                    _checkpoint("exchanged")
                    shutil.rmtree(tmp, ignore_errors=True)
                    _checkpoint("old-removed")
                    return
                old = parent / f".{path.name}.old-{tag}"
                os.rename(path, old)
                _checkpoint("old-renamed")
                os.rename(tmp, path)
                _fsync_dir(parent)
                _checkpoint("new-renamed")
                shutil.rmtree(old, ignore_errors=True)
                _checkpoint("old-removed")
            else:
                os.rename(tmp, path)
                _fsync_dir(parent)
                _checkpoint("new-renamed")
                _clean_stale(path)  # a save killed between its renames left its old folder as the fallback
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _loader(path: Path, files: dict[str, dict[str, Any]]) -> Any:
    def verified(name: str) -> Path:
        meta = files.get(name)
        if meta is None:
            raise ValueError(f"{path}/store.json does not list {name}; the index is incomplete")
        fp = path / name
        if not fp.is_file():
            raise ValueError(f"{fp} is missing; the saved index is incomplete")
        size = fp.stat().st_size
        if size != meta["bytes"]:
            raise ValueError(f"{fp} has {size} bytes, expected {meta['bytes']}: the file is truncated or was modified")
        if sha256_file(fp) != meta["sha256"]:
            raise ValueError(f"{fp} fails its checksum: the file is corrupt or was modified")
        return fp

    def load(name: str, dtype: Any, ndim: int | None, rows: int | None = None, mmap: bool = False) -> np.ndarray:
        fp = verified(name)
        try:
            a = np.load(fp, allow_pickle=False, mmap_mode="r" if mmap else None)
        except Exception as exc:  # numpy raises several types for a bad header
            raise ValueError(f"{fp} is not a valid .npy file: {exc}") from exc
        meta = files[name]
        if (dtype is not None and a.dtype != np.dtype(dtype)) or a.dtype.str != meta["dtype"] or (
            ndim is not None and a.ndim != ndim
        ) or list(a.shape) != meta["shape"]:
            raise ValueError(f"{fp}: expected a {ndim}-D {np.dtype(dtype) if dtype else ''} array of shape {meta['shape']}; got {a.dtype} {a.shape}")
        if rows is not None and a.shape[0] != rows:
            raise ValueError(f"{fp}: expected {rows} rows; got {a.shape[0]}")
        return a

    load.verified = verified  # type: ignore[attr-defined]
    return load


def _records(path: Path, load: Any, n: int) -> tuple[list, list, list]:
    rec_path = load.verified("records.json")
    try:
        records = json.loads(rec_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{rec_path} is corrupt: {exc}") from exc
    except RecursionError:
        raise ValueError(f"{rec_path} is corrupt: its JSON nests too deeply") from None
    if not isinstance(records, dict):
        raise ValueError(f"{rec_path}: expected an object with ids, texts and metadatas")
    check_depth(records, str(rec_path), limit=MAX_DEPTH + 3)
    ids, texts, metas = records["ids"], records["texts"], records["metadatas"]
    if not (isinstance(ids, list) and isinstance(texts, list) and isinstance(metas, list)) or not (len(ids) == len(texts) == len(metas) == n):
        raise ValueError(f"{rec_path}: ids/texts/metadatas must be lists of {n} entries")
    if not all(isinstance(i, str) for i in ids) or len(set(ids)) != n:
        raise ValueError(f"{rec_path}: ids must be unique strings")
    if not all(t is None or isinstance(t, str) for t in texts) or not all(isinstance(m, dict) for m in metas):
        raise ValueError(f"{rec_path}: texts must be strings or null and metadatas objects")
    return ids, texts, metas


def _read_header(path: Path) -> dict[str, Any]:
    header_path = path / "store.json"
    if not header_path.is_file():
        raise FileNotFoundError(f"no saved HybridStore at {path}: {header_path} does not exist")
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{header_path} is corrupt: {exc}") from exc
    except RecursionError:
        raise ValueError(f"{header_path} is corrupt: its JSON nests too deeply") from None
    check_depth(header, str(header_path), limit=HEADER_MAX_DEPTH)
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"{header_path} is not a HybridStore header (format {header.get('format') if isinstance(header, dict) else None!r})")
    version = header.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path} has format version {version!r}; this m3_rag reads versions {', '.join(map(str, READABLE_VERSIONS))}. "
            "Upgrade m3_rag or re-index."
        )
    return header


def load_store(cls: type, path: str | os.PathLike[str], encoder: Any | None = None, *, show_progress: bool = True) -> Any:
    """Load a store written by :func:`save_store` (see :meth:`m3_rag.HybridStore.load`)."""
    path = _fallback(Path(path))
    header = _read_header(path)
    try:
        return _from_header(cls, path, header, encoder, show_progress)
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as exc:
        raise ValueError(f"{path}/store.json is malformed or inconsistent: {type(exc).__name__}: {exc}") from exc


def _from_header(cls: type, path: Path, header: dict[str, Any], encoder: Any | None, show_progress: bool) -> Any:
    saved_fp = header["fingerprint"]
    check_fingerprint(path, saved_fp, encoder)
    if not isinstance(header["modes"], list):
        raise ValueError(f"{path}/store.json: modes must be a list of mode names")
    modes = tuple(header["modes"])
    if any(m not in STORE_MODES for m in modes) or len(set(modes)) != len(modes):
        raise ValueError(f"{path}/store.json lists unknown modes or a mode twice: {modes}")
    if "bm25" in modes and header["format_version"] < 2:
        raise ValueError(f"{path}/store.json: format version 1 cannot hold the bm25 mode (the file was modified)")
    declared = header.get("declared_modes")
    if declared is not None and (not isinstance(declared, list) or any(m not in STORE_MODES for m in declared)):
        raise ValueError(f"{path}/store.json: declared_modes must be a list of mode names; got {declared!r:.60}")
    bm25_kw: dict[str, Any] = {}
    if "bm25" in modes or (declared and "bm25" in declared):
        o = header.get("bm25_options")
        if not isinstance(o, dict):
            raise ValueError(f"{path}/store.json: a bm25 store needs its bm25_options")
        bm25_kw = {f"bm25_{k}": o[k] for k in ("language", "stopwords", "k1", "b", "method")}
    n = header["count"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{path}/store.json: count must be a non-negative int; got {n!r}")
    if n and not modes:
        raise ValueError(f"{path}/store.json: {n} documents but no modes")
    files = header["files"]
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path}/store.json: files must be a non-empty object (name -> checksum); got {files!r:.60}")
    for name, meta in files.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("bytes"), int):
            raise ValueError(f"{path}/store.json: the entry of {name!r} in files is malformed")
    store = cls(
        encoder, dense_index=header["dense_index"], hnsw_m=header["hnsw_m"], hnsw_ef_search=header["hnsw_ef_search"],
        hnsw_ef_construction=header.get("hnsw_ef_construction", 80), colbert_dtype=header["colbert_dtype"],
        show_progress=show_progress, colbert_pool_factor=_pool_factor(path, header),
        sparse_dim=header.get("sparse_dim") if encoder is None else None,
        modes=declared if declared is not None else (modes if "bm25" in modes else None), **bm25_kw,
    )
    store._saved_fingerprint = saved_fp
    load = _loader(path, files)
    ids, texts, metas = _records(path, load, n)
    indexes = {}
    for mode in modes:
        try:
            if mode == "sparse":
                indexes[mode] = SparseIndex.from_arrays(header, load, n, vocab_size=store.sparse_dim)
            elif mode == "bm25":
                if not isinstance(header.get("bm25"), dict):
                    raise ValueError("store.json has no bm25 settings")
                indexes[mode] = BM25Index.from_arrays(header["bm25"], load, n)
            else:
                indexes[mode] = _INDEX_CLASSES[mode].from_arrays(header, load, n)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    if encoder is not None:
        if "dense" in indexes and encoder.dense_dim != indexes["dense"].dim:
            raise ValueError(f"the index has dense dimension {indexes['dense'].dim} but the encoder produces {encoder.dense_dim}")
        cdim = getattr(encoder, "colbert_dim", None)
        if "colbert" in indexes and cdim is not None and cdim != indexes["colbert"].dim:
            raise ValueError(f"the index has ColBERT dimension {indexes['colbert'].dim} but the encoder produces {cdim}")
    store._modes = modes or None
    store._indexes = indexes
    store._slot_ids, store._texts, store._metas = ids, texts, metas
    store._alive = np.ones(n, dtype=bool)
    store._id_to_slot = {doc_id: i for i, doc_id in enumerate(ids)}
    return store
