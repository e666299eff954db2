"""Documents: reading (and refusing) files, passages, BM25 retrieval, the prompt budget."""

from __future__ import annotations

import sqlite3
import sys
from itertools import pairwise

import pytest

from zephyr_local import doc_prompt, documents, retrieval
from zephyr_local.documents import DocumentError

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "sierra", "tango", "uniform", "victor", "whiskey", "xray"]


def long_markdown(sections: int = 12, paragraphs: int = 4) -> str:
    """Sections of distinct words, so that each question has a clear best passage."""
    out = []
    for s in range(sections):
        out.append(f"## Section {s} about {WORDS[s % len(WORDS)]}")
        out.append("")
        for p in range(paragraphs):
            topic = WORDS[(s * paragraphs + p) % len(WORDS)]
            out.append(f"Paragraph {p} of section {s} tells of {topic} and more {topic} "
                       f"facts, number {s * 100 + p}, " + "filler words here " * 12)
            out.append("")
    return "\n".join(out)


def test_text_file_is_read_with_its_size_in_tokens(engine, tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# Notes\n\nThe secret word is pelican.\r\n", encoding="utf-8")
    doc = documents.read(path, engine.tokenizer)
    assert doc.name == "notes.md" and doc.path == str(path.resolve())
    assert doc.text == "# Notes\n\nThe secret word is pelican.\n"
    assert doc.tokens == len(engine.tokenizer.encode(doc.text, add_special_tokens=False))
    assert documents.changed(doc) is None
    path.write_text("# Notes\n\nThe secret word is heron.\n")
    assert documents.changed(doc) == "changed"
    path.unlink()
    assert documents.changed(doc) == "missing"


@pytest.mark.parametrize("content, fragment", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a binary file"),
    ("caf\xe9".encode("latin-1"), "not UTF-8 text"),
])
def test_binary_and_undecodable_files_are_refused(engine, tmp_path, content, fragment):
    path = tmp_path / "file.dat"
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=fragment):
        documents.read(path, engine.tokenizer)


def test_huge_missing_and_folder_paths_are_refused(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "MAX_BYTES", 1000)
    big = tmp_path / "big.txt"
    big.write_text("x" * 1001)
    with pytest.raises(DocumentError, match="too big"):
        documents.read(big, engine.tokenizer)
    with pytest.raises(DocumentError, match="cannot attach"):
        documents.read(tmp_path / "absent.txt", engine.tokenizer)
    with pytest.raises(DocumentError, match="not a file"):
        documents.read(tmp_path, engine.tokenizer)


def test_pdf_without_pypdf_is_refused_clearly(engine, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # importing it now fails
    path = tmp_path / "paper.pdf"
    path.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    with pytest.raises(DocumentError, match="PDF needs pypdf"):
        documents.read(path, engine.tokenizer)


def test_passages_follow_headings_overlap_and_name_their_lines(engine):
    text = long_markdown(sections=3)
    lines = text.split("\n")
    passages = documents.split(text, engine.tokenizer, size=700, overlap=150)
    assert len(passages) > 3
    for p in passages:
        # The line range is exact: the passage is those lines.
        assert p.text == "\n".join(lines[p.start_line - 1:p.end_line]).strip("\n")
        assert p.tokens == len(engine.tokenizer.encode(p.text, add_special_tokens=False))
        assert len(p.text) <= 2 * 700 + 350
    starts = [p for p in passages if p.text.startswith("## ")]
    assert len(starts) == 3  # every heading opens a passage, and names the ones after it
    assert all(p.heading and p.heading.startswith("Section") for p in passages)
    same_section = [(a, b) for a, b in pairwise(passages) if b.heading == a.heading]
    assert same_section and all(b.start_line <= a.end_line for a, b in same_section)  # overlap
    covered = {n for p in passages for n in range(p.start_line, p.end_line + 1)}
    assert covered >= {i + 1 for i, line in enumerate(lines) if line.strip()}


def test_a_single_huge_line_is_cut(engine):
    passages = documents.split("word " * 1000, engine.tokenizer, size=500, overlap=0)
    assert len(passages) >= 10 and all(p.start_line == p.end_line == 1 for p in passages)


def independent_ranking(texts: list[str], question: str) -> list[int]:
    """FTS5's BM25 order of `texts` for the question's words, in a database of its own."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(body, tokenize='porter unicode61')")
    db.executemany("INSERT INTO t(rowid, body) VALUES (?, ?)", list(enumerate(texts)))
    terms = " OR ".join(f'"{w}"' for w in dict.fromkeys(question.lower().replace("?", "").split()))
    return [r[0] for r in db.execute(
        "SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t), rowid", (terms,))]


def test_ranking_matches_an_independent_fts5_query(engine):
    passages = documents.split(long_markdown(), engine.tokenizer)
    db = retrieval.memory_index()
    doc = documents.Document("a.md", "/a.md", "", "0", 0, 0, 0)
    doc_id = retrieval.add(db, None, doc, passages)
    question = "What about quebec and romeo facts?"
    hits = retrieval.rank(db, [doc_id], question)
    expected = independent_ranking([p.text for p in passages], question)
    assert [h.passage.text for h in hits] == [passages[i].text for i in expected]
    assert retrieval.rank(db, [doc_id], "?!") == []
    retrieval.remove(db, doc_id)
    assert db.execute("SELECT count(*) FROM passages_fts WHERE passages_fts MATCH 'quebec'"
                      ).fetchone()[0] == 0


def _stored(db, tokenizer, text, name="doc.md"):
    doc = documents.Document(name, f"/{name}", text, "0", 0, len(text),
                             documents.count_tokens(tokenizer, text))
    return retrieval.StoredDocument(retrieval.add(db, None, doc, documents.split(text, tokenizer)),
                                    doc)


def test_plan_quotes_a_fitting_document_whole(engine, hf_tokenizer):
    db = retrieval.memory_index()
    docs = [_stored(db, engine.tokenizer, "The secret word is pelican.\n", "notes.md")]
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the secret word?"}]
    plan = doc_prompt.plan(engine.tokenizer, messages, 4096, 64, db, docs)
    assert plan.mode == "whole" and plan.used == []
    quoted = ("Attached documents, quoted in full:\n\n<document name=\"notes.md\">\n"
              "The secret word is pelican.\n</document>")
    expected = [messages[0], {"role": "user", "content": quoted}, messages[1]]
    text = hf_tokenizer.apply_chat_template(expected, tokenize=False, add_generation_prompt=True)
    assert plan.ids == hf_tokenizer(text)["input_ids"]


def test_plan_retrieves_the_best_passages_within_the_budget(engine):
    db = retrieval.memory_index()
    docs = [_stored(db, engine.tokenizer, long_markdown(sections=20))]
    passages = retrieval.passages(db, docs[0].id)
    question = "Tell me the whiskey and xray facts"
    budget, max_tokens = 1024, 64
    plan = doc_prompt.plan(engine.tokenizer, [{"role": "user", "content": question}], budget,
                           max_tokens, db, docs)
    assert plan.mode == "passages" and plan.used
    assert len(plan.ids) + min(max_tokens, budget // 2) <= budget
    # The oracle: BM25's order from an independent query, filled greedily into the room.
    order = independent_ranking([p.text for p in passages], question)
    room, expected = (budget - max_tokens) // 2, []
    for i in order:
        if passages[i].tokens + doc_prompt.LABEL_TOKENS <= room:
            expected.append(passages[i])
            room -= passages[i].tokens + doc_prompt.LABEL_TOKENS
    assert [(u.start_line, u.end_line) for u in plan.used] == [
        (p.start_line, p.end_line) for p in expected]
    assert plan.messages[-1] == {"role": "user", "content": question}
    quoted = plan.messages[-2]["content"]  # the passages' turn, right before the question
    assert all(f'lines="{p.start_line}-{p.end_line}">\n{p.text}\n</passage>' in quoted
               for p in expected)


def test_generate_attach_quotes_or_retrieves_and_lists_the_passages(run_cli, tmp_path,
                                                                     hf_tokenizer):
    notes = tmp_path / "notes.md"
    notes.write_text("The secret word is pelican.\n")
    args = ["generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "4", "--json"]
    result = run_cli(*args, "--attach", str(notes), "-p", "What is the secret word?")
    assert result.exit_code == 0, result.output
    record = run_cli.json_lines(result)[-1]
    assert record["documents_mode"] == "whole" and record["passages"] == []
    quoted = ("Attached documents, quoted in full:\n\n<document name=\"notes.md\">\n"
              "The secret word is pelican.\n</document>")
    expected = [{"role": "user", "content": quoted},
                {"role": "user", "content": "What is the secret word?"}]
    text = hf_tokenizer.apply_chat_template(expected, tokenize=False, add_generation_prompt=True)
    assert record["prompt_tokens"] == len(hf_tokenizer(text)["input_ids"])

    manual = tmp_path / "manual.md"
    manual.write_text(long_markdown(sections=20))
    question = "Which facts mention whiskey?"
    result = run_cli(*args, "--context-budget", "512", "--attach", str(manual),
                     "--attach", str(notes), "-p", question)
    record = run_cli.json_lines(result)[-1]
    assert record["documents_mode"] == "passages" and record["prompt_tokens"] + 4 <= 512
    assert [d["file"] for d in record["documents"]] == ["manual.md", "notes.md"]
    top = record["passages"][0]
    passages = documents.split(manual.read_text(), hf_tokenizer)
    best = passages[independent_ranking([p.text for p in passages], question)[0]]
    assert (top["file"], top["start_line"], top["end_line"]) == (
        "manual.md", best.start_line, best.end_line)
    assert top["heading"] == best.heading and best.text.startswith(top["first_words"][:20])


def test_generate_attach_refuses_a_binary_file_in_one_line(run_cli, tmp_path):
    blob = tmp_path / "model.bin"
    blob.write_bytes(bytes(range(256)))
    result = run_cli("generate", "-m", "zephyr-test", "--attach", str(blob), "-p", "Hi")
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: ") and "a binary file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose content stream shows `text` in Helvetica (xref offsets exact)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
                b" /Resources << /Font << /F1 5 0 R >> >> >>"),
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def test_pdf_text_is_read_with_pypdf(engine, tmp_path):
    pytest.importorskip("pypdf")
    path = tmp_path / "paper.pdf"
    path.write_bytes(minimal_pdf("The secret word is pelican."))
    doc = documents.read(path, engine.tokenizer)
    assert doc.text == "The secret word is pelican."
    empty = tmp_path / "scan.pdf"
    empty.write_bytes(minimal_pdf(""))
    with pytest.raises(DocumentError, match="no text layer"):
        documents.read(empty, engine.tokenizer)
