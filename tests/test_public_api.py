import m3_rag


def test_public_api_is_pinned():
    expected = {
        "M3Encoder", "M3Output", "Hit", "Record", "MODES", "MissingHeadError", "ModelNotFoundError",
        "lexical_score", "lexical_scores", "colbert_score", "colbert_scores", "dense_scores",
        "HybridStore", "FUSIONS", "DEFAULT_WEIGHTS", "fuse_weighted", "fuse_rrf", "fuse_dbsf",
    }
    assert expected <= set(m3_rag.__all__)
    for name in m3_rag.__all__:
        assert hasattr(m3_rag, name), name


def test_core_does_not_import_frameworks():
    import subprocess
    import sys

    code = (
        "import sys, m3_rag, m3_rag.encoder, m3_rag.scoring, m3_rag.types, m3_rag.store, m3_rag.fusion, m3_rag.filters\n"
        "bad = [m for m in sys.modules if m.startswith(('langchain', 'llama_index', 'qdrant_client'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
