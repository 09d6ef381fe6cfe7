"""Reliability suite: a bounded hypothesis fuzz of the public store and encoder calls, and a tamper matrix over
saved folders. Every case must end in a correct result or a clear ``TypeError``/``ValueError``/``FileNotFoundError``
(never another exception, a silently wrong result, or a store changed by a failed call).

The kill-during-save test is tests/test_atomic_save.py, the failure injection tests/test_atomic_mutations.py and
the concurrency tests tests/test_concurrency.py. ``M3RAG_FUZZ_EXAMPLES`` raises the number of examples;
``M3RAG_RELIABILITY_REPORT=file.json`` writes the counts (scripts/reliability_report.py prints them).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from m3_rag import M3Output  # noqa: E402
from m3_rag.store import HybridStore  # noqa: E402
from test_store import D, DC, make_encoded, make_query  # noqa: E402

EXAMPLES = int(os.environ.get("M3RAG_FUZZ_EXAMPLES", "60"))
CLEAR = (TypeError, ValueError)
COUNTS: dict[str, Counter] = {}


def _count(suite: str, outcome: str) -> None:
    COUNTS.setdefault(suite, Counter())[outcome] += 1
    COUNTS[suite]["cases"] += 1


def _write_report() -> None:
    target = os.environ.get("M3RAG_RELIABILITY_REPORT")
    if target and COUNTS:
        Path(target).write_text(json.dumps({k: dict(v) for k, v in COUNTS.items()}, indent=1, sort_keys=True))


atexit.register(_write_report)

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None)

# ----------------------------------------------------------------------------------------------- strategies
weird_floats = st.one_of(
    st.floats(-2, 2, width=32), st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e39, 7e4, -7e4, 1e308]),
)
texts = st.one_of(st.text(max_size=12), st.text(max_size=12), st.text(max_size=12),
                  st.sampled_from(["\ud800", "a\udfffb", "", " ", "日本語 🦀"]))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False, allow_infinity=False),
                      st.sampled_from([float("nan"), float("inf")]), texts)
metadata = st.dictionaries(texts, st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=3),
                                               max_leaves=6), max_size=3)
token_ids = st.one_of(st.integers(0, 70), st.integers(-3, 2**40), st.sampled_from([1.5, True, "3", 2**70, -100000]))


@st.composite
def encoded(draw, n=None):
    n = draw(st.integers(0, 4)) if n is None else n
    parts = {}
    modes = draw(st.sets(st.sampled_from(["dense", "sparse", "colbert"]), min_size=1))
    if "dense" in modes:
        d = draw(st.sampled_from([D, D, D, 0, D - 1]))
        vals = draw(st.lists(weird_floats, min_size=n * d, max_size=n * d)) if draw(st.booleans()) else None
        parts["dense"] = (np.asarray(vals, np.float32).reshape(n, d) if vals is not None
                          else np.random.default_rng(n).normal(size=(n, d)).astype(np.float32))
    if "sparse" in modes:
        parts["sparse"] = [draw(st.dictionaries(token_ids, st.one_of(weird_floats, st.none()), max_size=4)) for _ in range(n)]
    if "colbert" in modes:
        width = draw(st.sampled_from([DC, DC, DC, 0, 3]))
        mats = []
        for _ in range(n):
            t = draw(st.integers(0, 3))
            if draw(st.booleans()):
                mats.append(np.asarray(draw(st.lists(weird_floats, min_size=t * width, max_size=t * width)),
                                       np.float32).reshape(t, width))
            else:
                mats.append(np.ones((t, width), np.float32) / max(width, 1) ** 0.5)
        parts["colbert"] = mats
    return M3Output(**parts)


def _base() -> HybridStore:
    store = HybridStore()
    store.add_encoded(make_encoded(np.random.default_rng(0), 12), ids=[f"d{i}" for i in range(12)],
                      texts=[f"t{i}" for i in range(12)], metadatas=[{"i": i, "tag": ["a", "b"][i % 2]} for i in range(12)])
    return store


def _snapshot(store: HybridStore) -> tuple:
    q = make_query(np.random.default_rng(9))
    return (store.ids(), len(store), store.memory_bytes(),
            [(h.id, h.score) for h in store.search_encoded(q, k=20)] if len(store) else [])


# ----------------------------------------------------------------------------------------------- fuzz: add
ids_strategy = st.one_of(st.none(), st.lists(texts, max_size=5), st.sets(st.text(max_size=3), max_size=3),
                         st.just("abc"), st.lists(st.integers(), max_size=2))


valid_rows = st.integers(0, 5).flatmap(lambda n: st.integers(0, 99).map(lambda seed: make_encoded(np.random.default_rng(seed), n)))


@st.composite
def add_case(draw):
    """Rows plus ids/texts/metadatas: usually one per row (so most cases reach the store), sometimes anything."""
    enc = draw(st.one_of(valid_rows, valid_rows, encoded()))
    n = len(enc)

    def per_row(strategy, anything):
        return draw(st.one_of(st.none(), st.lists(strategy, min_size=n, max_size=n), anything))

    ids = per_row(st.text(min_size=1, max_size=6), ids_strategy)
    if isinstance(ids, list) and len(set(map(str, ids))) != len(ids) and draw(st.booleans()):
        ids = [f"{x}#{i}" for i, x in enumerate(ids)]
    txts = per_row(st.one_of(texts, st.none()), st.lists(st.one_of(texts, st.none()), max_size=5))
    metas = per_row(st.one_of(metadata, st.none()), st.lists(st.one_of(metadata, st.none()), max_size=5))
    return enc, ids, txts, metas


@FUZZ
@given(case=add_case())
def test_fuzz_add_encoded(case):
    enc, ids, txts, metas = case
    store = _base()
    before = _snapshot(store)
    try:
        got = store.add_encoded(enc, ids=ids, texts=txts, metadatas=metas)
    except CLEAR as exc:
        assert str(exc), "an error must say what is wrong"
        assert _snapshot(store) == before, "a refused add changed the store"
        _count("add_encoded", "clear errors")
        return
    n = len(enc)
    assert len(got) == n and all(type(x) is str for x in got) and len(store) == len(set(before[0]) | set(got))
    recs = store.get(got)
    assert [r.id for r in recs] == got
    if txts is not None:
        assert [r.text for r in recs] == list(txts)
    if metas is not None:
        assert [r.metadata for r in recs] == [json.loads(json.dumps(m or {})) for m in metas]
    if n:  # the new rows are searchable, with finite scores
        hits = store.search_encoded(make_query(np.random.default_rng(1)), k=len(store), modes=store.modes)
        assert sorted(h.id for h in hits) == sorted(store.ids()) and all(np.isfinite(h.score) for h in hits)
    _count("add_encoded", "correct results")


# ----------------------------------------------------------------------------------------------- fuzz: search
filters = st.one_of(
    st.none(), st.just({}), st.dictionaries(st.sampled_from(["i", "tag", "$and", "$or", "$not", "$gt", "x"]),
                                            st.one_of(json_leaf, st.dictionaries(st.sampled_from(["$gt", "$in", "$eq", "$regex", "$exists"]),
                                                                                json_leaf | st.lists(json_leaf, max_size=2), max_size=2),
                                                      st.lists(st.just({"i": 1}), max_size=2)), max_size=2))


valid_queries = st.integers(0, 50).map(lambda seed: make_query(np.random.default_rng(seed)))
MODES_OK = ["dense", "sparse", "colbert", ("dense", "sparse"), ("dense", "sparse", "colbert"), ("sparse", "colbert")]


@FUZZ
@given(q=st.one_of(valid_queries, encoded(n=1)), k=st.one_of(st.integers(1, 30), st.sampled_from([0, -1, 10**9, True, 2.5])),
       modes=st.sampled_from(MODES_OK * 3 + ["bm42", (), ("dense", "dense")]),
       weights=st.one_of(st.none(), st.none(), st.lists(weird_floats, max_size=3)),
       fusion=st.sampled_from(["weighted", "rrf", "dbsf"] * 3 + ["max"]),
       flt=st.one_of(st.none(), st.none(), st.just({"tag": "a"}), st.just({"i": {"$gte": 3}}), filters), batch=st.booleans())
def test_fuzz_search_encoded(q, k, modes, weights, fusion, flt, batch):
    store = _base()
    before = _snapshot(store)
    try:
        call = store.search_encoded_batch if batch else store.search_encoded
        res = call(q, k=k, modes=modes, weights=weights, fusion=fusion, filter=flt)
    except CLEAR as exc:
        assert str(exc)
        assert _snapshot(store) == before
        _count("search_encoded", "clear errors")
        return
    hits = res[0] if batch else res
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) <= min(k, len(store)) and set(ids) <= set(store.ids())
    assert all(np.isfinite(h.score) and all(np.isfinite(v) for v in h.scores.values()) for h in hits)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert _snapshot(store) == before
    _count("search_encoded", "correct results")


# ----------------------------------------------------------------------------------------------- fuzz: delete / get
@FUZZ
@given(ids=st.one_of(st.lists(st.one_of(st.sampled_from([f"d{i}" for i in range(14)]), texts), max_size=6),
                     st.sets(st.sampled_from([f"d{i}" for i in range(14)]), max_size=4), st.just("d1"),
                     st.lists(st.integers(), max_size=2), st.none()),
       op=st.sampled_from(["delete", "get", "export"]))
def test_fuzz_delete_get_export(ids, op):
    store = _base()
    before = _snapshot(store)
    try:
        out = getattr(store, op)(ids)
    except CLEAR as exc:
        assert str(exc)
        assert _snapshot(store) == before
        _count("delete/get/export", "clear errors")
        return
    if ids is None:  # export(None): everything
        assert op == "export" and out[0] == before[0]
        _count("delete/get/export", "correct results")
        return
    wanted = [i for i in dict.fromkeys(ids) if i in before[0]]
    if op == "delete":
        assert out == len(wanted) and store.ids() == [i for i in before[0] if i not in wanted]
    elif op == "get":
        assert [r.id for r in out] == [i for i in ids if i in before[0]]
    else:
        assert out[0] == [i for i in ids if i in before[0]]
    _count("delete/get/export", "correct results")


# ----------------------------------------------------------------------------------------------- fuzz: encoder
@settings(max_examples=max(10, EXAMPLES // 3), deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
@given(items=st.one_of(st.lists(texts, max_size=4), texts, st.lists(st.one_of(texts, st.integers(), st.none()), max_size=3),
                       st.none(), st.integers()),
       max_length=st.one_of(st.none(), st.integers(-1, 40)))
def test_fuzz_encoder(tiny_encoder, items, max_length):
    try:
        out = tiny_encoder.encode(items, max_length=max_length)
    except CLEAR as exc:
        assert str(exc)
        _count("encoder", "clear errors")
        return
    n = 1 if isinstance(items, str) else len(items)
    assert len(out) == n and out.dense.shape == (n, tiny_encoder.dense_dim) and np.all(np.isfinite(out.dense))
    assert all(np.all(np.isfinite(m)) for m in out.colbert)
    _count("encoder", "correct results")


# ----------------------------------------------------------------------------------------------- tamper matrix
def _tamper_cases(folder: Path) -> list[tuple[str, object]]:
    cases: list[tuple[str, object]] = []
    for f in sorted(p.name for p in folder.iterdir()):
        size = (folder / f).stat().st_size
        cases += [(f"{f}: truncated to half", ("truncate", f, size // 2)), (f"{f}: emptied", ("truncate", f, 0)),
                  (f"{f}: deleted", ("delete", f, None)), (f"{f}: 7 bytes appended", ("append", f, None))]
        cases += [(f"{f}: byte {o} flipped", ("flip", f, o)) for o in sorted({0, 9, size // 2, size - 1}) if 0 <= o < size]
    header = json.loads((folder / "store.json").read_text())
    for key in sorted(header):
        for label, value in [("deleted", KeyError), ("null", None), ("-1", -1), ("'x'", "x"), ("[]", []), ("{}", {}),
                             ("2**62", 2**62), ("true", True)]:
            cases.append((f"store.json {key}: {label}", ("header", key, value)))
    for name in sorted(header["files"]):
        for field in ("sha256", "bytes", "shape", "dtype"):
            if field in header["files"][name]:
                cases.append((f"store.json files.{name}.{field}: 0", ("file_meta", name, field)))
    # re-signed records (checksums fixed): only the semantic checks can catch these. (Swapping two ids and
    # re-signing is a different valid store, not a corruption, so it is not a case.)
    cases += [("records.json: id duplicated", ("records", "dup", None)),
              ("records.json: deep metadata", ("records", "deep", None))]
    return cases


def _apply(folder: Path, case: tuple) -> None:
    kind, name, arg = case
    p = folder / name if kind in ("truncate", "delete", "append", "flip") else None
    if kind == "truncate":
        with open(p, "r+b") as fh:
            fh.truncate(arg)
    elif kind == "delete":
        p.unlink()
    elif kind == "append":
        with open(p, "ab") as fh:
            fh.write(b"\x00garbag")
    elif kind == "flip":
        data = bytearray(p.read_bytes())
        data[arg] ^= 0xFF
        p.write_bytes(bytes(data))
    elif kind in ("header", "file_meta"):
        h = json.loads((folder / "store.json").read_text())
        if kind == "file_meta":
            h["files"][name][arg] = 0
        elif arg is KeyError:
            del h[name]
        else:
            h[name] = arg
        (folder / "store.json").write_text(json.dumps(h))
    elif kind == "records":
        from m3_rag.persistence import sha256_file

        rec = json.loads((folder / "records.json").read_text())
        if name == "dup":
            rec["ids"][1] = rec["ids"][0]
        else:
            rec["metadatas"][0] = "DEEP"
        text = json.dumps(rec)
        if name == "deep":  # 3000 nested objects: json.dumps itself cannot write them
            text = text.replace('"DEEP"', '{"a":' * 3000 + "{}" + "}" * 3000, 1)
        (folder / "records.json").write_text(text)
        h = json.loads((folder / "store.json").read_text())  # re-sign: only the semantic checks can catch it
        h["files"]["records.json"].update(sha256=sha256_file(folder / "records.json"), bytes=(folder / "records.json").stat().st_size)
        (folder / "store.json").write_text(json.dumps(h))


def _behaviour(store: HybridStore, queries: list[M3Output]) -> list:
    out = [store.ids()]
    for q in queries:
        for modes in (store.modes, "dense", "sparse", "colbert"):
            if set((modes,) if isinstance(modes, str) else modes) <= set(store.modes):
                out.append([(h.id, round(h.score, 4), h.text, h.metadata) for h in store.search_encoded(q, k=8, modes=modes)])
    return out


@pytest.mark.parametrize("kind,dtype", [("flat", "fp16"), ("hnsw", "int8")])
def test_tamper_matrix(tmp_path, kind, dtype):
    rng = np.random.default_rng(5)
    store = HybridStore(dense_index=kind, colbert_dtype=dtype)
    store.add_encoded(make_encoded(rng, 30), ids=[f"d{i}" for i in range(30)], texts=[f"text {i}" for i in range(30)],
                      metadatas=[{"i": i} for i in range(30)])
    good = tmp_path / "good"
    store.save(good)
    queries = [make_query(rng) for _ in range(2)]
    expected = _behaviour(HybridStore.load(good), queries)
    unclear = []
    for label, case in _tamper_cases(good):
        folder = tmp_path / "t"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        _apply(folder, case)
        try:
            loaded = HybridStore.load(folder)
        except (ValueError, FileNotFoundError) as exc:
            assert str(exc)
            _count("tamper matrix", "clear errors")
            continue
        except Exception as exc:  # noqa: BLE001
            unclear.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        try:  # loaded: it must behave exactly as the original, and keep working (add, save, load)
            same = _behaviour(loaded, queries) == expected
            loaded.add_encoded(make_encoded(rng, 2), ids=["new1", "new2"])
            loaded.save(tmp_path / "resaved")
            ok = same and len(HybridStore.load(tmp_path / "resaved")) == 32
        except Exception as exc:  # noqa: BLE001
            unclear.append(f"{label}: loaded, then {type(exc).__name__}: {exc}")
            continue
        if ok:
            _count("tamper matrix", "correct results")
        else:
            unclear.append(f"{label}: loaded with different results")
    assert not unclear, "\n".join(unclear)
