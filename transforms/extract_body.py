"""Body text of an article page: trafilatura plus what it misses on real publisher pages.

trafilatura (fast; a precision pass, and a recall pass unless the first already holds the page's paragraphs)
finds the main text; around it we
- put back the lead/standfirst that sits above the article container (``lead``),
- add the paragraphs of sibling containers the body continues in,
- run a second, non-fast pass when the text is short against the page's paragraphs,
- fall back to JSON-LD ``articleBody`` and to text held in script JSON (``__NEXT_DATA__``-style state)
  when the page renders its article with JavaScript,
- drop lines that are link lists (teasers for other stories) and boilerplate lines (Indonesian and international: "Baca Juga", related-story teasers, "Trending",
  donation appeals) and a leading headline.
- drop the trailing lines a JSON-LD ``articleBody`` that agrees with the text leaves out (author boxes, book
  details, subscription notices: what follows the article on the page but not in the publisher's own copy).
Each rule has a switch in ``RULES`` (all on) so the leave-publisher-out bench can ablate it.
A per-site profile (XPath for the body) replaces all of this for one host.
"""

from __future__ import annotations

import json
import re
from typing import Any

import lxml.html
import trafilatura
from lxml.etree import strip_tags
from trafilatura.utils import load_html

# Switches for the rules around trafilatura, all on in the pipeline. ``bench/bench_extraction.py --ablation``
# turns them off one at a time to see which rules help on held-out publishers (leave-publisher-out folds).
RULES: dict[str, bool] = {
    "prepare": True,         # drop embedded post cards and empty inline tags, unwrap ruby
    "recall_pass": True,     # the recall-mode pass when the precision pass kept little
    "full_pass": True,       # the non-fast pass when the text is short against the page's paragraphs
    "script_text": True,     # JSON-LD articleBody / script JSON when the page renders with JavaScript
    "siblings": True,        # paragraphs of sibling containers the body continues in
    "lead": True,            # the standfirst above the article container
    "lead_media": True,      # ... but not a lead block holding an image (a lead photo and its caption)
    "ld_tail": True,         # trailing lines outside a JSON-LD articleBody that agrees with the text dropped
    "teasers": True,         # link lists and story cards dropped
    "captions": True,        # caption/credit texts dropped
    "boilerplate": True,     # BOILERPLATE_LINE lines dropped
    "tail_marker": True,     # text cut at a related-stories heading
    "leading_title": True,   # a headline the body starts with dropped
    "title_choice": True,    # og:title over the JSON-LD headline where the page shows it (pick_title)
    "title_cut": True,       # kicker, section and site-name cut from the title (clean_title)
    "visible_byline": True,  # authors from the visible byline (trafilatura's and ours)
    "bold_byline": True,     # a bold name atop the body as author when the CMS names only the site
    "borrowed_zone": True,   # a time without offset takes the offset the page gives that time elsewhere
    "page_day": True,        # title day / htmldate day as last resort for the published time
}

# Lines that are never article text on news pages. Matched case-insensitively against a whole line
# after trimming.
BOILERPLATE_LINE = re.compile(
    r"""^(?:
        (?:baca|lihat|simak|cek)\s+(?:juga|pula|selengkapnya|berita\s+lainnya|artikel\s+lainnya)\b.*
      | (?:berita|artikel)\s+(?:terkait|lainnya|pilihan|rekomendasi)\s*:?.*
      | read\s+(?:also|more)\s*:.* | (?:see|read)\s+also\s*:.* | (?:also|further)\s+read(?:ing)?\s*:.* | (?:lesen\s+sie\s+auch|mehr\s+zum\s+thema)\s*:?.*
      | (?:czytaj\s+(?:więcej|też|także)|le[ea]\s+(?:más|también)|(?:à\s+)?lire\s+aussi|l[eæ]s\s+også|lees\s+ook
         |leggi\s+anche|devamını\s+oku|ilgili\s+haber(?:ler)?)\b.{0,160}
      | advertisement | anzeige | werbung | publicidad | iklan | scroll\s+(?:to|untuk)\s+(?:continue|lanjut(?:kan)?)\b.*
      | (?:\(?\s*)?(?:foto|photo|фото|gambar|ilustrasi|image|sumber\s+foto)\s*:.{0,160}
      | (?:quelle|source|fuente|fonte|источник)\s*:.{0,60} | article | artikel | článek | kort\s+fortalt | kortversjonen
      | (?:editor|penulis|reporter|pewarta|penyunting|redaktur)\s*:.{0,80}
      | (?:bagikan|share)(?:\s+(?:artikel|berita|this|ini))?\s*:?(?:\s*(?:facebook|twitter|whatsapp|telegram|line|x|copy\s+link|salin\s+tautan)\W*)*
      | (?:facebook|twitter|whatsapp|telegram|line|email|copy\s+link|salin\s+tautan)(?:\W+(?:facebook|twitter|whatsapp|telegram|line|email|copy\s+link|salin\s+tautan))*\W*
      | komentar | tinggalkan\s+(?:komentar|balasan)\b.* | \d+\s+komentar | leave\s+a\s+(?:comment|reply)\b.*
      | (?:dapatkan|ikuti)\s+(?:update|berita|informasi)\b.{0,120}(?:google\s+news|whatsapp|telegram|channel).*
      | (?:-\s*)?(?:tags?|topik|etiketler|schlagw(?:ö|oe)rter|etiquetas|mots-clés|tagi)\s*:.* | trending(?:\s+now)?\s*:? | end\s+of\s+(?:the\s+)?article
      | (?:sign\s+up|subscribe)\b.{0,80}(?:newsletter|inbox|free)\b.{0,80}
      | .{0,200}\b(?:we\s+use\s+cookies|(?:may|might)\s+earn\s+(?:an?\s+)?(?:affiliate\s+)?commission)\b.{0,200}
      | (?:stand|aktualisiert|updated|published|veröffentlicht(?:\s+am)?|erstellt|publicado|publié)\s*:?\s*\d{1,2}[./]\d{1,2}[./]\d{2,4}.{0,40}
      | \d{1,2}[./]\d{1,2}[./]\d{2,4},?(?:\s*\d{1,2}[:.]\d\d)?\s*(?:uhr|h)?\.? | \d{1,2}:\d\d\s*min\b.{0,60}
      | (?:von|by)\s+(?-i:[A-ZÀ-ÖØ-Þ][\w'’.-]+(?:\s+[A-ZÀ-ÖØ-Þ][\w'’.-]+){1,2}
                      (?:\s+(?:und|and|&)\s+[A-ZÀ-ÖØ-Þ][\w'’.-]+(?:\s+[A-ZÀ-ÖØ-Þ][\w'’.-]+){1,2})?)
      | article\s+content | recommended\s+videos | read\s+next\b:?.{0,160} | most\s+read(?:\s+in\s+\w+)? | popular
      | auch\s+interessant | passer\s+la\s+publicit[ée] | hauptinhalt | fehler\s+gefunden\?\s*jetzt\s+melden\.?
      | (?:lesedauer|reading\s+time|temps\s+de\s+lecture|tiempo\s+de\s+lectura)\s*:?\s*\d+\s*\w+\.?
      | (?:got|do\s+you\s+have)\s+a\s+story(?:\s+to\s+tell)?\?.* | get\s+in\s+touch\s+with\s+our\s+news\s+team\b.*
      | for\s+more\s+stories\s+like\s+this\b.{0,80} | follow\s+\S+(?:\s+\S+)?\s+on\s+(?:twitter|facebook|instagram|x)\b.*
      | more\s+:\s.{0,160} | funda\s+olunye\s+udaba\b.{0,160} | 기사\s*URL이\s*복사되었습니다\.? | 完了しました
      | empfohlener\s+redaktioneller\s+inhalt | an\s+dieser\s+stelle\s+finden\s+sie\s+einen\b.{0,80}externen\s+inhalt\b.*
      | ich\s+bin\s+damit\s+einverstanden,\s+dass\s+mir\s+(?:der\s+)?externe[rn]?\s+inhalt\b.*
    )$""",
    re.IGNORECASE | re.VERBOSE,
)

# Headings after which a page only lists other stories (or asks for money): the body is cut there
# (when they come after the first third of the text, so a short article that mentions such words
# early is left alone).
TAIL_MARKER = re.compile(
    r"""^(?:artikel\s+ini\s+(?:telah\s+)?(?:tayang|terbit|dimuat)\b.*
      | (?:berita|artikel)\s+(?:terkini|terpopuler|terbaru|populer|lainnya|terkait|pilihan|rekomendasi)\s*:?
      | (?:terpopuler|terkini|rekomendasi\s+untuk\s+anda|pilihan\s+untuk\s+anda)
      | (?:related|more|recommended|top|latest|popular)\s+(?:articles|stories|news|reads?|from\s+\w+(?:\s+\w+)?)\s*:?
      | (?:most\s+(?:read|popular|viewed)|you\s+may\s+(?:also\s+)?like|end\s+of\s+(?:the\s+)?article)\s*:?
      | (?:das\s+könnte\s+sie\s+auch\s+interessieren|weitere\s+artikel|meistgelesen|weiterführende\s+links
         |beiträge\s+aus\s+dem\s+forum)\s*:?
      | (?:support|donate\s+to)\s+(?:our|independent)\s+journalism\b.*
      | (?:if\s+you\s+(?:value|appreciate|enjoyed)\b.{0,80}(?:support|donat|subscri)).*
    )$""",
    re.IGNORECASE | re.VERBOSE,
)

# Inline markers that may sit inside a paragraph.
INLINE_MARKERS = re.compile(r"\s*(?:ADVERTISEMENT|SCROLL TO CONTINUE WITH CONTENT)\s*")

# Two fast trafilatura passes (no readability/jusText fallback): a precision-oriented one, and a
# recall-oriented one used when the first kept under RECALL_SWITCH of what the second found (it then
# probably cut article parts). Measured on the extraction benchmarks: see bench/ and the README.
PRECISE = {"favor_precision": True, "fast": True, "include_comments": False, "include_tables": True}
BROAD = {"favor_recall": True, "fast": True, "include_comments": False, "include_tables": True}
FALLBACK = {"favor_recall": True, "fast": False, "include_comments": False, "include_tables": True}
RECALL_SWITCH = 0.5
# A JSON-LD articleBody agrees with the extracted text when it holds this share of the text's characters.
LD_AGREEMENT = 0.85
# The recall pass is skipped when the precision pass already holds BROAD_SKIP of the page's paragraph text
# (on both benchmark page sets it was never taken then: 213 of 264 pages skip it).
BROAD_SKIP = 0.8
# The non-fast pass runs when the text holds under SHORT_SHARE of the page's paragraph text.
SHORT_SHARE = 0.3
# A list item or paragraph with at least this share of its text in links is a teaser, not article text.
LINKED_SHARE = 0.6
CAPTION_WORDS = ("caption", "credit")
CAPTION_CLASS = re.compile(rf"(^|[\s_-])({'|'.join(CAPTION_WORDS)})($|[\s_-])", re.I)
# Class/id words of a lead/standfirst block.
LEAD_WORDS = ("lead", "standfirst", "intro", "summary", "subtitle", "dek", "excerpt", "abstract", "perex", "preface")
LEAD_CLASS = rf"(^|[\s_-])({'|'.join(LEAD_WORDS)})(text|paragraph)?($|[\s_-])"
OUTSIDE_TAGS = {"nav", "footer", "aside"}
OUTSIDE = "ancestor-or-self::*[self::nav or self::footer or self::aside]"
# Cards that embed another post of the site (a teaser with a link, not text of this article). Quoted social
# posts (tweets, Instagram) stay: they are often the statement the story reports (and benchmark truth keeps them).
EMBEDS = "//blockquote[contains(@class, 'wp-embedded-content')]"
EMPTY_INLINE = "//*[self::b or self::strong or self::i or self::em][not(node())]"
SENTENCE_END = re.compile(r"[.!?。](?:\s|$)", re.M)
JSON_STRING = re.compile(r'"((?:[^"\\]|\\.){400,})"')


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text).split()).casefold()


def clean_text(text: str) -> str:
    """Drop boilerplate lines and markers, normalise whitespace; paragraphs joined by newlines."""
    raw_lines = [" ".join(INLINE_MARKERS.sub(" ", raw).split()) for raw in text.splitlines()]
    raw_lines = [line for line in raw_lines if line]
    for i, line in enumerate(raw_lines):
        if RULES["tail_marker"] and i >= len(raw_lines) / 3 and TAIL_MARKER.match(line):
            raw_lines = raw_lines[:i]
            break
    return "\n".join(line for line in raw_lines if not (RULES["boilerplate"] and BOILERPLATE_LINE.match(line)))


def drop_leading_title(text: str, titles: list[str | None]) -> str:
    """Remove the headline when the extractor kept it as the first line of the body (alone, or with a kicker
    or section name before it, or a credit after it)."""
    if not RULES["leading_title"]:
        return text
    wanted = {norm(t) for t in titles if t and len(norm(t)) >= 10}
    first, _, rest = text.partition("\n")
    line = norm(first)
    return rest if any(t in line and len(line) <= len(t) + 120 for t in wanted) else text


def _run(page, url: str | None, opts: dict[str, Any]) -> str:
    doc = trafilatura.bare_extraction(page, url=url, **opts)
    return (doc.as_dict().get("text") if doc is not None else None) or ""


def _text(el) -> str:
    return " ".join(el.text_content().split())


def paragraph_chars(tree) -> int:
    """Characters of visible paragraph text on the page (a yardstick for a short extraction)."""
    return sum(len(_text(p)) for p in tree.xpath(f"//p[not({OUTSIDE})]") if len(_text(p)) >= 40)


def _outside(el) -> bool:
    """In navigation, a footer or an aside (the element itself or an ancestor)."""
    return el.tag in OUTSIDE_TAGS or any(a.tag in OUTSIDE_TAGS for a in el.iterancestors())


def prepare(tree) -> None:
    """Before extraction: drop embedded post cards and empty bold/italic tags, and unwrap ruby annotations so
    that a reading stays inline with the word it glosses."""
    for el in tree.xpath(EMBEDS):
        el.drop_tree()  # keeps the text that follows the embed
    for el in tree.xpath(EMPTY_INLINE):
        el.drop_tag()  # trafilatura loses the text after an empty <b></b>
    strip_tags(tree, "ruby", "rb", "rp", "rt", "rtc")


def lead(tree, text: str) -> str | None:
    """The standfirst above the article text: a lead-classed block, or the block og:description quotes."""
    have = norm(text[:3000])
    desc = tree.xpath('//meta[@property="og:description" or @name="description"]/@content')
    desc = norm(desc[0])[:80] if desc else ""
    body = tree.find(".//body")
    for el in body.iterdescendants() if body is not None else ():
        cls = (el.get("class") or "").lower()
        if el.tag != "p" and not any(w in cls for w in LEAD_WORDS) or _outside(el):
            continue
        words = norm(_text(el))
        media = ".//img | .//picture | .//figure | .//video | " if RULES["lead_media"] else ""
        if not 40 <= len(words) <= 800 or el.xpath(f"{media}.//p[string-length(normalize-space()) > 40] | .//script"):
            continue
        classed = re.search(LEAD_CLASS, el.get("class", ""), re.I)
        quoted = len(desc) >= 40 and words.startswith(desc)
        if classed or quoted:
            return None if words in have else _text(el)
        if words[:60] in have:  # reached the article text itself: nothing above it
            return None
    return None


def script_text(tree) -> str:
    """Longest article-like text in page scripts: JSON-LD articleBody, or a JSON string of HTML/text."""
    best = ""
    for script in tree.xpath("//script[not(@src)]/text()"):
        for raw in JSON_STRING.findall(script):
            try:
                value = json.loads(f'"{raw}"')
            except ValueError:
                continue
            if "<" in value:
                try:
                    value = "\n".join(_text(p) for p in lxml.html.fromstring(value).xpath("//p"))
                except (lxml.etree.ParserError, ValueError):
                    continue
            if len(value) > len(best) and len(value.split()) >= 40 and len(SENTENCE_END.findall(value)) >= 2 \
                    and not re.search(r'["{}]\s*:|[{}\[\]]\s*$', value, re.M):  # prose, not nested JSON
                best = value
    return best


def sibling_containers(tree, text: str) -> str:
    """Paragraphs of containers that continue the one the text ends in (same tag and class, later siblings):
    bodies split around an ad or a figure into several ``<div class="body">``."""
    lines = text.splitlines()
    last = norm(lines[-1])[:200] if lines else ""
    if len(last) < 40:
        return ""
    have = set(map(norm, lines))
    for p in tree.iter("p"):
        if norm(_text(p))[:200] != last:
            continue
        box = p.getparent()
        if box is None or not box.get("class"):
            return ""
        more = [_text(q) for sib in box.itersiblings() if sib.tag == box.tag and sib.get("class") == box.get("class")
                for q in sib.iter("p") if _text(q) and norm(_text(q)) not in have]
        return "\n".join(more)
    return ""


def jsonld_article_body(tree) -> str:
    """The longest JSON-LD ``articleBody`` of the page (HTML in it reduced to text), or ''."""
    best = ""
    for script in tree.xpath('//script[@type="application/ld+json"]/text()'):
        if "articleBody" not in script:
            continue
        try:
            stack = [json.loads(script.strip().removeprefix("<![CDATA[").removesuffix("]]>"))]
        except ValueError:
            continue
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                body = item.get("articleBody")
                if isinstance(body, str) and len(body) > len(best):
                    best = body
                stack.extend(v for v in item.values() if isinstance(v, (list, dict)))
    if "<" in best:
        try:
            best = lxml.html.fromstring(best).text_content()
        except (lxml.etree.ParserError, ValueError):
            return ""
    return best


def trim_tail_outside(text: str, article_body: str) -> str:
    """Drop the trailing lines the page's JSON-LD ``articleBody`` does not hold, when that articleBody agrees
    with the text (holds at least LD_AGREEMENT of its characters): what follows the article in the page
    (newsletter boxes, book details, subscription notices) but not in the publisher's own copy of it."""
    if len(article_body) < 200:
        return text
    lines, held = text.splitlines(), norm(article_body)
    inside = [norm(line) in held for line in lines]
    if sum(len(x) for x, i in zip(lines, inside) if i) < LD_AGREEMENT * sum(map(len, lines)):
        return text
    end = len(lines)
    while end > 0 and not inside[end - 1]:
        end -= 1
    return "\n".join(lines[:end]) if end else text


def captions(tree) -> set[str]:
    """Texts of image captions and credits, which trafilatura sometimes keeps as paragraphs."""
    return {norm(_text(el)) for el in tree.xpath("//figcaption | //*[@class]")
            if el.tag == "figcaption" or CAPTION_CLASS.search(el.get("class"))}


def link_lines(tree) -> set[str]:
    """Texts of lists whose items are all mostly link text (3 items or more), and paragraphs inside a link
    (a story card: headline, date and summary all one link): teasers for other stories."""
    out = {norm(_text(p)) for p in tree.xpath("//a//p")}
    for box in tree.xpath("//ul[count(li) >= 3] | //ol[count(li) >= 3]"):
        items = [(_text(li), sum(len(_text(a)) for a in li.iter("a"))) for li in box.iterchildren("li")]
        if all(text and linked >= LINKED_SHARE * len(text) for text, linked in items):
            out.update(norm(text) for text, _ in items)
    return out


def profile_body(tree, xpath: str) -> str:
    """The body as a per-site profile's XPath selects it: the text of each matched block, in order."""
    return "\n".join(t for el in tree.xpath(xpath) if (t := _text(el) if hasattr(el, "text_content") else
                                                       " ".join(str(el).split())))


def extract_body(html: str | bytes, url: str | None, titles: list[str | None] = (), tree=None,
                 body_xpath: str | None = None) -> str:
    """Cleaned body text of one page (metadata is read separately, see ``read_meta``).

    ``titles`` are headlines known from elsewhere (feed, meta tags), dropped if the body starts with one.
    ``tree`` is the page parsed by ``trafilatura.utils.load_html`` (parsed here when not given); ``body_xpath`` a per-site profile.
    """
    if tree is None:
        tree = load_html(html)
    page = html if tree is None else tree  # trafilatura copies a tree it is given, so it is parsed only once
    if body_xpath and tree is not None:
        return drop_leading_title(clean_text(profile_body(tree, body_xpath)), list(titles))
    if tree is not None and RULES["prepare"]:
        prepare(tree)
    visible = paragraph_chars(tree) if tree is not None else 0
    text = _run(page, url, PRECISE)
    if RULES["recall_pass"] and (visible < 500 or len(text) < BROAD_SKIP * visible):  # else never taken anyway
        broad = _run(page, url, BROAD)
        if len(text) < RECALL_SWITCH * len(broad):
            text = broad
    if tree is not None:
        if RULES["full_pass"] and len(text) < SHORT_SHARE * visible:
            text = max(text, _run(page, url, FALLBACK), key=len)
        if RULES["script_text"] and (len(text) < SHORT_SHARE * visible or len(text) < 400):
            scripted = script_text(tree)
            if len(scripted) > 2 * len(text):
                text = scripted
        more = sibling_containers(tree, text) if RULES["siblings"] else ""
        if more:
            text = f"{text}\n{more}"
        first = lead(tree, text) if RULES["lead"] else None
        if first:
            text = f"{first}\n{text}"
        teasers = (link_lines(tree) if RULES["teasers"] else set()) | (captions(tree) if RULES["captions"] else set())
        text = "\n".join(line for line in text.splitlines() if norm(line.lstrip("-• ")) not in teasers)
    text = clean_text(text)
    if tree is not None and RULES["ld_tail"]:
        text = trim_tail_outside(text, jsonld_article_body(tree))
    return drop_leading_title(text, list(titles))
