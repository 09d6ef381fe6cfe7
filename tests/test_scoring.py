"""Scoring functions against values worked out by hand on 2x3 examples (FlagEmbedding's formulas)."""

from __future__ import annotations

import numpy as np
import pytest

from m3_rag import colbert_score, colbert_scores, dense_scores, lexical_score, lexical_scores
from m3_rag.scoring import maxsim_packed, pack_colbert

# two queries, three documents (sparse)
Q_SPARSE = [{1: 1.0, 2: 2.0}, {3: 0.5}]
D_SPARSE = [{1: 3.0}, {2: 1.0, 3: 4.0}, {}]
# q0: [1*3, 2*1, 0] = [3, 2, 0];  q1: [0, 0.5*4, 0] = [0, 2, 0]
LEXICAL = np.array([[3.0, 2.0, 0.0], [0.0, 2.0, 0.0]])

# two queries (token matrices), three documents (token matrices), dim 2
Q_COLBERT = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.8]])]
D_COLBERT = [np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([[0.0, 1.0]]), np.array([[0.6, 0.8]])]
# q0 . D0: (max(1, .6) + max(0, .8)) / 2 = 0.9;  q0 . D1: (0 + 1) / 2 = 0.5;  q0 . D2: (.6 + .8) / 2 = 0.7
# q1 . D0: max(.6, .36 + .64) = 1.0;            q1 . D1: 0.8;              q1 . D2: 1.0
COLBERT = np.array([[0.9, 0.5, 0.7], [1.0, 0.8, 1.0]])


def test_lexical_score_by_hand() -> None:
    got = np.array([[lexical_score(q, d) for d in D_SPARSE] for q in Q_SPARSE])
    np.testing.assert_allclose(got, LEXICAL)
    assert lexical_score({1: 0.5, 2: 1.0}, {2: 0.3, 7: 9.0}) == pytest.approx(0.3)
    assert lexical_score({}, {}) == 0.0
    # symmetric, whichever side is shorter
    assert lexical_score(D_SPARSE[1], Q_SPARSE[0]) == lexical_score(Q_SPARSE[0], D_SPARSE[1])


def test_lexical_scores_by_hand() -> None:
    got = lexical_scores(Q_SPARSE[0], D_SPARSE)
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, LEXICAL[0])
    assert lexical_scores(Q_SPARSE[0], []).shape == (0,)


def test_lexical_score_rejects_non_dicts() -> None:
    with pytest.raises(TypeError, match="dict"):
        lexical_score([1, 2], {1: 1.0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dict"):
        lexical_score({1: 1.0}, None)  # type: ignore[arg-type]


def test_colbert_score_by_hand() -> None:
    got = np.array([[colbert_score(q, d) for d in D_COLBERT] for q in Q_COLBERT])
    np.testing.assert_allclose(got, COLBERT, atol=1e-6)
    assert colbert_score(Q_COLBERT[0], np.zeros((0, 2))) == 0.0  # a document without token vectors


def test_colbert_score_errors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        colbert_score(np.array([1.0, 0.0]), D_COLBERT[0])
    with pytest.raises(ValueError, match="dimension mismatch"):
        colbert_score(Q_COLBERT[0], np.ones((2, 3)))
    with pytest.raises(ValueError, match="no token vectors"):
        colbert_score(np.zeros((0, 2)), D_COLBERT[0])


def test_colbert_scores_by_hand() -> None:
    for qi, q in enumerate(Q_COLBERT):
        got = colbert_scores(q, D_COLBERT)
        assert got.dtype == np.float32 and got.shape == (3,)
        np.testing.assert_allclose(got, COLBERT[qi], atol=1e-6)
    assert colbert_scores(Q_COLBERT[0], []).shape == (0,)
    got = colbert_scores(Q_COLBERT[0], [np.zeros((0, 2)), D_COLBERT[0]])
    np.testing.assert_allclose(got, [0.0, 0.9], atol=1e-6)
    with pytest.raises(ValueError, match=r"document 1 has shape \(1, 3\)"):
        colbert_scores(Q_COLBERT[0], [D_COLBERT[0], np.ones((1, 3))])


def test_maxsim_packed_fp32_and_subsets() -> None:
    tokens, offsets = pack_colbert(D_COLBERT)
    assert tokens.shape == (4, 2) and offsets.tolist() == [0, 2, 3, 4]
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], tokens, offsets), COLBERT[0], atol=1e-6)
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[1], tokens, offsets), COLBERT[1], atol=1e-6)
    # non-contiguous and reordered subsets, repeats, and a contiguous range
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], tokens, offsets, [2, 0]), [0.7, 0.9], atol=1e-6)
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], tokens, offsets, [1, 1]), [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], tokens, offsets, [1, 2]), [0.5, 0.7], atol=1e-6)
    assert maxsim_packed(Q_COLBERT[0], tokens, offsets, []).shape == (0,)
    # one row per chunk gives the same numbers
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], tokens, offsets, chunk_tokens=1), COLBERT[0], atol=1e-6)


def test_maxsim_packed_empty_documents() -> None:
    docs = [np.zeros((0, 2)), D_COLBERT[0], np.zeros((0, 2)), D_COLBERT[2]]
    tokens, offsets = pack_colbert(docs)
    assert offsets.tolist() == [0, 0, 2, 2, 3]
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], tokens, offsets), [0.0, 0.9, 0.0, 0.7], atol=1e-6)
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], tokens, offsets, [2, 3, 0]), [0.0, 0.7, 0.0], atol=1e-6)
    tokens, offsets = pack_colbert([np.zeros((0, 2)), np.zeros((0, 2))])
    np.testing.assert_array_equal(maxsim_packed(Q_COLBERT[0], tokens, offsets), [0.0, 0.0])
    tokens, offsets = pack_colbert([])
    assert maxsim_packed(Q_COLBERT[0], tokens, offsets).shape == (0,)


def test_maxsim_packed_fp16_and_int8() -> None:
    tokens, offsets = pack_colbert(D_COLBERT, dtype=np.float16)
    assert tokens.dtype == np.float16
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], tokens, offsets), COLBERT[0], atol=1e-3)
    # int8 storage: rows * 100, per-token scale 0.01 -> the same vectors
    int8 = np.array([[100, 0], [60, 80], [0, 100], [60, 80]], dtype=np.int8)
    np.testing.assert_allclose(
        maxsim_packed(Q_COLBERT[0], int8, offsets, scale=np.full(4, 0.01, np.float32)), COLBERT[0], atol=1e-6
    )
    np.testing.assert_allclose(maxsim_packed(Q_COLBERT[0], int8, offsets, scale=0.01), COLBERT[0], atol=1e-6)
    # per-token scales differ: halve document 1's only row -> (0 + 0.5) / 2
    scale = np.array([0.01, 0.01, 0.005, 0.01], dtype=np.float32)
    np.testing.assert_allclose(
        maxsim_packed(Q_COLBERT[0], int8, offsets, [2, 1], scale=scale), [0.7, 0.25], atol=1e-6
    )


def test_maxsim_packed_errors() -> None:
    tokens, offsets = pack_colbert(D_COLBERT)
    with pytest.raises(ValueError, match="no token vectors"):
        maxsim_packed(np.zeros((0, 2)), tokens, offsets)
    with pytest.raises(ValueError, match=r"doc_idx \[3\] out of range for 3 documents"):
        maxsim_packed(Q_COLBERT[0], tokens, offsets, [0, 3])
    with pytest.raises(ValueError, match="out of range"):
        maxsim_packed(Q_COLBERT[0], tokens, offsets, [-1])
    with pytest.raises(ValueError, match=r"tokens must have shape \(T, 2\)"):
        maxsim_packed(Q_COLBERT[0], np.ones((4, 3), np.float32), offsets)
    with pytest.raises(ValueError, match="scale must be a scalar or have shape"):
        maxsim_packed(Q_COLBERT[0], tokens, offsets, scale=np.ones(2))
    with pytest.raises(ValueError, match="offsets end at 4"):
        maxsim_packed(Q_COLBERT[0], tokens[:2], offsets)
    with pytest.raises(ValueError, match="non-decreasing"):
        maxsim_packed(Q_COLBERT[0], tokens, np.array([0, 3, 2, 4]))


def test_dense_scores_by_hand() -> None:
    docs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = dense_scores(np.array([1.0, 2.0]), docs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(dense_scores(np.array([[0.5, -1.0]]), docs), [0.5, -1.0, -0.5])
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        dense_scores(np.ones(3), docs)
    with pytest.raises(ValueError, match="dense_scores"):
        dense_scores(np.ones(2), np.ones(2))
