"""Sentence splitting and tokenisation with exact character offsets.

The Indonesian NER corpora we train on (NERGrit, NER-P) split every punctuation
character into its own token and keep words (with clitics such as ``-nya``)
whole. This tokenizer reproduces that scheme, so the model sees at tagging time
the token shapes it was trained on, and every token carries its ``(start, end)``
offsets into the original text: entity offsets slice the article text exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)

# Tokens after which a full stop does not end a sentence (titles, initials, common
# Indonesian and English abbreviations). Compared lower-cased.
ABBREVIATIONS = frozenset(
    """
    dr drs dra ir prof h hj kh mr mrs ms st no hal tel telp jl jln kec kab kel rt rw
    sdr bpk ibu yth dll dsb dst tsb a.n u.p vs etc inc ltd co corp jr sr e.g i.e
    jan feb mar apr jun jul agu agt ags sep sept okt nov des
    """.split()
)

MAX_SENTENCE_TOKENS = 200  # longer runs are cut so one huge "sentence" cannot blow up a batch

Span = tuple[int, int]


def tokenize(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Token spans of ``text[start:end]`` as absolute ``(start, end)`` offsets."""
    return [m.span() for m in TOKEN_RE.finditer(text, start, len(text) if end is None else end)]


TERMINALS = frozenset(".!?")
CLOSERS = frozenset("\"'”’)")


def _is_boundary(text: str, tokens: list[Span], i: int) -> bool:
    """Does a sentence end after token ``i``?"""
    def word(j: int) -> str:
        return text[tokens[j][0]:tokens[j][1]]

    tok = word(i)
    if tok in CLOSERS:
        if i == 0 or word(i - 1) not in TERMINALS:
            return False
    elif tok not in TERMINALS:
        return False
    elif tok == "." and i > 0:
        prev = word(i - 1)
        if prev.lower() in ABBREVIATIONS or (len(prev) == 1 and prev.isupper()):
            return False
    if i + 1 < len(tokens):
        if word(i + 1) in TERMINALS or word(i + 1) in CLOSERS:
            return False
        if tokens[i + 1][0] == tokens[i][1]:  # no space after: 11.000, 1.5, a.n
            return False
    return True


def sentences(text: str) -> Iterator[list[Span]]:
    """Yield sentences as lists of token spans. Paragraph breaks always end a sentence."""
    for para in re.finditer(r"[^\n]+", text):
        tokens = tokenize(text, para.start(), para.end())
        current: list[Span] = []
        for i, span in enumerate(tokens):
            current.append(span)
            if _is_boundary(text, tokens, i) or len(current) >= MAX_SENTENCE_TOKENS:
                yield current
                current = []
        if current:
            yield current


def detokenize(tokens: list[str]) -> str:
    """Join NERGrit-style tokens back into running text (used to build realistic test and bench pages)."""
    s = " ".join(tokens)
    s = re.sub(r" ([,.;:!?)\]%])", r"\1", s)
    return re.sub(r"([(\[]) ", r"\1", s).replace(" - ", "-")
