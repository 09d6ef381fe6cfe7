"""Fusion functions against values worked out by hand on tiny candidate sets."""

import math

import numpy as np
import pytest

from m3_rag.fusion import (
    DEFAULT_WEIGHTS,
    FUSIONS,
    RRF_K,
    dbsf_normalize,
    fuse,
    fuse_dbsf,
    fuse_rrf,
    fuse_weighted,
    resolve_weights,
    rrf_ranks,
)

# three candidates, two modes
SCORES = {"dense": np.array([0.8, 0.5, 0.2]), "sparse": np.array([0.1, 0.3, 0.0])}


def test_constants():
    assert FUSIONS == ("weighted", "rrf", "dbsf")
    assert DEFAULT_WEIGHTS == {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}
    assert RRF_K == 60


def test_weighted_hand_computed():
    # (0.4*0.8 + 0.2*0.1)/0.6 = 0.34/0.6 ; (0.4*0.5+0.2*0.3)/0.6 = 0.26/0.6 ; 0.08/0.6
    out = fuse_weighted(SCORES)
    np.testing.assert_allclose(out, [0.34 / 0.6, 0.26 / 0.6, 0.08 / 0.6])
    out = fuse_weighted(SCORES, {"dense": 1.0, "sparse": 3.0})
    np.testing.assert_allclose(out, [(0.8 + 0.3) / 4, (0.5 + 0.9) / 4, 0.2 / 4])


def test_weighted_matches_flagembedding_three_modes():
    s = {"dense": [0.7], "sparse": [0.2], "colbert": [0.6]}
    # FlagEmbedding compute_score: (w0*dense + w1*sparse + w2*colbert) / (w0 + w1 + w2)
    assert fuse_weighted(s)[0] == pytest.approx((0.4 * 0.7 + 0.2 * 0.2 + 0.4 * 0.6) / 1.0)


def test_rrf_ranks_ties_share_best_rank():
    np.testing.assert_array_equal(rrf_ranks(np.array([0.3, 0.9, 0.3, 0.1])), [2, 1, 2, 4])
    np.testing.assert_array_equal(rrf_ranks(np.array([])), [])


def test_rrf_hand_computed():
    # dense ranks 1,2,3 ; sparse ranks 2,1,3
    out = fuse_rrf(SCORES)
    np.testing.assert_allclose(out, [1 / 61 + 1 / 62, 1 / 62 + 1 / 61, 1 / 63 + 1 / 63])
    out = fuse_rrf(SCORES, {"dense": 2.0, "sparse": 0.5})
    np.testing.assert_allclose(out, [2 / 61 + 0.5 / 62, 2 / 62 + 0.5 / 61, 2 / 63 + 0.5 / 63])
    out = fuse_rrf(SCORES, k=0)
    np.testing.assert_allclose(out, [1 + 1 / 2, 1 / 2 + 1, 1 / 3 + 1 / 3])
    with pytest.raises(ValueError, match="k"):
        fuse_rrf(SCORES, k=-1)


def test_dbsf_hand_computed():
    # dense: mean .5, sample std .3 -> limits -.4 and 1.4 ; (x + .4) / 1.8
    np.testing.assert_allclose(dbsf_normalize(SCORES["dense"]), [1.2 / 1.8, 0.9 / 1.8, 0.6 / 1.8])
    # sparse: mean 0.4/3, sample var = ((0.1-m)^2+(0.3-m)^2+m^2)/2
    m = 0.4 / 3
    std = math.sqrt(((0.1 - m) ** 2 + (0.3 - m) ** 2 + m**2) / 2)
    lo, hi = m - 3 * std, m + 3 * std
    exp_sparse = (np.array([0.1, 0.3, 0.0]) - lo) / (hi - lo)
    np.testing.assert_allclose(fuse_dbsf(SCORES), np.array([1.2, 0.9, 0.6]) / 1.8 + exp_sparse)
    np.testing.assert_allclose(
        fuse_dbsf(SCORES, {"dense": 2.0, "sparse": 0.0}), 2 * np.array([1.2, 0.9, 0.6]) / 1.8
    )


def test_dbsf_degenerate_cases():
    np.testing.assert_array_equal(dbsf_normalize(np.array([3.0])), [0.5])
    np.testing.assert_array_equal(dbsf_normalize(np.array([2.0, 2.0])), [0.5, 0.5])
    assert dbsf_normalize(np.array([])).shape == (0,)


def test_fuse_dispatch_and_errors():
    np.testing.assert_allclose(fuse("rrf", SCORES), fuse_rrf(SCORES))
    with pytest.raises(ValueError, match="weighted, rrf, dbsf"):
        fuse("max", SCORES)
    with pytest.raises(ValueError, match="same candidates"):
        fuse_weighted({"dense": [1.0, 2.0], "sparse": [1.0]})
    with pytest.raises(ValueError, match="no weight"):
        fuse_weighted(SCORES, {"dense": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        fuse_weighted(SCORES, {"dense": 0.0, "sparse": 0.0})


def test_resolve_weights():
    assert resolve_weights(("dense", "sparse"), None) == {"dense": 0.4, "sparse": 0.2}
    assert resolve_weights(("dense", "sparse"), None, "rrf") == {"dense": 1.0, "sparse": 1.0}
    assert resolve_weights(("sparse", "dense"), [1, 2]) == {"sparse": 1.0, "dense": 2.0}
    assert resolve_weights(("dense",), {"dense": 3}) == {"dense": 3.0}
    with pytest.raises(ValueError, match="2 value"):
        resolve_weights(("dense",), [1, 2])
    with pytest.raises(ValueError, match="not searched"):
        resolve_weights(("dense",), {"dense": 1, "sparse": 1})
    with pytest.raises(ValueError, match="no weight for"):
        resolve_weights(("dense", "sparse"), {"dense": 1})
    with pytest.raises(ValueError, match="unknown mode"):
        resolve_weights(("dense",), {"bm42": 1})
    with pytest.raises(ValueError, match="finite"):
        resolve_weights(("dense",), [-1])
    with pytest.raises(ValueError, match="finite"):
        resolve_weights(("dense",), [float("nan")])
    with pytest.raises(TypeError, match="number"):
        resolve_weights(("dense",), ["a"])
    with pytest.raises(TypeError, match="sequence"):
        resolve_weights(("dense",), "1")
    with pytest.raises(ValueError, match="unknown fusion"):
        resolve_weights(("dense",), None, "sum")
