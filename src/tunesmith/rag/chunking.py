"""Documents for retrieval: read .txt/.md files from a folder and cut them into overlapping chunks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import DataError

SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document; `source` is 'file:line' of the chunk's first line."""

    text: str
    source: str


def load_docs(folder: str | Path, *, max_words: int = 150, overlap: int = 30) -> list[Chunk]:
    """Every .txt/.md file under `folder` (sorted), chunked. DataError when there is nothing to read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--docs {folder}: not a folder", "give a folder of .txt or .md files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    chunks: list[Chunk] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text", "save the document as UTF-8") from None
        chunks += chunk_text(text, str(path), max_words=max_words, overlap=overlap)
    if not chunks:
        raise DataError(f"--docs {folder}: no text found in .txt or .md files", "put documents there, or drop --docs")
    return chunks


def chunk_text(text: str, source: str, *, max_words: int = 150, overlap: int = 30) -> list[Chunk]:
    """Paragraphs packed into chunks of at most `max_words`; a longer paragraph is split with `overlap` words.

    Paragraph boundaries are kept when they fit, so a chunk rarely starts mid-thought.
    """
    assert 0 <= overlap < max_words
    chunks: list[Chunk] = []
    words: list[str] = []
    first_line = 1
    for line_no, para in _paragraphs(text):
        para_words = para.split()
        if words and len(words) + len(para_words) > max_words:
            chunks.append(Chunk(" ".join(words), f"{source}:{first_line}"))
            words = []
        if not words:
            first_line = line_no
        words += para_words
        while len(words) > max_words:
            chunks.append(Chunk(" ".join(words[:max_words]), f"{source}:{first_line}"))
            words = words[max_words - overlap:]
    if words:
        chunks.append(Chunk(" ".join(words), f"{source}:{first_line}"))
    return chunks


def _paragraphs(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each blank-line separated paragraph."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = 1
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not current:
                start = n
            current.append(line)
        elif current:
            out.append((start, "\n".join(current)))
            current = []
    if current:
        out.append((start, "\n".join(current)))
    return out
