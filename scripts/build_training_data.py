#!/usr/bin/env python3
"""Build the training pairs for the ``minilm-m3`` heads from text that is freely usable here.

Sources (no evaluation collection is ever read):

* Debian package descriptions: short description -> long description, from the English
  ``Translation-en`` lists that ``apt-get update -o Acquire::Languages=en`` downloads
  (run as root; pass ``--no-apt-update`` to use the lists already on disk).
* Man pages installed under ``/usr/share/man/man{1,5,7,8}``: the NAME line's description ->
  the DESCRIPTION section (roff markup stripped by a small parser; nothing is executed).
* Python docstrings from the standard library's source (parsed with ``ast``, never imported):
  the summary line -> the rest of the docstring.
* Inverse-cloze pseudo-queries (Lee et al., 2019): one sentence of a long description -> the rest of it.

Output (JSONL, FlagEmbedding's format ``{"query", "pos": [..], "source"}``): ``train.jsonl`` and
``heldout.jsonl`` (a split by passage hash, for checking that each head beats its zero-shot
baseline), plus ``stats.json`` with the counts per source.

    python scripts/build_training_data.py --out /work/data/train_pairs
"""

from __future__ import annotations

import argparse
import ast
import glob
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def words(text: str) -> int:
    return len(WORD.findall(text))


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ------------------------------------------------------------------------------------------ Debian
def apt_update() -> None:
    """Download the English description lists (needs root and the Debian mirror)."""
    print("running apt-get update -o Acquire::Languages=en", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-o", "Acquire::Languages=en"], check=True, stdout=subprocess.DEVNULL)


def translation_files() -> list[str]:
    files = sorted(glob.glob("/var/lib/apt/lists/*_i18n_Translation-en*"))
    return [f for f in files if not f.endswith((".diff", "Index"))]


def read_apt_list(path: str) -> str:
    """Decompress an apt list file (.lz4/.gz/.xz/plain) with apt's own helper."""
    out = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True)
    return out.stdout.decode("utf-8", "replace")


def debian_descriptions(files: list[str]) -> Iterator[tuple[str, str, str]]:
    """Yield (package, short description, long description) from Translation-en files."""
    for path in files:
        text = read_apt_list(path)
        for stanza in text.split("\n\n"):
            pkg = short = None
            long_lines: list[str] = []
            in_desc = False
            for line in stanza.split("\n"):
                if line.startswith("Package:"):
                    pkg = line.split(":", 1)[1].strip()
                    in_desc = False
                elif line.startswith("Description-en:"):
                    short = line.split(":", 1)[1].strip()
                    in_desc = True
                elif in_desc and line.startswith(" "):
                    body = line[1:]
                    long_lines.append("\n" if body.strip() == "." else body.strip())
                else:
                    in_desc = False
            if pkg and short and long_lines:
                paragraphs = [clean(p) for p in " ".join(long_lines).split("\n")]
                yield pkg, short, "\n".join(p for p in paragraphs if p)


# ------------------------------------------------------------------------------------------ man pages
_ROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\s[-+]?\d+"), ""),
    (re.compile(r"\\\(em|\\\(en"), " - "),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[-e]"), lambda m: "-" if m.group(0) == "\\-" else "\\"),  # type: ignore[list-item]
    (re.compile(r"\\[&|^%:c0 ]"), " "),
    (re.compile(r"\\\*.|\\n.|\\."), ""),
]
_TEXT_MACROS = re.compile(r"^\.(B|I|BR|BI|IB|IR|RB|RI|SM|SB|Nm|Nd|Ar|Fl|Cm|Pa|Xr|Em|Sy|Dq|Qq)\s+(.*)$")


def roff_to_text(line: str) -> str:
    m = _TEXT_MACROS.match(line)
    if m:
        line = m.group(2).replace('"', "")
    elif line.startswith((".", "'")):
        return ""
    for pat, rep in _ROFF_ESCAPES:
        line = pat.sub(rep, line)  # type: ignore[arg-type]
    return line


def man_pages(max_pages: int, max_per_family: int = 25) -> Iterator[tuple[str, str, str]]:
    """Yield (page, NAME description, DESCRIPTION text) from English man pages."""
    seen = 0
    per_family: dict[str, int] = {}
    for section in ("1", "5", "7", "8"):
        for path in sorted(glob.glob(f"/usr/share/man/man{section}/*")):
            if seen >= max_pages:
                return
            try:
                raw = gzip.open(path, "rt", errors="replace").read() if path.endswith(".gz") else open(path, errors="replace").read()
            except OSError:
                continue
            if raw.startswith(".so "):
                continue
            # a few tools ship thousands of near-identical pages (gcloud_*, git-*): cap each family
            family = re.split(r"[-_.]", Path(path).name, maxsplit=1)[0]
            if per_family.get(family, 0) >= max_per_family:
                continue
            sections: dict[str, list[str]] = {}
            current = None
            for line in raw.splitlines():
                head = re.match(r'^\.(SH|Sh)\s+"?([^"]*)"?', line)
                if head:
                    current = head.group(2).strip().upper()
                    sections.setdefault(current, [])
                    continue
                if current in ("NAME", "DESCRIPTION"):
                    if re.match(r"^\.(PP|LP|P|Pp|TP|IP|sp|br)\b", line):
                        sections[current].append("\n")
                    else:
                        sections[current].append(roff_to_text(line))
            name = clean(" ".join(sections.get("NAME", [])))
            parts = re.split(r"\s+-+\s+", name, maxsplit=1)
            if len(parts) != 2:
                continue
            desc_paras = [clean(p) for p in " ".join(sections.get("DESCRIPTION", [])).split("\n")]
            desc = "\n".join(p for p in desc_paras if words(p) >= 5)
            if words(parts[1]) >= 2 and words(desc) >= 15:
                seen += 1
                per_family[family] = per_family.get(family, 0) + 1
                yield Path(path).name, clean(parts[1]), desc


# ------------------------------------------------------------------------------------------ docstrings
def docstrings(max_items: int) -> Iterator[tuple[str, str, str]]:
    """Yield (qualified name, summary line, rest of docstring) from the stdlib's source files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    count = 0
    for path in sorted(root.rglob("*.py")):
        if any(part in ("test", "tests", "idlelib", "lib2to3", "site-packages") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            summary, _, rest = doc.strip().partition("\n\n")
            summary, rest = clean(summary), "\n".join(clean(p) for p in rest.split("\n\n") if p.strip())
            if words(summary) >= 3 and words(rest) >= 15 and ">>>" not in rest:
                count += 1
                yield f"{path.stem}.{getattr(node, 'name', '')}", summary, rest
                if count >= max_items:
                    return


# ------------------------------------------------------------------------------------------ inverse cloze
def inverse_cloze(passage: str, rng: random.Random, keep_prob: float = 0.1) -> tuple[str, str] | None:
    """A sentence of ``passage`` as a pseudo-query and the passage as its positive.

    As in ICT, the sentence is removed from the passage 90% of the time so that the pair is not
    solved by exact string match alone.
    """
    sentences = [s for s in SENTENCE_END.split(passage.replace("\n", " ")) if s.strip()]
    if len(sentences) < 3:
        return None
    i = rng.randrange(len(sentences))
    query = sentences[i].strip()
    if not 5 <= words(query) <= 40:
        return None
    rest = sentences if rng.random() < keep_prob else sentences[:i] + sentences[i + 1 :]
    return query, " ".join(s.strip() for s in rest)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the repo)")
    p.add_argument("--no-apt-update", action="store_true", help="use the apt lists already on disk")
    p.add_argument("--max-debian", type=int, default=11000, help="short->long Debian pairs")
    p.add_argument("--max-ict", type=int, default=5000, help="inverse-cloze pairs (from Debian, man, docstrings)")
    p.add_argument("--max-man", type=int, default=2000)
    p.add_argument("--max-doc", type=int, default=2000)
    p.add_argument("--max-passage-words", type=int, default=160, help="passages are cut to this many words")
    p.add_argument("--heldout-fraction", type=float, default=0.04)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)

    if not args.no_apt_update:
        apt_update()
    files = translation_files()
    if not files:
        raise SystemExit("no Translation-en lists under /var/lib/apt/lists; run apt-get update -o Acquire::Languages=en as root")

    def cut(text: str) -> str:
        toks = text.split(" ")
        return " ".join(toks[: args.max_passage_words])

    seen_passages: set[str] = set()
    seen_queries: set[str] = set()

    def fresh(query: str, passage: str) -> bool:
        pk = passage[:120].lower()
        qk = query.lower()
        if pk in seen_passages or qk in seen_queries:
            return False
        seen_passages.add(pk)
        seen_queries.add(qk)
        return True

    # collect every candidate, then sample so each source's share is fixed by the caps
    debian = [(s, l) for _, s, l in debian_descriptions(files) if words(l) >= 12 and words(s) >= 2]
    rng.shuffle(debian)
    man = list(man_pages(args.max_man * 3))
    rng.shuffle(man)
    docs = list(docstrings(args.max_doc * 3))
    rng.shuffle(docs)

    rows: list[dict] = []
    counts = {"debian": 0, "man": 0, "docstring": 0, "ict": 0}
    ict_pool: list[str] = []
    for source, items, cap in (("debian", debian, args.max_debian), ("man", [(q, d) for _, q, d in man], args.max_man),
                               ("docstring", [(q, d) for _, q, d in docs], args.max_doc)):
        for query, passage in items:
            passage = cut(passage)
            if counts[source] < cap and fresh(query, passage):
                rows.append({"query": query, "pos": [passage], "source": source})
                counts[source] += 1
            elif words(passage) >= 40:
                ict_pool.append(passage)  # passages not used as positives feed the inverse-cloze task
    rng.shuffle(ict_pool)
    for passage in ict_pool:
        if counts["ict"] >= args.max_ict:
            break
        pair = inverse_cloze(passage, rng)
        if pair and fresh(*pair):
            rows.append({"query": pair[0], "pos": [pair[1]], "source": "ict"})
            counts["ict"] += 1
    rng.shuffle(rows)

    args.out.mkdir(parents=True, exist_ok=True)
    n_held = {"train": 0, "heldout": 0}
    with open(args.out / "train.jsonl", "w", encoding="utf-8") as tr, open(args.out / "heldout.jsonl", "w", encoding="utf-8") as ho:
        for row in rows:
            bucket = int(hashlib.sha1(row["pos"][0].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            split = "heldout" if bucket < args.heldout_fraction else "train"
            (ho if split == "heldout" else tr).write(json.dumps(row, ensure_ascii=False) + "\n")
            n_held[split] += 1
    stats = {"sources": counts, "splits": n_held, "translation_files": [os.path.basename(f) for f in files],
             "debian_candidates": len(debian), "man_candidates": len(man), "docstring_candidates": len(docs),
             "seed": args.seed}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
