"""LangChain embeddings adapters: M3Embeddings, M3SparseEmbeddings, M3QdrantSparseEmbeddings, and the package's lazy imports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from langchain_helpers import CORPUS, TEXTS, heads, one_torch_thread, spy_encode  # noqa: F401

from m3_rag import lexical_scores
from m3_rag.langchain import M3Embeddings, M3SparseEmbeddings


# ---------------------------------------------------------------------------- langchain-tests standard suites
class TestM3EmbeddingsUnitStandard(EmbeddingsUnitTests):
    """Construction from a checkpoint folder (lazy: nothing is loaded by test_init)."""

    @pytest.fixture(autouse=True)
    def _ckpt(self, tiny_ckpt: Path) -> None:
        self._path = str(tiny_ckpt)

    @property
    def embeddings_class(self) -> type[M3Embeddings]:
        return M3Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": self._path, "device": "cpu"}


class TestM3EmbeddingsIntegrationStandard(EmbeddingsIntegrationTests):
    """The four embed tests on the shared tiny encoder."""

    @pytest.fixture(autouse=True)
    def _encoder(self, tiny_encoder) -> None:
        self._enc = tiny_encoder

    @property
    def embeddings_class(self) -> type[M3Embeddings]:
        return M3Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": self._enc}


# ---------------------------------------------------------------------------- M3Embeddings
def test_construction_is_lazy_and_loads_once(tiny_ckpt: Path) -> None:
    emb = M3Embeddings(model=tiny_ckpt, device="cpu")
    assert not emb.is_loaded and "not loaded" in repr(emb)
    sparse = M3SparseEmbeddings(model=emb)  # shares emb's (not yet loaded) encoder
    assert not sparse.is_loaded
    vec = emb.embed_query("hello")
    assert emb.is_loaded and sparse.is_loaded
    assert sparse.encoder is emb.encoder  # one model for both components
    assert len(vec) == emb.dimension == emb.encoder.dense_dim


def test_shares_a_ready_encoder(tiny_encoder) -> None:
    emb = M3Embeddings(model=tiny_encoder)
    assert emb.is_loaded and emb.encoder is tiny_encoder
    assert M3SparseEmbeddings(model=tiny_encoder).encoder is tiny_encoder


def test_vectors_are_python_floats_and_match_the_encoder(tiny_encoder) -> None:
    emb = M3Embeddings(model=tiny_encoder)
    docs = emb.embed_documents(["a b c", "", "東京 🍕"])
    assert len(docs) == 3 and all(isinstance(v, list) and type(v[0]) is float for v in docs)
    expected = tiny_encoder.encode_documents(["a b c", "", "東京 🍕"], sparse=False, colbert=False).dense
    np.testing.assert_allclose(np.array(docs), expected, rtol=1e-6, atol=1e-7)
    q = emb.embed_query("a b c")
    assert type(q[0]) is float
    np.testing.assert_allclose(q, tiny_encoder.encode_queries("a b c", sparse=False, colbert=False).dense[0], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, rtol=1e-5)
    assert emb.embed_documents([]) == []
    assert isinstance(emb, Embeddings)


def test_only_the_dense_head_runs_once_per_call(tiny_encoder) -> None:
    emb = M3Embeddings(model=tiny_encoder, batch_size=2)
    with spy_encode(tiny_encoder) as calls:
        emb.embed_query("one query")
        emb.embed_documents(["x", "y", "z"])
    assert [(c["n"], heads(c)) for c in calls] == [(1, ("dense",)), (3, ("dense",))]


def test_sparse_only_the_sparse_head_runs(tiny_encoder) -> None:
    sp = M3SparseEmbeddings(model=tiny_encoder)
    with spy_encode(tiny_encoder) as calls:
        sp.embed_query("q")
        sp.embed_documents(["x", "y"])
    assert [heads(c) for c in calls] == [("sparse",), ("sparse",)]


def test_bad_input(tiny_encoder, tiny_ckpt: Path) -> None:
    emb = M3Embeddings(model=tiny_encoder)
    with pytest.raises(TypeError, match="must be a str; got NoneType"):
        emb.embed_query(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str; got NoneType"):
        emb.embed_documents(["ok", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single str"):
        emb.embed_documents("not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model= must be"):
        M3Embeddings(model=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="would be ignored"):
        M3Embeddings(model=tiny_encoder, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        M3Embeddings(model=tiny_ckpt, batch_size=0)
    with pytest.raises(ValueError, match="query_max_length"):
        M3Embeddings(model=tiny_ckpt, query_max_length=1)


async def test_async_does_not_block_the_event_loop(tiny_encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = M3Embeddings(model=tiny_encoder)
    original = tiny_encoder.encode

    def slow_encode(*args, **kwargs):
        time.sleep(0.3)  # a blocking call, as a real forward pass is
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_encoder, "encode", slow_encode)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        docs, query = await asyncio.gather(emb.aembed_documents(["a", "b"]), emb.aembed_query("c"))
    finally:
        task.cancel()
    assert len(docs) == 2 and len(query) == emb.encoder.dense_dim
    assert ticks >= 5, f"the event loop was blocked while encoding (only {ticks} ticks)"


# ---------------------------------------------------------------------------- M3SparseEmbeddings (dict form)
def test_sparse_dict_form_matches_the_encoder(tiny_encoder) -> None:
    sp = M3SparseEmbeddings(model=tiny_encoder)
    docs = sp.embed_documents(TEXTS)
    ref = tiny_encoder.encode_documents(TEXTS, dense=False, colbert=False).sparse
    assert docs == ref
    for row in docs:
        assert all(type(t) is int and type(w) is float and w > 0 for t, w in row.items())
    q = sp.embed_query("capital of France")
    assert q == tiny_encoder.encode_queries("capital of France", dense=False, colbert=False).sparse[0]


async def test_sparse_async(tiny_encoder) -> None:
    sp = M3SparseEmbeddings(model=tiny_encoder)
    assert await sp.aembed_query("bread") == sp.embed_query("bread")
    assert await sp.aembed_documents(["a", "b"]) == sp.embed_documents(["a", "b"])


def test_sparse_needs_a_sparse_head(tmp_path: Path) -> None:
    from tiny_checkpoint import make_tiny_bert

    from m3_rag import M3Encoder, MissingHeadError

    enc = M3Encoder.from_pretrained(make_tiny_bert(tmp_path / "nosparse", with_sparse=False), device="cpu")
    with pytest.raises(MissingHeadError, match="no sparse head"):
        M3SparseEmbeddings(model=enc).embed_query("x")
    assert len(M3Embeddings(model=enc).embed_query("x")) == enc.dense_dim  # dense still works


FAKE_MILVUS_SPARSE = """
from abc import ABC, abstractmethod


class BaseSparseEmbedding(ABC):  # the interface of langchain_milvus.utils.sparse (not installed here)
    @abstractmethod
    def embed_query(self, query): ...

    @abstractmethod
    def embed_documents(self, texts): ...
"""


def test_registered_with_langchain_milvus_when_installed(tiny_encoder, tmp_path: Path, monkeypatch) -> None:
    from m3_rag.langchain import sparse as sparse_module

    pkg = tmp_path / "langchain_milvus"
    (pkg / "utils").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "utils" / "sparse.py").write_text(FAKE_MILVUS_SPARSE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sparse_module, "_milvus_checked", False)
    for name in ("langchain_milvus", "langchain_milvus.utils", "langchain_milvus.utils.sparse"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        sp = M3SparseEmbeddings(model=tiny_encoder)
        from langchain_milvus.utils.sparse import BaseSparseEmbedding

        assert isinstance(sp, BaseSparseEmbedding)
        assert not isinstance(M3Embeddings(model=tiny_encoder), BaseSparseEmbedding)
    finally:
        for name in ("langchain_milvus", "langchain_milvus.utils", "langchain_milvus.utils.sparse"):
            sys.modules.pop(name, None)


# ---------------------------------------------------------------------------- Qdrant sparse interface
def test_qdrant_sparse_vectors(tiny_encoder) -> None:
    from langchain_qdrant import SparseEmbeddings, SparseVector

    from m3_rag.langchain import M3QdrantSparseEmbeddings

    sp = M3SparseEmbeddings(model=tiny_encoder)
    qsp = sp.for_qdrant()
    assert isinstance(qsp, SparseEmbeddings) and qsp.encoder is tiny_encoder
    vec = qsp.embed_query("capital of France")
    assert isinstance(vec, SparseVector)
    assert dict(zip(vec.indices, vec.values)) == sp.embed_query("capital of France")
    assert len(set(vec.indices)) == len(vec.indices)
    docs = M3QdrantSparseEmbeddings(model=tiny_encoder).embed_documents(["a b", ""])
    assert [dict(zip(v.indices, v.values)) for v in docs] == sp.embed_documents(["a b", ""])


@pytest.fixture(scope="module")
def qdrant_corpus() -> tuple[list[str], list[str], list[dict]]:
    """The corpus with uuid ids (Qdrant point ids must be uuids or ints)."""
    import uuid

    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, name)) for name, _, _ in CORPUS]
    return ids, [c[1] for c in CORPUS], [c[2] for c in CORPUS]


def test_plugs_into_qdrant_vectorstore_sparse_mode(tiny_encoder, qdrant_corpus) -> None:
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    from m3_rag.langchain import M3QdrantSparseEmbeddings

    ids, texts, metadatas = qdrant_corpus
    sparse = M3QdrantSparseEmbeddings(model=tiny_encoder)
    qdrant = QdrantVectorStore.from_texts(
        texts,
        embedding=None,
        sparse_embedding=sparse,
        retrieval_mode=RetrievalMode.SPARSE,
        location=":memory:",
        collection_name="m3_sparse",
        metadatas=metadatas,
        ids=ids,
    )
    query = "capital of France"
    results = qdrant.similarity_search_with_score(query, k=4)
    # Qdrant's sparse score is the dot product, i.e. BGE-M3's lexical score: recompute it here.
    q = M3SparseEmbeddings(model=tiny_encoder).embed_query(query)
    d = M3SparseEmbeddings(model=tiny_encoder).embed_documents(texts)
    expected = lexical_scores(q, d).astype(np.float64)
    order = np.argsort(-expected, kind="stable")[:4]
    assert [doc.metadata["_id"] for doc, _ in results] == [ids[i] for i in order]
    np.testing.assert_allclose([s for _, s in results], expected[order], rtol=1e-5)
    assert results[0][0].page_content == texts[order[0]]


def test_plugs_into_qdrant_vectorstore_hybrid_mode(tiny_encoder, qdrant_corpus) -> None:
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    ids, texts, metadatas = qdrant_corpus
    emb = M3Embeddings(model=tiny_encoder)
    qdrant = QdrantVectorStore.from_texts(
        texts,
        embedding=emb,
        sparse_embedding=M3SparseEmbeddings(model=emb).for_qdrant(),
        retrieval_mode=RetrievalMode.HYBRID,
        location=":memory:",
        collection_name="m3_hybrid",
        metadatas=metadatas,
        ids=ids,
    )
    target = texts[3]
    docs = qdrant.similarity_search(target, k=3)
    assert len(docs) == 3
    # the document's own text is the best match in both dense and sparse, so it tops the RRF fusion
    assert docs[0].page_content == target and docs[0].metadata["_id"] == ids[3]


# ---------------------------------------------------------------------------- package imports
# One fresh interpreter (importing torch is the slow part) runs every import check in sequence.
IMPORT_CHECKS = r"""
import sys
import m3_rag
assert not [m for m in sys.modules if m.startswith('langchain')], 'importing m3_rag imported langchain'

sys.modules['langchain_core'] = None  # `import langchain_core` now raises ImportError
try:
    import m3_rag.langchain
except ImportError as e:
    assert 'pip install "m3-rag[langchain]"' in str(e), str(e)
else:
    raise SystemExit('m3_rag.langchain imported without langchain-core')
del sys.modules['langchain_core']

import m3_rag.langchain as lc
assert lc.__all__ == ['M3Embeddings', 'M3SparseEmbeddings', 'M3QdrantSparseEmbeddings', 'M3Retriever', 'M3VectorStore'], lc.__all__
lc.M3Embeddings, lc.M3SparseEmbeddings, lc.M3Retriever, lc.M3VectorStore
assert not [m for m in sys.modules if m.startswith(('langchain_qdrant', 'qdrant_client'))], 'qdrant imported eagerly'
try:
    lc.Nope
except AttributeError as e:
    assert 'M3Retriever' in str(e), str(e)
else:
    raise SystemExit('no AttributeError for an unknown name')

sys.modules['langchain_qdrant'] = None
try:
    from m3_rag.langchain import M3QdrantSparseEmbeddings
except ImportError as e:
    assert 'pip install langchain-qdrant' in str(e), str(e)
else:
    raise SystemExit('M3QdrantSparseEmbeddings imported without langchain-qdrant')
print('ok')
"""


def test_imports_are_lazy_and_missing_extras_are_named() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECKS], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
