"""Generic extraction signals and the rule switches the leave-publisher-out ablation uses, on small hand-made
pages (none copied from a publisher); and the bench's fold and language-group bookkeeping."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from trafilatura.utils import load_html

from warta.transforms.extract import extract_article
from warta.transforms.extract_body import RULES, jsonld_article_body, trim_tail_outside

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_extraction import breakdown, fold_of, lang_group, page_scores, rule_off, verdict  # noqa: E402

FETCHED = datetime(2024, 11, 20, tzinfo=timezone.utc)
PARAS = [
    "The harbour authority approved a plan on Monday to dredge the eastern channel before the autumn storms arrive.",
    "Fishing crews had complained for two years that silt left their boats stuck at low tide for hours every day.",
    "The work will cost about two million and is expected to take eight weeks, the authority said in a statement.",
    "Local businesses welcomed the decision but asked that the quay stay open to visitors while the dredgers work.",
    "The last dredging of the channel took place eleven years ago, when a smaller vessel served the harbour.",
    "Engineers expect the deeper channel to last about a decade before silt builds up to today's levels again.",
    "A public meeting about the timetable for the works will be held at the harbour office next Thursday evening.",
    "Residents near the quay will receive letters explaining the noise limits and the hours the dredgers may work.",
]
LEAD = "The eastern channel will be dredged before the storms, ending two years of complaints from the fishing fleet."
AUTHOR_BOX = "Tom Berg has covered the harbour, the fishing fleet and the coast for this paper since the year 2015."


def story(*blocks: str, head: str = "") -> str:
    return (f"<html><head><title>Dredging approved</title>{head}</head><body><nav><a href='/'>Home</a></nav>"
            f"<main><article><h1>Dredging approved for the eastern channel</h1>{''.join(blocks)}</article></main>"
            "<footer><p>Copyright Example Harbour News. All rights reserved.</p></footer></body></html>")


def paras(items) -> str:
    return "".join(f"<p>{p}</p>" for p in items)


def row(html: str) -> dict:
    return extract_article({"url": "https://harbour.example/news/dredging", "feed_url": "", "source": "t",
                            "html": html, "fetched_at": FETCHED, "language": "en"}, min_chars=0)


def ld(body: str) -> str:
    data = {"@context": "https://schema.org", "@type": "NewsArticle", "headline": "Dredging approved",
            "articleBody": body}
    return f'<script type="application/ld+json">{json.dumps(data)}</script>'


# --- JSON-LD articleBody agreement at the tail ---------------------------------------------------------

def test_jsonld_article_body_is_read_from_nested_graphs_and_html():
    graph = {"@graph": [{"@type": "WebPage"}, {"@type": "NewsArticle", "articleBody": "<p>One.</p><p>Two.</p>"}]}
    tree = load_html(f'<html><head><script type="application/ld+json">{json.dumps(graph)}</script></head>'
                     "<body><p>x</p></body></html>")
    assert jsonld_article_body(tree) == "One.Two."


def test_tail_outside_an_agreeing_article_body_is_dropped():
    text = "\n".join([*PARAS, AUTHOR_BOX, "Read the fish market report"])  # the body holds 86 % of the text
    assert trim_tail_outside(text, " ".join(PARAS)) == "\n".join(PARAS)


def test_tail_is_kept_when_the_article_body_disagrees_or_is_short():
    text = "\n".join([*PARAS, AUTHOR_BOX])
    assert trim_tail_outside(text, PARAS[0] + " " + PARAS[1]) == text  # holds too little of the text
    assert trim_tail_outside(text, "Short.") == text
    assert trim_tail_outside(text, "") == text


def test_lines_inside_the_body_are_never_dropped_only_the_tail():
    text = "\n".join([PARAS[0], AUTHOR_BOX, *PARAS[1:]])
    assert trim_tail_outside(text, " ".join(PARAS)) == text


def test_page_tail_outside_jsonld_article_body_is_dropped_and_the_switch_turns_it_off():
    html = story(paras(PARAS), f"<p>{AUTHOR_BOX}</p>", head=ld(" ".join(PARAS)))
    assert AUTHOR_BOX not in row(html)["text"]
    with rule_off("ld_tail"):
        assert AUTHOR_BOX in row(html)["text"]
    assert RULES["ld_tail"]  # switched back on


# --- A lead block holding a lead photo is not a standfirst -------------------------------------------------

def test_lead_block_with_an_image_is_not_taken_as_the_standfirst():
    caption = "Dredgers at work in the eastern channel of the harbour during a test run last spring (Photo: Ana Silva)"
    media = f'<div class="article-lead"><img src="/d.jpg"><span>{caption}</span></div>'
    assert caption not in row(story(media, paras(PARAS)))["text"]
    with rule_off("lead_media"):
        assert caption in row(story(media, paras(PARAS)))["text"]


def test_text_lead_block_is_still_the_standfirst():
    text = row(story(f'<p class="article-lead">{LEAD}</p>', f'<div class="body">{paras(PARAS)}</div>'))["text"]
    assert text.splitlines()[0] == LEAD


# --- Switches and the bench's bookkeeping -------------------------------------------------------------------

def test_every_switch_is_on_by_default_and_rule_off_restores_it():
    assert RULES and all(RULES.values())
    with pytest.raises(RuntimeError):
        with rule_off("lead"):
            assert RULES["lead"] is False
            raise RuntimeError
    assert RULES["lead"] is True


def test_folds_are_stable_and_cover_every_publisher_once():
    pubs = [f"publisher{i}" for i in range(40)]
    folds = [fold_of(p, 5) for p in pubs]
    assert folds == [fold_of(p, 5) for p in pubs] and set(folds) <= set(range(5)) and len(set(folds)) > 1
    assert [lang_group(x) for x in ("de", "en", "id", "fr", None)] == ["de", "en", "id", "other", "other"]


def test_breakdown_scores_each_fold_and_language_group():
    pages = [{"publisher": "a", "lang": "de", "body": "eins zwei drei vier fünf", "title": "T", "authors": [],
              "published": None},
             {"publisher": "b", "lang": "fr", "body": "un deux trois quatre cinq", "title": "U", "authors": ["X"],
              "published": None}]
    rows = [{"text": "eins zwei drei vier fünf", "title": "T", "authors": [], "published_at": None},
            {"text": "six sept huit neuf dix", "title": "V", "authors": ["X"], "published_at": None}]
    scores = [page_scores(r, p) for r, p in zip(rows, pages)]
    out = breakdown(scores, pages, 5)
    assert out["overall"]["pages"] == 2 and out["overall"]["title"] == 0.5 and out["overall"]["authors"] == 1.0
    assert out["languages"]["de"]["f1"] == 1.0 and out["languages"]["other"]["f1"] == 0.0
    assert sum(f["pages"] for f in out["folds"]) == 2


def test_verdict_names_rules_that_hurt_or_help_one_publisher_only():
    def entry(gain, fu, fd, pu, pd):
        return {"gain": {"f1": gain}, "folds_up": fu, "folds_down": fd, "publishers_up": pu, "publishers_down": pd}
    sets = ["real", "benchmark"]
    assert verdict({"real": entry(0.01, 3, 0, 9, 1), "benchmark": entry(0.002, 2, 0, 3, 0)}, sets) == "keep"
    assert verdict({"real": entry(0.01, 3, 0, 9, 1), "benchmark": entry(-0.002, 0, 4, 1, 9)}, sets) == "hurts"
    assert verdict({"real": entry(0.01, 1, 0, 1, 0), "benchmark": entry(0, 0, 0, 0, 0)}, sets) == "one publisher"
    assert verdict({"real": entry(0, 0, 0, 0, 0), "benchmark": entry(0, 0, 0, 0, 0)}, sets) == "no effect"
