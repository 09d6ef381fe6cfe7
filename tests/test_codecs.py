"""Compact ColBERT codecs (binary, pq) and token pooling: hand-computed examples, MaxSim against exact fp32,
state round trips and bad input."""

import numpy as np
import pytest

from m3_rag.index.codecs import CODECS, BinaryCodec, PQCodec, make_codec
from m3_rag.index.pooling import check_pool_factor, pool_tokens
from m3_rag.scoring import maxsim_packed


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def corpus():
    rng = np.random.default_rng(7)
    lens = rng.integers(1, 25, 60)
    offsets = np.r_[0, np.cumsum(lens)].astype(np.int64)
    return _unit(rng, int(offsets[-1]), 64), offsets, _unit(rng, 6, 64)


def test_registry_and_unknown_codec():
    assert {"fp32", "fp16", "int8", "binary", "pq"} <= set(CODECS)
    with pytest.raises(ValueError, match="unknown ColBERT storage 'bits'.*binary.*pq"):
        make_codec("bits")
    with pytest.raises(ValueError, match="unknown scale 'max'"):
        BinaryCodec(scale="max")


def test_binary_hand_computed():
    x = np.array([[0.5, -1.0, 0.0, 2.5]], dtype=np.float32)
    c = BinaryCodec()
    parts = c.encode(x)
    assert parts["tokens"].tolist() == [[0b10010000]]  # signs + - (0 counts as -) +, padded
    assert parts["scale"].tolist() == [1.0]  # mean |x| = 4/4
    np.testing.assert_array_equal(c.decode(parts, slice(None), dim=4), [[1.0, -1.0, -1.0, 1.0]])
    q = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    # q . (1 * [1,-1,-1,1]) = 1 - 2 - 3 + 4 = 0 ; one doc with one token
    assert c.maxsim(q, parts, np.array([0, 1]), None).tolist() == [0.0]
    none = BinaryCodec(scale="none")
    assert none.maxsim(q, none.encode(x), np.array([0, 1]), None)[0] == 0.0
    assert c.bytes_per_token(1024) == 130 and none.bytes_per_token(1024) == 128


@pytest.mark.parametrize("name,kw,tol,corr", [  # random 64-d unit vectors: the hardest case for 1-bit codes
    ("binary", {}, 0.12, 0.85), ("binary", {"scale": "l2"}, 0.12, 0.85), ("binary", {"scale": "none"}, 0.12, 0.85),
    ("pq", {}, 0.12, 0.9), ("pq", {"opq": True}, 0.12, 0.9), ("pq", {"m": 16}, 0.12, 0.9),
])
def test_maxsim_close_to_fp32_and_equal_to_decoded(corpus, name, kw, tol, corr):
    tokens, offsets, q = corpus
    c = make_codec(name, **kw)
    if c.trained:
        with pytest.raises(RuntimeError, match="not trained"):
            c.encode(tokens)
        c.fit(tokens)
    parts = c.encode(tokens)
    ref = maxsim_packed(q, tokens, offsets)
    got = c.maxsim(q, parts, offsets, None)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() < tol
    assert np.corrcoef(got, ref)[0, 1] > corr
    # MaxSim over compressed tokens == exact MaxSim over the decoded vectors
    dec = c.decode(parts, np.arange(len(tokens)))
    np.testing.assert_allclose(got, maxsim_packed(q, dec, offsets), atol=1e-5)
    # a subset in any order, with repeats, and tiny chunks (documents split across chunk boundaries)
    docs = np.array([5, 0, 59, 5, 17])
    np.testing.assert_allclose(c.maxsim(q, parts, offsets, docs), got[docs], atol=1e-6)
    c.chunk_tokens = 7
    np.testing.assert_allclose(c.maxsim(q, parts, offsets, docs), got[docs], atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        c.maxsim(q, parts, offsets, np.array([60]))


def test_empty_documents_score_zero(corpus):
    tokens, _, q = corpus
    offsets = np.array([0, 0, 3, 3, 5])
    for c in (BinaryCodec(), PQCodec()):
        if c.trained:
            c.fit(tokens)
        s = c.maxsim(q, c.encode(tokens[:5]), offsets, None)
        assert s[0] == 0 and s[2] == 0 and s[1] != 0


def test_pq_bytes_and_state_round_trip(corpus, tmp_path):
    tokens, offsets, q = corpus
    for kw in ({}, {"opq": True}):
        c = PQCodec(**kw)
        c.fit(tokens)
        assert c.bytes_per_token(64) == 4 and c.encode(tokens)["tokens"].shape == (len(tokens), 4)
        state = c.state()
        assert state["faiss_index"].dtype == np.uint8
        np.save(tmp_path / "codec.npy", state["faiss_index"], allow_pickle=False)
        d = PQCodec(**kw)
        d.load_state({"faiss_index": np.load(tmp_path / "codec.npy", allow_pickle=False)}, 64)
        np.testing.assert_array_equal(d.encode(tokens)["tokens"], c.encode(tokens)["tokens"])
        parts = c.encode(tokens)
        np.testing.assert_array_equal(d.maxsim(q, parts, offsets, None), c.maxsim(q, parts, offsets, None))


def test_pq_bad_state(corpus):
    tokens, _, _ = corpus
    c = PQCodec()
    c.fit(tokens)
    blob = c.state()["faiss_index"]
    with pytest.raises(ValueError, match="no 'faiss_index'"):
        PQCodec().load_state({}, 64)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        PQCodec().load_state({"faiss_index": blob[: len(blob) // 2]}, 64)
    with pytest.raises(ValueError, match="uint8"):
        PQCodec().load_state({"faiss_index": blob.astype(np.int64)}, 64)
    with pytest.raises(ValueError, match="dimension 64 but the ColBERT vectors have 128"):
        PQCodec().load_state({"faiss_index": blob}, 128)
    with pytest.raises(ValueError, match="m=4 sub-quantisers, expected m=8"):
        PQCodec(m=8).load_state({"faiss_index": blob}, 64)


def test_pq_too_small_and_bad_parameters(corpus):
    tokens, _, _ = corpus
    with pytest.raises(ValueError, match="too few.*at least 256"):
        PQCodec().fit(tokens[:255])
    PQCodec().fit(tokens[:256])
    with pytest.raises(ValueError, match="m=5 must divide the dimension 64"):
        PQCodec(m=5).fit(tokens)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            PQCodec(m=bad)
    with pytest.raises(ValueError, match="nbits=4"):
        PQCodec(nbits=4)
    c = PQCodec()
    c.fit(tokens)
    with pytest.raises(ValueError, match="shape"):
        c.encode(tokens[:, :32])


# ------------------------------------------------------------------------------------------ pooling
def test_pool_identity_and_shapes():
    rng = np.random.default_rng(0)
    x = _unit(rng, 10, 16)
    np.testing.assert_array_equal(pool_tokens(x, 1), x)
    assert pool_tokens(x, 2).shape == (5, 16)
    assert pool_tokens(x, 3).shape[0] <= 4
    assert pool_tokens(x, 100).shape == (1, 16)  # factor > tokens keeps one vector (the mean)
    np.testing.assert_allclose(pool_tokens(x, 100)[0], x.mean(axis=0), atol=1e-6)
    assert pool_tokens(x[:1], 4).shape == (1, 16)
    assert pool_tokens(np.zeros((0, 16), np.float32), 2).shape == (0, 16)
    r = pool_tokens(x, 2, renormalize=True)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)


def test_pool_hand_computed_clusters():
    # two tight pairs far apart: factor 2 -> each pair's mean
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    got = pool_tokens(x, 2)
    want = np.array([[0.95, 0.05], [0.05, 0.95]], dtype=np.float32)
    got = got[np.argsort(-got[:, 0])]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_pool_preserves_maxsim_roughly():
    rng = np.random.default_rng(1)
    centers = _unit(rng, 8, 32)
    x = centers.repeat(4, axis=0) + 0.01 * rng.standard_normal((32, 32)).astype(np.float32)
    q = _unit(rng, 4, 32)
    full = maxsim_packed(q, x, np.array([0, 32]))[0]
    pooled = pool_tokens(x, 4)
    assert pooled.shape == (8, 32)
    assert abs(maxsim_packed(q, pooled, np.array([0, 8]))[0] - full) < 0.05


@pytest.mark.parametrize("bad", [0, -2, 1.5, 2.0, True, "2", None])
def test_pool_factor_rejected(bad):
    with pytest.raises(ValueError, match="colbert_pool_factor"):
        check_pool_factor(bad)
    with pytest.raises(ValueError, match="colbert_pool_factor"):
        pool_tokens(np.ones((3, 4), np.float32), bad)


def test_pool_bad_matrix():
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        pool_tokens(np.ones(4, np.float32), 2)


# ------------------------------------------------------------------------------- with the ColBERT index
def test_colbert_index_holds_compact_codecs():
    from m3_rag.index.colbert import ColbertIndex

    rng = np.random.default_rng(3)
    docs = [rng.standard_normal((int(n), 32)).astype(np.float32) for n in rng.integers(8, 20, 30)]
    ix = ColbertIndex(32, "binary")
    ix.append(ix.prepare(docs))
    _, arrays = ix.to_arrays()
    assert {"colbert_tokens.npy", "colbert_scale.npy"} <= set(arrays)
    pq = ColbertIndex(32, "pq")  # trained on the first add's tokens
    pq.append(pq.prepare(docs))
    assert pq.codec.is_fitted and "colbert_codec_faiss_index.npy" in pq.to_arrays()[1]
    with pytest.raises(ValueError, match="at least 256"):
        ColbertIndex(32, "pq").prepare(docs[:3])


def test_pooling_distances_match_pdist_and_give_the_same_clusters():
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    from m3_rag.index.pooling import _condensed_euclidean

    rng = np.random.default_rng(11)
    topics = rng.standard_normal((8, 64)).astype(np.float32)
    for n in (2, 3, 17, 60):
        x = (topics[rng.integers(0, 8, n)] + 0.7 * rng.standard_normal((n, 64))).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ref = pdist(x.astype(np.float64))
        np.testing.assert_allclose(_condensed_euclidean(x), ref, rtol=0, atol=1e-6)
        k = max(1, n // 2)
        a = fcluster(linkage(x.astype(np.float64), method="ward"), t=k, criterion="maxclust")
        b = fcluster(linkage(_condensed_euclidean(x), method="ward"), t=k, criterion="maxclust")
        assert (a == b).all()
