"""Retrieval over a 1 MB document set: indexing time and the latency of one question.

The baseline ranks the same passages with a `LIKE '%word%'` scan (what history
search did before FTS5), counting matching words; ours is FTS5's BM25 plus
the whole prompt plan (passages chosen within the budget, the template encoded).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from zephyr_local import doc_prompt, retrieval
from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, median, ratio

VOCABULARY = ["cache", "kernel", "tensor", "memory", "bandwidth", "latency", "quantize",
              "adapter", "gradient", "batch", "token", "window", "prompt", "decode", "prefill",
              "sampler", "vocabulary", "layer", "attention", "head", "matrix", "vector", "shard",
              "thread", "stream", "buffer", "queue", "device", "metal", "unified", "page",
              "branch", "merge", "commit", "review", "schema", "index", "query", "ranking",
              "passage", "heading"]
QUESTIONS = ("How does the prefill latency depend on the window?",
             "What limits memory bandwidth on the device?",
             "Which schema change needs a migration and an index?",
             "Explain quantize adapter gradient",
             "Why does the sampler use a vocabulary of tokens?")


def document_set(folder: Path, total_bytes: int = 1 << 20, files: int = 4,
                 seed: int = 0) -> list[Path]:
    """`files` Markdown files of generated prose, `total_bytes` in all."""
    rng = random.Random(seed)
    paths = []
    for f in range(files):
        parts, size, section = [], 0, 0
        while size < total_bytes // files:
            if not parts or rng.random() < 0.08:
                section += 1
                parts.append(f"## Part {section}: {' '.join(rng.sample(VOCABULARY, 3))}\n")
            sentences = [" ".join(rng.choices(VOCABULARY, k=rng.randint(8, 20))).capitalize()
                         + "." for _ in range(rng.randint(3, 7))]
            parts.append(" ".join(sentences) + "\n")
            size += len(parts[-1]) + 1
        path = folder / f"doc-{f}.md"
        path.write_text("\n".join(parts)[: total_bytes // files])
        paths.append(path)
    return paths


def _like_rank(db, question: str, limit: int = retrieval.CANDIDATES) -> list[int]:
    words = list(dict.fromkeys(w.lower() for w in retrieval._WORD.findall(question)))
    score = " + ".join("(text LIKE ?)" for _ in words)
    rows = db.execute(f"SELECT id, {score} AS s FROM passages WHERE s > 0 ORDER BY s DESC, id"
                      " LIMIT ?", (*(f"%{w}%" for w in words), limit))
    return [r[0] for r in rows]


def retrieval_case(engine, repeats: int = 3, budget: int = 4096, max_tokens: int = 256,
                   total_bytes: int = 1 << 20) -> CaseResult:
    tokenizer = engine.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        paths = document_set(Path(tmp), total_bytes)
        db = retrieval.memory_index()
        t0 = time.perf_counter()
        stored = [retrieval.add_file(db, None, str(path), tokenizer) for path in paths]
        index_s = time.perf_counter() - t0
    ours, ranks, like = [], [], []
    used = 0
    for _ in range(repeats):
        for q in QUESTIONS:
            messages = [{"role": "user", "content": q}]
            t = time.perf_counter()
            retrieval.rank(db, [d.id for d in stored], q)
            ranks.append(time.perf_counter() - t)
            t = time.perf_counter()
            plan = doc_prompt.plan(tokenizer, messages, budget, max_tokens, db, stored)
            ours.append(time.perf_counter() - t)
            used = len(plan.used)
            t = time.perf_counter()
            _like_rank(db, q)
            like.append(time.perf_counter() - t)
    n_passages = db.execute("SELECT count(*) FROM passages").fetchone()[0]
    details = {"bytes": sum(d.document.size for d in stored), "files": len(stored),
               "tokens": sum(d.document.tokens for d in stored), "passages": n_passages,
               "index_s": round(index_s, 3), "rank_ms": round(median(ranks) * 1e3, 2),
               "plan_ms": round(median(ours) * 1e3, 2),
               "like_scan_ms": round(median(like) * 1e3, 2),
               "passages_used": used, "budget": budget, "max_tokens": max_tokens,
               "reply_reserve": doc_prompt.reply_reserve(budget, max_tokens),
               "passage_room": (budget - doc_prompt.reply_reserve(budget, max_tokens)) // 2}
    db.close()
    ratios = [ratio("retrieval", f"ranking time, {total_bytes / 2**20:g} MB set (ms)",
                    median(ranks) * 1e3,
                    median(like) * 1e3, "LIKE scan", higher_is_better=False, goal=1.0, unit="ms")]
    return CaseResult("retrieval", ratios, details)


def run_retrieval(ctx: Context) -> CaseResult:
    return retrieval_case(ctx.engine, repeats=ctx.settings["repeats"],
                          total_bytes=ctx.settings["docs_bytes"])
