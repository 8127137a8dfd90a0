"""A text corpus that ships with every Python install: the interpreter's own help texts.

``pydoc_data.topics`` (standard library, PSF licence) holds the Language Reference
sections that ``help("for")`` prints: ~80 topics, ~460 000 characters of English prose
about Python. :func:`pydoc_corpus` turns them into short passages for recording
activations of a text model: prose paragraphs only (grammar rules, interactive examples
and code-like blocks with under 80 % letters are dropped; heading underlines and bullet
marks removed), whitespace collapsed, split into sentences; sentences that start with a
capital letter, end with ``.:?!`` and have ``min_words``..``max_words`` words are kept,
deduplicated, in a deterministic order (topics sorted by name, sentences in reading
order) — 2 147 sentences (~18 words, ~29 MiniLM tokens each) on Python 3.11.7. The exact
sentences depend on the Python version (the docs change between releases); for a given
interpreter they are fixed.
"""

from __future__ import annotations

import re

__all__ = ["pydoc_corpus", "pydoc_passages"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z])")
_RULE = re.compile(r"^[\*=\-~^+#]{3,}$")
_BULLET = re.compile(r"^(\*|\d+\.|-)\s+")
_CODE_MARKS = ("::=", ">>>", "... ", "\n   def ", "\n   class ")


def _paragraphs(text: str):
    for block in re.split(r"\n\s*\n", text):
        if any(mark in block for mark in _CODE_MARKS):
            continue  # grammar rule or interactive example
        lines = [ln.strip() for ln in block.split("\n") if ln.strip() and not _RULE.match(ln.strip())]
        para = _BULLET.sub("", " ".join(" ".join(lines).split()))
        letters = sum(c.isalpha() or c == " " for c in para)
        if para and letters >= 0.8 * len(para):  # prose, not code or a table
            yield para


def pydoc_corpus(max_texts: int | None = None, *, min_words: int = 6, max_words: int = 60) -> list[str]:
    """Sentences from Python's bundled help texts (``pydoc_data.topics``), deduplicated.

    Parameters
    ----------
    max_texts : keep only the first ``max_texts`` sentences (``None``: all, a few thousand).
    min_words, max_words : sentence length bounds, in whitespace-separated words.

    Returns
    -------
    list of str, deterministic for a given Python version.
    """
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for name in sorted(topics):
        for para in _paragraphs(topics[name]):
            for sent in _SENTENCE_END.split(para):
                sent = sent.strip()
                n = len(sent.split())
                if n < min_words or n > max_words or sent in seen or not sent[0].isupper() or sent[-1] not in ".:?!":
                    continue
                seen.add(sent)
                out.append(sent)
                if max_texts is not None and len(out) >= max_texts:
                    return out
    return out


def pydoc_passages(max_texts: int | None = None, *, max_words: int = 40) -> list[str]:
    """The whole of Python's bundled help texts as passages of at most ``max_words`` words.

    Every block of every topic (split at blank lines: prose, grammar rules and code examples alike),
    whitespace collapsed, cut at word boundaries into passages of ``max_words`` words or fewer, in
    topic order; deterministic for a given Python version. On Python 3.11.7: 3 315 passages,
    134 701 MiniLM tokens, 126 449 of them within 128 tokens per text (86 code-dense passages are
    longer), against ~61 000 in :func:`pydoc_corpus`'s sentences: the corpus for token-scale runs.
    """
    from pydoc_data.topics import topics

    out: list[str] = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            words = block.split()
            for i in range(0, len(words), max_words):
                out.append(" ".join(words[i : i + max_words]))
                if max_texts is not None and len(out) >= max_texts:
                    return out
    return out
