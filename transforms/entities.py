"""Per-article canonical forms of entities: the form the article itself gives an entity in full.

Two rules, both within one article and one label, nothing learned and nothing looked up:

- **PER**: a mention whose words all appear, in order, in a longer PER mention maps to it ("Putin" and
  "Vladimir Putin"; "Widodo" and "Joko Widodo"). When the longer mentions it fits are different people
  ("Smith" with "John Smith" and "Jane Smith"), it keeps its own form.
- **ORG**: an acronym (one word of 2–8 capitals, dots allowed) maps to a longer ORG mention whose words'
  initials spell it ("KPK" and "Komisi Pemberantasan Korupsi"; "BI" and "Bank Indonesia"; words such as
  "dan" or "of" may be skipped). More than one such long form: it keeps its own form.

Words are compared case-insensitively; the canonical form is written as the article writes the longer
mention. Pure and deterministic: the same entities give the same forms, whatever their order.
"""

from __future__ import annotations

import re
from typing import Any

_WORD = re.compile(r"[^\W_]+(?:['’.-][^\W_]+)*", re.UNICODE)
_ACRONYM = re.compile(r"(?:[A-Z]\.?){2,8}")
# Words an organisation's acronym usually skips (Indonesian and English).
FUNCTION_WORDS = frozenset("dan di ke dari untuk atas bagi yang the of and for in on at to de".split())


def words(mention: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(mention)]


def is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(any(w == x for x in it) for w in short)


def person_forms(mentions: set[str]) -> dict[str, str]:
    """mention -> the one longer PER mention containing its words in order (itself when none or ambiguous)."""
    written: dict[tuple[str, ...], str] = {}  # words -> how the article writes them (first in sorted order)
    for m in sorted(mentions):
        written.setdefault(tuple(words(m)), m)
    out = {}
    for m in mentions:
        ws = tuple(words(m))
        longer = {o for o in written if len(o) > len(ws) and ws and is_subsequence(list(ws), list(o))}
        # the longest of them, provided every other one is part of it (one person, named more or less fully)
        widest = {o for o in longer if not any(p != o and is_subsequence(list(o), list(p)) for p in longer)}
        out[m] = written[widest.pop()] if len(widest) == 1 else m
    return out


def initials(ws: list[str], skip: bool) -> str:
    return "".join(w[0] for w in ws if not (skip and w in FUNCTION_WORDS))


def org_forms(mentions: set[str]) -> dict[str, str]:
    """acronym -> the one longer ORG mention whose initials spell it (itself when none or ambiguous)."""
    out = {m: m for m in mentions}
    for m in mentions:
        if not _ACRONYM.fullmatch(m.strip()):
            continue
        letters = m.replace(".", "").strip().casefold()
        spelled = {o for o in mentions if o != m and len(words(o)) >= 2
                   and letters in (initials(words(o), False), initials(words(o), True))}
        if len(spelled) == 1:
            out[m] = spelled.pop()
    return out


RULES = {"PER": person_forms, "ORG": org_forms, "LOC": org_forms}  # LOC acronyms too: "AS", "Amerika Serikat"


def with_canonical(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The article's entities, each with ``canonical`` (see the module's rules); other labels keep their form."""
    forms: dict[tuple[str, str], str] = {}
    for label, rule in RULES.items():
        mentions = {e["mention"] for e in entities if e["label"] == label}
        forms.update({(label, m): c for m, c in rule(mentions).items()})
    return [{**e, "canonical": forms.get((e["label"], e["mention"]), e["mention"])} for e in entities]
