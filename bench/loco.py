"""Leave-one-collection-out (LOCO) choice of ``minilm-m3``'s recommended modes, fusion and weights.

Usage (needs the token-state cache of ``bench/minilm_m3_eval.py cache``)::

    python bench/minilm_m3_eval.py cache --cache-dir /tmp/m3cache        # backbone token states, once
    python bench/loco.py --cache-dir /tmp/m3cache --json bench/results/loco.json [--write-model-json]

A *choice* is a mode set (a subset of dense, sparse, colbert, bm25; ColBERT either the trained head or the
identity head, i.e. zero-shot MaxSim) and a fusion: ``weighted`` (raw-score weighted mean, a grid of
weights with dense weight 1), ``rrf`` (k = 60, equal weights: no free parameter), ``rrf-w`` (RRF with a
grid of weights), ``dbsf`` (equal weights) or ``dbsf-w`` (a grid of weights). The formulas are
:mod:`m3_rag.fusion`'s own functions.

Candidates emulate ``HybridStore``: per query, the top 100 (stable: score descending, then insertion
order; lexical modes padded with zero-score documents) of every *first-stage* mode searched (dense,
sparse, bm25; ColBERT only rescores), their union in insertion order, then the exact score of every
searched mode on that union, fused, ties broken by insertion order.

For every choice and every fold, the free parameters are tuned on five collections (best mean nDCG@10)
and the sixth is scored: the table gives, per choice, the six held-out scores, their mean and their
minimum. The recommended choice is the one whose *worst* held-out collection is best. Only the six shared
collections are ever used. Score matrices come from ``bench/minilm_m3_eval.py`` (``baseline_scores``,
``model_scores``: BM25 = bm25s + PyStemmer English, dense, zero-shot MaxSim, the model's sparse and
ColBERT) and are cached as .npy under ``--scores-dir``; nDCG@10 is ``minilm_m3_eval.ndcg10`` for every
reported number (a vectorised copy of the same measure is used only inside the grid search, and checked
against ``ndcg10``). Prints JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import minilm_m3_eval as ev

from m3_rag.fusion import fuse

#: Canonical mode order (keys of ``fusion_weights_by_modes`` join these with '+').
CANONICAL = ("dense", "sparse", "colbert", "bm25")
#: Modes that give candidates (``HybridStore``: dense and the lexical modes; ColBERT rescores only).
FIRST_STAGE = ("dense", "sparse", "bm25")
LEXICAL = ("sparse", "bm25")
DEPTH = 100
#: Weighted (raw score) grids, relative to dense = 1. Typical top-100 score spread on med: dense 0.11,
#: sparse 0.07, ColBERT 0.07, bm25 1.7, so equal contributions sit near sparse 1.5, colbert 1.6, bm25 0.06.
WEIGHTED_GRID = {
    "sparse": (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5),
    "colbert": (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0),
    "bm25": (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15),
}
#: When dense is not searched, the first mode is the reference, at this weight (its grid's middle).
WEIGHTED_REF = {"sparse": 0.5, "colbert": 2.0, "bm25": 0.03}
#: Rank-based and normalised fusions: weights relative to the reference mode's 1.
RELATIVE_GRID = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)
FUSIONS = ("weighted", "rrf", "rrf-w", "dbsf", "dbsf-w")
#: Fusions a model's ``m3_model.json`` can recommend with its weights (``fusion_weights*`` are weighted-fusion
#: weights; RRF and DBSF are recommended with equal weights).
SHIPPABLE = ("weighted", "rrf", "dbsf")
#: Choices whose worst held-out score is this close to the best one are listed as near ties.
NEAR = 0.005


@dataclass(frozen=True)
class ModeSet:
    """A mode set in canonical order; ``identity``: ColBERT is the identity head (zero-shot MaxSim)."""

    modes: tuple[str, ...]
    identity: bool = False

    @property
    def key(self) -> str:
        return "+".join(self.modes)

    @property
    def label(self) -> str:
        return self.key + (" (ColBERT identity)" if self.identity else "")

    def matrix_name(self, mode: str) -> str:
        return "colbert_identity" if (mode == "colbert" and self.identity) else mode


def all_mode_sets() -> list[ModeSet]:
    """Every subset of two or more modes, and each one with ColBERT also with the identity head."""
    out = []
    for r in range(2, len(CANONICAL) + 1):
        for combo in itertools.combinations(CANONICAL, r):
            out.append(ModeSet(combo))
            if "colbert" in combo:
                out.append(ModeSet(combo, identity=True))
    return out


# ------------------------------------------------------------------------------------------ scores
def heads_tag(model: str) -> str:
    h = hashlib.sha256()
    for f in ("sparse_linear.pt", "colbert_linear.pt", "m3_model.json"):
        p = ev.heads_dir(model) / f
        if f != "m3_model.json":
            h.update(p.read_bytes())
        else:  # only the sparse rule matters for the scores, not the fusion keys this script rewrites
            h.update(str(ev.drops_special_tokens(model)).encode())
    return h.hexdigest()[:12]


def score_matrices(name: str, cache_dir: Path, scores_dir: Path, model: str) -> dict[str, np.ndarray]:
    """(queries, docs) float32 score matrices of ``name``: bm25, dense, sparse, colbert (trained head) and
    colbert_identity (zero-shot MaxSim), computed once by ``minilm_m3_eval`` and cached under ``scores_dir``."""
    folder = scores_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("queries", "docs"):  # minilm_m3_eval reads CACHE/name/{queries,docs}; its baselines go next to them
        link, target = folder / part, cache_dir / name / part
        if not (target / "meta.json").exists():
            raise SystemExit(f"{target} is not a finished token-state cache (run bench/minilm_m3_eval.py cache)")
        if not link.exists():
            link.symlink_to(target.resolve())
    ev.CACHE = scores_dir
    base = ev.baseline_scores(name)
    tag = heads_tag(model)
    mfolder = folder / f"model_{tag}"
    files = {m: mfolder / f"{m}.npy" for m in ("sparse", "colbert")}
    if all(f.exists() for f in files.values()):
        mine = {m: np.load(f) for m, f in files.items()}
    else:
        mine = ev.model_scores(name, model)
        mfolder.mkdir(exist_ok=True)
        for m, f in files.items():
            np.save(f, mine[m].astype(np.float32))
    return {"bm25": base["bm25"], "dense": base["dense"], "sparse": mine["sparse"], "colbert": mine["colbert"],
            "colbert_identity": base["zero_shot_maxsim"]}


class Collection:
    """One collection's score matrices, judgments and per-mode-set candidate pools."""

    def __init__(self, name: str, mats: dict[str, np.ndarray]):
        self.name = name
        self.doc_ids, _, self.qids, _, self.qrels = ev.read_collection(name)
        self.mats = mats
        nq, nd = mats["dense"].shape
        pos = {d: j for j, d in enumerate(self.doc_ids)}
        self.gain = np.zeros((nq, nd), np.float64)
        self.idcg = np.zeros(nq)
        disc = 1.0 / np.log2(np.arange(2, 12))
        for qi, q in enumerate(self.qids):
            rels = sorted((r for r in self.qrels[q].values() if r > 0), reverse=True)[:10]
            self.idcg[qi] = float(np.dot(rels, disc[: len(rels)]))
            for d, r in self.qrels[q].items():
                if r > 0 and d in pos:
                    self.gain[qi, pos[d]] = r
        self.disc = disc
        self._top = {m: np.argsort(-mats[m], axis=1, kind="stable")[:, : min(DEPTH, nd)]
                     for m in ("dense", "sparse", "bm25")}
        self._pools: dict[tuple[str, ...], np.ndarray] = {}

    def pool(self, first: tuple[str, ...]) -> np.ndarray:
        """(queries, C) candidate doc indices, ascending (insertion order), padded with -1."""
        if first not in self._pools:
            rows = [np.unique(np.concatenate([self._top[m][qi] for m in first])) for qi in range(len(self.qids))]
            width = max(len(r) for r in rows)
            cand = np.full((len(rows), width), -1, np.int64)
            for qi, r in enumerate(rows):
                cand[qi, : len(r)] = r
            self._pools[first] = cand
        return self._pools[first]

    def single_ndcg(self, matrix: str) -> float:
        """A mode searched alone: exact scores over the collection (as the ``minilm_m3_eval table`` rows)."""
        return ev.ndcg10(self.mats[matrix], self.doc_ids, self.qids, self.qrels)


class Prepared:
    """A mode set on one collection: candidates and each mode's per-fusion contribution on them.

    Every fusion of :mod:`m3_rag.fusion` is a sum of per-mode terms (``weighted`` divided by the weight sum),
    so ``terms[fusion][mode]`` is ``fuse(fusion, {mode: s}, {mode: 1.0})`` per query and any weights combine
    them linearly; :meth:`check` verifies that against ``fuse`` over all modes at once."""

    def __init__(self, col: Collection, ms: ModeSet):
        self.col, self.ms = col, ms
        first = tuple(m for m in ms.modes if m in FIRST_STAGE)
        self.cand = col.pool(first)
        self.valid = self.cand >= 0
        safe = np.where(self.valid, self.cand, 0)
        rows = np.arange(len(self.cand))[:, None]
        self.raw = {m: col.mats[ms.matrix_name(m)][rows, safe].astype(np.float64) for m in ms.modes}
        self.gain = np.where(self.valid, col.gain[rows, safe], 0.0)
        self.terms: dict[str, dict[str, np.ndarray]] = {}
        for method in ("weighted", "rrf", "dbsf"):
            self.terms[method] = {}
            for m in ms.modes:
                t = np.zeros_like(self.raw[m])
                for qi in range(len(self.cand)):
                    n = int(self.valid[qi].sum())
                    t[qi, :n] = fuse(method, {m: self.raw[m][qi, :n]}, {m: 1.0})
                self.terms[method][m] = t

    def fused(self, method: str, weights: dict[str, float]) -> np.ndarray:
        base = "weighted" if method == "weighted" else method.split("-")[0]
        out = sum(weights[m] * self.terms[base][m] for m in self.ms.modes)
        if base == "weighted":
            out = out / sum(weights.values())
        return np.where(self.valid, out, -np.inf)

    def per_query(self, fused: np.ndarray) -> np.ndarray:
        """nDCG@10 of each query for fused candidate scores (ties: insertion order, as the store)."""
        top = np.argsort(-fused, axis=1, kind="stable")[:, :10]
        dcg = (np.take_along_axis(self.gain, top, axis=1) * self.col.disc[None, :]).sum(1)
        return np.where(self.col.idcg > 0, dcg / np.where(self.col.idcg > 0, self.col.idcg, 1), 0.0)

    def fast_ndcg(self, fused: np.ndarray) -> float:
        return float(np.mean(self.per_query(fused)))

    def store_ndcg(self, method: str, weights: dict[str, float]) -> float:
        """nDCG@10 by ``minilm_m3_eval.ndcg10`` of the store's ranking: ``fuse`` called on each query's
        candidates with all modes at once, ranked by fused score then insertion order."""
        base = "weighted" if method == "weighted" else method.split("-")[0]
        col = self.col
        full = np.full(col.mats["dense"].shape, -np.inf)
        for qi in range(len(self.cand)):
            n = int(self.valid[qi].sum())
            f = fuse(base, {m: self.raw[m][qi, :n] for m in self.ms.modes}, weights)
            order = np.argsort(-f, kind="stable")
            full[qi, self.cand[qi, order]] = n - np.arange(n)  # distinct scores: ndcg10 keeps this exact order
        return ev.ndcg10(full, col.doc_ids, col.qids, col.qrels)

    def check(self, method: str, weights: dict[str, float]) -> float:
        """|fast nDCG of the linear combination - ndcg10 of fuse() over all modes| (should be ~0)."""
        return abs(self.fast_ndcg(self.fused(method, weights)) - self.store_ndcg(method, weights))


def grid(ms: ModeSet, method: str) -> list[dict[str, float]]:
    """The weight settings tried for ``method`` on ``ms`` (one setting for the equal-weight fusions)."""
    ref = "dense" if "dense" in ms.modes else ms.modes[0]
    others = [m for m in ms.modes if m != ref]
    if method in ("rrf", "dbsf"):
        return [{m: 1.0 for m in ms.modes}]
    if method == "weighted":
        values = [WEIGHTED_GRID[m] for m in others]
        ref_w = 1.0 if ref == "dense" else WEIGHTED_REF[ref]
    else:
        values = [RELATIVE_GRID] * len(others)
        ref_w = 1.0
    return [{ref: ref_w, **dict(zip(others, combo))} for combo in itertools.product(*values)]


def ordered(weights: dict[str, float]) -> dict[str, float]:
    return {m: weights[m] for m in CANONICAL if m in weights}


# ------------------------------------------------------------------------------------------ main
def run(args) -> dict:
    t0 = time.perf_counter()
    cols: dict[str, Collection] = {}
    for name in args.collections:
        cols[name] = Collection(name, score_matrices(name, args.cache_dir, args.scores_dir, args.model))
        print(f"scores {name} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    names = list(cols)

    singles = {}
    for label, matrix in (("bm25", "bm25"), ("dense", "dense"), ("sparse", "sparse"), ("colbert", "colbert"),
                          ("colbert (identity head = zero-shot MaxSim)", "colbert_identity")):
        singles[label] = {n: round(c.single_ndcg(matrix), 4) for n, c in cols.items()}
        singles[label]["mean"] = round(float(np.mean([singles[label][n] for n in names])), 4)

    base_ms = ModeSet(("dense", "bm25"))
    base_q = {n: Prepared(c, base_ms).per_query(Prepared(c, base_ms).fused("rrf", {"dense": 1.0, "bm25": 1.0}))
              for n, c in cols.items()}
    choices = []
    max_check = 0.0
    for ms in all_mode_sets():
        prep = {n: Prepared(c, ms) for n, c in cols.items()}
        for method in args.fusions:
            settings = grid(ms, method)
            table = np.array([[prep[n].fast_ndcg(prep[n].fused(method, w)) for n in names] for w in settings])
            folds, paired = {}, {}
            for i, held in enumerate(names):
                train = [j for j in range(len(names)) if j != i]
                best = int(np.argmax(table[:, train].mean(1)))  # first best in grid order on ties
                w = settings[best]
                folds[held] = {"weights": ordered(w), "train_mean": round(float(table[best, train].mean()), 4),
                               "heldout": round(prep[held].store_ndcg(method, w), 4)}
                diff = prep[held].per_query(prep[held].fused(method, w)) - base_q[held]
                paired[held] = {"diff": round(float(diff.mean()), 4),
                                "se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)}
            best_all = int(np.argmax(table.mean(1)))
            w_all = settings[best_all]
            in_sample = {n: round(prep[n].store_ndcg(method, w_all), 4) for n in names}
            for n in names:  # the grid's fast nDCG against ndcg10 of fuse() over all modes
                max_check = max(max_check, abs(table[best_all, names.index(n)] - in_sample[n]))
            held = [folds[n]["heldout"] for n in names]
            choices.append({
                "modes": ms.key, "colbert_head": ("identity" if ms.identity else "trained") if "colbert" in ms.modes else None,
                "label": ms.label, "fusion": method, "settings_tried": len(settings),
                "heldout": {n: folds[n]["heldout"] for n in names},
                "heldout_mean": round(float(np.mean(held)), 4), "heldout_min": round(float(np.min(held)), 4),
                "fold_weights": {n: folds[n]["weights"] for n in names},
                "heldout_vs_rrf_bm25_dense_paired": paired,
                "all_six": {"weights": ordered(w_all), "ndcg@10": in_sample,
                            "mean": round(float(np.mean(list(in_sample.values()))), 4)},
            })
            print(f"{ms.label:45s} {method:8s} held-out mean {choices[-1]['heldout_mean']:.4f} min "
                  f"{choices[-1]['heldout_min']:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return assemble(args, names, singles, choices, max_check)


def assemble(args, names, singles, choices, max_check) -> dict:
    def find(modes, fusion, identity=False):
        head = None if "colbert" not in modes else ("identity" if identity else "trained")
        return next(c for c in choices if c["modes"] == modes and c["fusion"] == fusion and c["colbert_head"] == head)

    ranked = sorted(choices, key=lambda c: (-c["heldout_min"], -c["heldout_mean"]))
    # m3_model.json can declare a default fusion and weighted-fusion weights, not weights for RRF/DBSF: the
    # recommendation is the best choice among weighted, rrf and dbsf (equal weights); rrf-w/dbsf-w are reported
    best_any = ranked[0]
    shippable = [c for c in ranked if c["fusion"] in SHIPPABLE]
    tol = float(getattr(args, "tolerance", 0.0))
    # the rule: best worst held-out collection; with --tolerance, worst cases within tol of the best count as
    # tied and the best held-out mean among them wins (default 0: the strict rule)
    tied = [c for c in shippable if c["heldout_min"] >= shippable[0]["heldout_min"] - tol - 1e-12]
    # among the tied: the best held-out mean (to 3 decimals); equal means prefer a fusion with no tuned weights
    # (rrf/dbsf at equal weights: nothing fitted, so nothing to overfit on an unseen collection), then the worst case
    winner = max(tied, key=lambda c: (round(c["heldout_mean"], 3), c["fusion"] != "weighted", c["heldout_min"]))
    near = [c for c in shippable if c["heldout_min"] >= shippable[0]["heldout_min"] - NEAR]
    baseline = find("dense+bm25", "rrf")
    for c in choices:  # worst held-out difference to the off-the-shelf hybrid (target: >= -0.01 everywhere)
        c["heldout_min_vs_rrf_bm25_dense"] = round(min(c["heldout"][n] - baseline["heldout"][n] for n in names), 4)
    shipped_head = winner["colbert_head"] or "trained"
    # per mode set (the shipped ColBERT head): weights tuned on all six for weighted fusion and for the default fusion
    by_modes = {c["modes"]: c["all_six"]["weights"] for c in choices
                if c["fusion"] == "weighted" and c["colbert_head"] in (None, shipped_head)}
    m3 = find("dense+sparse+colbert", "weighted")
    max_bm25_dense = max(singles["bm25"]["mean"], singles["dense"]["mean"])
    per_max = {n: max(singles["bm25"][n], singles["dense"][n]) for n in names}
    targets = {
        "default_vs_rrf_bm25_dense_every_collection": {
            "rule": "chosen default (weights tuned on all six) >= RRF(BM25, dense) - 0.01 on every collection",
            "margin": {n: round(winner["all_six"]["ndcg@10"][n] - baseline["all_six"]["ndcg@10"][n], 4) for n in names},
            "margin_heldout": {n: round(winner["heldout"][n] - baseline["heldout"][n], 4) for n in names},
        },
        "m3_modes_vs_max_bm25_dense": {
            "rule": "dense+sparse+colbert, weighted with its recommended weights, mean >= max(mean BM25, mean dense) + 0.02",
            "m3_mean": m3["all_six"]["mean"], "m3_heldout_mean": m3["heldout_mean"], "max_bm25_dense_mean": max_bm25_dense,
            "per_collection_max_bm25_dense_mean": round(float(np.mean(list(per_max.values()))), 4),
        },
        "colbert_vs_zero_shot": {
            "rule": "ColBERT alone (trained head) >= zero-shot MaxSim (mean)",
            "colbert": singles["colbert"], "zero_shot": singles["colbert (identity head = zero-shot MaxSim)"],
        },
    }
    t = targets["default_vs_rrf_bm25_dense_every_collection"]
    t["met"] = all(v >= -0.01 for v in t["margin"].values())
    t["met_heldout"] = all(v >= -0.01 for v in t["margin_heldout"].values())
    t = targets["m3_modes_vs_max_bm25_dense"]
    t["met"] = t["m3_mean"] >= t["max_bm25_dense_mean"] + 0.02
    t["met_heldout"] = t["m3_heldout_mean"] >= t["max_bm25_dense_mean"] + 0.02
    t = targets["colbert_vs_zero_shot"]
    t["met"] = t["colbert"]["mean"] >= t["zero_shot"]["mean"]
    return {
        "note": ("leave-one-collection-out over the six shared collections: per choice, free weights tuned on five "
                 "(best mean nDCG@10), nDCG@10 on the sixth; candidates as HybridStore: union of the top "
                 f"{DEPTH} of each searched first-stage mode (dense, sparse, bm25), every searched mode scored "
                 "exactly on it, fused by m3_rag.fusion; single modes: exact scores over the collection"),
        "model": args.model, "collections": names, "fusions": list(args.fusions),
        "grids": {"weighted": WEIGHTED_GRID, "weighted_ref_without_dense": WEIGHTED_REF, "relative": RELATIVE_GRID},
        "max_abs_fast_vs_ndcg10": max_check,
        "single_modes": singles,
        "baseline_rrf_bm25_dense": {k: baseline[k] for k in ("heldout", "heldout_mean", "heldout_min", "all_six")},
        "selection": {"rule": "best worst held-out collection among fusions m3_model.json can declare "
                               f"({', '.join(SHIPPABLE)}); tolerance {tol}: worst cases within it count as tied, "
                               "best held-out mean among them (3 decimals), then no tuned weights (rrf/dbsf) before weighted",
                      "tolerance": tol},
        "near_ties": [{k: c.get(k) for k in ("label", "fusion", "heldout_min", "heldout_mean", "heldout",
                                             "heldout_vs_rrf_bm25_dense_paired", "all_six")}
                      for c in sorted(near, key=lambda c: -c["heldout_mean"])],
        "best_any_fusion": {k: best_any[k] for k in ("label", "fusion", "heldout", "heldout_mean", "heldout_min", "all_six")},
        "chosen": {k: winner[k] for k in ("label", "modes", "colbert_head", "fusion", "heldout", "heldout_mean",
                                          "heldout_min", "fold_weights", "all_six")},
        "recommendation": {
            "default_modes": winner["modes"].split("+"), "default_fusion": winner["fusion"],
            "default_fusion_weights": winner["all_six"]["weights"], "colbert_head": shipped_head,
            "fusion_weights_by_modes_weighted": by_modes,
        },
        "targets": targets,
        "ranking": [{k: c[k] for k in ("label", "fusion", "heldout_min", "heldout_mean", "heldout_min_vs_rrf_bm25_dense")}
                    for c in ranked],
        "choices": choices,
    }


def write_model_json(result: dict, path: Path) -> None:
    """Record the recommendation in a model's ``m3_model.json`` (other keys kept)."""
    meta = json.loads(path.read_text())
    rec = result["recommendation"]
    by_modes = rec["fusion_weights_by_modes_weighted"]
    names = ", ".join(result["collections"])
    m3 = "dense+sparse+colbert"
    meta["fusion_weights"] = by_modes[m3]
    meta["fusion_weights_note"] = (
        f"weighted-fusion weights of the model's own three modes ({m3}), tuned on {names} with HybridStore's "
        "candidates (bench/loco.py, MODEL_CARD.md); every other mode set has its own entry in fusion_weights_by_modes")
    meta["fusion_weights_by_modes"] = by_modes
    meta["fusion_weights_by_modes_note"] = (
        "weighted-fusion weights (raw-score weighted mean) per searched mode set, key = modes in the order "
        f"dense, sparse, colbert, bm25 joined by '+'; each tuned on all of {names} with HybridStore's candidates "
        "(bench/loco.py)")
    meta["default_modes"] = rec["default_modes"]
    meta["default_fusion"] = rec["default_fusion"]
    c = result["chosen"]
    meta["default_modes_note"] = (
        f"default_modes and default_fusion: in a leave-one-collection-out over {names} (bench/loco.py, "
        f"MODEL_CARD.md), among the choices whose worst held-out collection is within "
        f"{result['selection']['tolerance']} of the best worst case, the best held-out mean (no tuned weights "
        f"preferred at equal means): held-out nDCG@10 mean "
        f"{c['heldout_mean']:.3f}, worst {c['heldout_min']:.3f}; ColBERT head: {rec['colbert_head']}")
    path.write_text(json.dumps(meta, indent=2) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm-m3", help="bundled model name or checkpoint folder (heads)")
    p.add_argument("--collections", nargs="+", default=list(ev.COLLECTIONS))
    p.add_argument("--fusions", nargs="+", default=list(FUSIONS), choices=FUSIONS)
    p.add_argument("--cache-dir", type=Path, default=ev.CACHE, help="token-state cache of minilm_m3_eval.py cache")
    p.add_argument("--scores-dir", type=Path, default=Path("/tmp/loco_scores"), help="where score matrices are cached (npy)")
    p.add_argument("--datasets-dir", type=Path, default=ev.DATASETS)
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="worst held-out scores within this of the best count as tied; the best mean among them "
                        "wins (default 0: strictly the best worst case)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--write-model-json", type=Path, default=None, metavar="M3_MODEL_JSON",
                   help="record the recommendation in this m3_model.json (the bundled one: "
                        "m3_rag/models/minilm-m3/m3_model.json)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="skip the computation: re-assemble the recommendation from a previous --json result")
    args = p.parse_args(argv)
    ev.DATASETS = args.datasets_dir
    if args.from_json:  # re-assemble (selection, targets) from a previous run's per-choice results
        prev = json.loads(args.from_json.read_text())
        out = assemble(args, prev["collections"], prev["single_modes"], prev["choices"], prev["max_abs_fast_vs_ndcg10"])
    else:
        out = run(args)
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    if args.write_model_json:
        write_model_json(out, args.write_model_json)
    print(text)


if __name__ == "__main__":
    main()
