"""Extraction quality and speed, scored leave-publisher-out, on three page sets:

- ``real``: ../shared/data/extraction-real (143 pages, 96 publishers; gold body, title, date, authors);
- ``benchmark``: ../shared/data/extraction (121 pages of the article-extraction benchmark; gold body only,
  grouped by host; language detected from the gold text);
- ``golden``: tests/golden (9 hand-built Indonesian pages in this repository; the only ``id`` pages).

    python bench/bench_extraction.py [--data ../shared/data] [--json bench/results/extraction.json]
                                     [--ablation] [--only real|benchmark|golden] [--folds 5]
                                     [--real-json FILE] [--memory-pages N]

Publishers (hosts for the benchmark) are split into ``--folds`` folds by a hash of their name; every score
is given per fold, overall (every page is in exactly one held-out fold) and per language group
(de/en/other/id), for our whole extraction stage (``extract_article``: no feed metadata, no per-site profile)
and for trafilatura's defaults (``bare_extraction`` with metadata; its date is a day, read as 00:00 UTC).
Our extractor is rule-based and fits nothing, so every fold is held out for it; what the folds show is whether
a rule's gain is spread over publishers or comes from one. ``--ablation`` turns each switch of
``transforms.extract_body.RULES`` off in turn and reports, per set, the change each rule makes to each metric
overall and in how many folds (and publishers) it helps or hurts.

Metrics: body by the benchmark metric (word 4-gram shingles, per-page normalised, macro P/R; ``bench.metric``),
title by exact match (spacing aside), published time within an hour, author list by exact match. Speed is
pages per CPU second of this (single-threaded) process on the real pages, trafilatura's in the same run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import zlib
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import trafilatura  # noqa: E402

from bench.metric import corpus_scores, page_counts  # noqa: E402
from bench.shared import require  # noqa: E402
from warta.transforms.extract import RULES, detect_language, extract_article  # noqa: E402

GROUPS = ("de", "en", "other", "id")
METRICS = ("f1", "title", "date", "authors")
GOALS = {"real": {"f1": 0.97, "title": 0.90, "date": 0.98, "authors": 0.90}, "benchmark": {"f1": 0.969}}


def lang_group(lang: str | None) -> str:
    return lang if lang in ("de", "en", "id") else "other"


def fold_of(publisher: str, folds: int) -> int:
    return zlib.crc32(publisher.encode("utf-8")) % folds


def load_real(data: Path) -> list[dict]:
    folder = data / "extraction-real"
    gold = json.loads((folder / "gold.json").read_text())
    return [{"key": key, "publisher": g["publisher"], "lang": g["language"], "url": g["url"],
             "html": gzip.decompress((folder / "html" / f"{key}.html.gz").read_bytes()).decode("utf-8"),
             "fetched": datetime.fromisoformat(g["crawl_date"]).replace(tzinfo=timezone.utc),
             "body": g["articleBody"], "title": g["title"], "authors": g["authors"] or [],
             "published": g["publishing_date"]} for key, g in sorted(gold.items())]


def load_benchmark(data: Path) -> list[dict]:
    folder = data / "extraction"
    truth = json.loads((folder / "ground-truth.json").read_text())
    return [{"key": pid, "publisher": (urlsplit(t.get("url") or "").hostname or pid).removeprefix("www."),
             "lang": detect_language(t["articleBody"]) or "?", "url": t.get("url") or "",
             "html": gzip.decompress((folder / "html" / f"{pid}.html.gz").read_bytes()).decode("utf-8"),
             "fetched": datetime(2020, 1, 1, tzinfo=timezone.utc), "body": t["articleBody"]}
            for pid, t in sorted(truth.items())]


def load_golden() -> list[dict]:
    folder = ROOT / "tests" / "golden"
    pages = []
    for path in sorted(folder.glob("*.json")):
        g = json.loads(path.read_text())
        pages.append({"key": path.stem, "publisher": path.stem.split("-")[0], "lang": "id",
                      "url": "https://warta.example/a", "html": path.with_suffix(".html").read_text(),
                      "fetched": datetime(2024, 11, 20, tzinfo=timezone.utc), "body": g["text"],
                      "title": g["title"], "authors": g["authors"], "published": g["published_at"]})
    return pages


def ours(page: dict) -> dict:
    try:
        return extract_article({"url": page["url"], "feed_url": "", "source": page["publisher"],
                                "html": page["html"], "fetched_at": page["fetched"]}, min_chars=0)
    except ValueError:
        return {"text": "", "title": None, "published_at": None, "authors": []}


def traf(page: dict) -> dict:
    doc = trafilatura.bare_extraction(page["html"], url=page["url"] or None, with_metadata=True)
    doc = doc.as_dict() if doc is not None else {}
    authors = [a.strip() for a in (doc.get("author") or "").split(";") if a.strip()]
    try:
        day = datetime.fromisoformat(doc["date"]).replace(tzinfo=timezone.utc) if doc.get("date") else None
    except ValueError:
        day = None
    return {"text": doc.get("text") or "", "title": doc.get("title"), "authors": authors, "published_at": day}


def _same_text(a: str | None, b: str | None) -> bool:
    return " ".join((a or "").split()) == " ".join((b or "").split())


def _within_hour(found: datetime | None, gold: str | None) -> bool:
    if not gold:
        return found is None
    want = datetime.fromisoformat(gold)
    want = want if want.tzinfo else want.replace(tzinfo=timezone.utc)
    return found is not None and abs((found - want).total_seconds()) <= 3600


def page_scores(row: dict, page: dict) -> dict:
    """One page's scores: body shingle counts and F1, and the metadata checks where the set has gold."""
    tp, fp, fn = page_counts(row["text"], page["body"])
    out = {"counts": (row["text"], page["body"]), "page_f1": tp / (tp + (fp + fn) / 2) if tp else 0.0}
    if "title" in page:
        out["title"] = _same_text(row["title"], page["title"])
        out["date"] = _within_hour(row["published_at"], page["published"])
        out["authors"] = [" ".join(a.split()) for a in row["authors"]] == page["authors"]
    return out


def summary(scores: list[dict]) -> dict:
    if not scores:
        return {"pages": 0}
    body = corpus_scores([s["counts"] for s in scores])
    out = {"pages": len(scores), "precision": round(body["precision"], 4), "recall": round(body["recall"], 4),
           "f1": round(body["f1"], 4)}
    for m in ("title", "date", "authors"):
        if m in scores[0]:
            out[m] = round(sum(s[m] for s in scores) / len(scores), 4)
    return out


def breakdown(scores: list[dict], pages: list[dict], folds: int) -> dict:
    """Overall, per held-out fold and per language group."""
    by_fold, by_lang = defaultdict(list), defaultdict(list)
    for s, p in zip(scores, pages):
        by_fold[fold_of(p["publisher"], folds)].append(s)
        by_lang[lang_group(p["lang"])].append(s)
    return {"overall": summary(scores),
            "folds": [summary(by_fold[k]) for k in range(folds)],
            "languages": {g: summary(by_lang[g]) for g in GROUPS if by_lang[g]}}


def evaluate(fn, pages: list[dict]) -> tuple[list[dict], float]:
    cpu0 = time.process_time()
    rows = [fn(p) for p in pages]
    cpu = time.process_time() - cpu0
    return [page_scores(r, p) for r, p in zip(rows, pages)], cpu


@contextmanager
def rule_off(name: str):
    RULES[name] = False
    try:
        yield
    finally:
        RULES[name] = True


def composite(s: dict) -> float:
    return s["page_f1"] + sum(s[m] for m in ("title", "date", "authors") if m in s)


def ablation(sets: dict[str, list[dict]], base: dict[str, list[dict]], folds: int) -> list[dict]:
    """Each rule off in turn: per set, the rule's gain (on minus off) per metric overall, the folds where the
    rule's composite score (body F1 + title + date + authors) is up/down, and the publishers it helps/hurts."""
    table = []
    for name in RULES:
        entry = {"rule": name}
        with rule_off(name):
            for set_name, pages in sets.items():
                off, _ = evaluate(ours, pages)
                on_sum, off_sum = summary(base[set_name]), summary(off)
                gain = {m: round(on_sum[m] - off_sum[m], 4) for m in METRICS if m in on_sum}
                fold_gain, pub_gain = defaultdict(float), defaultdict(float)
                for a, b, p in zip(base[set_name], off, pages):
                    d = composite(a) - composite(b)
                    fold_gain[fold_of(p["publisher"], folds)] += d
                    pub_gain[p["publisher"]] += d
                entry[set_name] = {"gain": gain,
                                   "folds_up": sum(v > 1e-9 for v in fold_gain.values()),
                                   "folds_down": sum(v < -1e-9 for v in fold_gain.values()),
                                   "publishers_up": sum(v > 1e-9 for v in pub_gain.values()),
                                   "publishers_down": sum(v < -1e-9 for v in pub_gain.values())}
        entry["verdict"] = verdict(entry, sets)
        table.append(entry)
    return table


def verdict(entry: dict, sets) -> str:
    """keep: helps on held-out publishers of more than one fold and hurts no set overall; one-publisher: its
    whole gain is one publisher's (belongs in a per-site profile); hurts: a set loses overall; no effect."""
    touched = [entry[s] for s in sets if entry[s]["publishers_up"] or entry[s]["publishers_down"]]
    if not touched:
        return "no effect"
    if any(sum(t["gain"].values()) < 0 or t["folds_down"] > t["folds_up"] for t in touched):
        return "hurts"
    if sum(t["publishers_up"] for t in touched) <= 1 and not any(t["publishers_down"] for t in touched):
        return "one publisher"
    return "keep" if sum(t["folds_up"] for t in touched) >= 2 else "one fold"


def memory_profile(pages: list[dict], total: int) -> list[dict]:
    """RSS every 1,000 pages while the extraction stage (its Beam DoFn) runs over ``total`` pages."""
    import psutil

    from warta.transforms.extract import _ExtractFn
    fn, proc, points = _ExtractFn(200, None), psutil.Process(), []
    for i in range(total):
        p = pages[i % len(pages)]
        list(fn.process({"url": p["url"] or f"http://x/{i}", "feed_url": "f", "source": "s", "html": p["html"],
                         "fetched_at": p["fetched"]}))
        if (i + 1) % 1000 == 0:
            points.append({"pages": i + 1, "rss_mb": round(proc.memory_info().rss / 2**20, 1)})
    return points


def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "–"


def print_set(name: str, result: dict) -> None:
    ours_b, traf_b = result["ours"], result["trafilatura"]
    metrics = [m for m in METRICS if m in ours_b["overall"]]
    print(f"\n{name}: {ours_b['overall']['pages']} pages; ours / trafilatura defaults")
    print(f"{'':14} {'pages':>5} " + " ".join(f"{m:>15}" for m in metrics))

    def line(label, a, b):
        print(f"{label:14} {a.get('pages', 0):5d} " + " ".join(f"{fmt(a.get(m)):>7}/{fmt(b.get(m)):<7}"
                                                             for m in metrics))
    line("overall", ours_b["overall"], traf_b["overall"])
    for k, (a, b) in enumerate(zip(ours_b["folds"], traf_b["folds"])):
        line(f"fold {k}", a, b)
    for g in GROUPS:
        if g in ours_b["languages"]:
            line(f"lang {g}", ours_b["languages"][g], traf_b["languages"][g])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "extraction.json")
    ap.add_argument("--real-json", type=Path, help="also write the real pages' results here")
    ap.add_argument("--memory-pages", type=int, default=0, help="also track RSS over this many pages (e.g. 10000)")
    ap.add_argument("--only", choices=["real", "benchmark", "golden"], help="run one page set")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--ablation", action="store_true", help="also score each rule switched off")
    args = ap.parse_args(argv)
    wanted = [args.only] if args.only else ["real", "benchmark", "golden"]
    sets = {}
    if "real" in wanted:
        sets["real"] = load_real(require(args.data / "extraction-real", "bench_extraction").parent)
    if "benchmark" in wanted:
        sets["benchmark"] = load_benchmark(require(args.data / "extraction", "bench_extraction").parent)
    if "golden" in wanted:
        sets["golden"] = load_golden()
    for page in next(iter(sets.values()))[:3]:  # warm-up: imports, language model, caches
        ours(page)
    report, base = {"folds": args.folds, "sets": {}}, {}
    for name, pages in sets.items():
        base[name], cpu = evaluate(ours, pages)
        traf_scores, traf_cpu = evaluate(traf, pages)
        report["sets"][name] = {
            "pages": len(pages), "publishers": len({p["publisher"] for p in pages}),
            "ours": breakdown(base[name], pages, args.folds),
            "trafilatura": breakdown(traf_scores, pages, args.folds),
            "pages_per_cpu_s": {"ours": round(len(pages) / cpu, 1), "trafilatura": round(len(pages) / traf_cpu, 1)},
            "per_page_f1": {p["key"]: round(s["page_f1"], 3) for s, p in zip(base[name], pages)}}
        print_set(name, report["sets"][name])
        speed = report["sets"][name]["pages_per_cpu_s"]
        print(f"speed: ours {speed['ours']} pages/cpu-s, trafilatura defaults {speed['trafilatura']}")
    if args.ablation:
        report["ablation"] = ablation(sets, base, args.folds)
        names = list(sets)
        print("\nablation: gain of each rule (on - off) overall; folds up/down; publishers up/down")
        for e in report["ablation"]:
            cells = []
            for s in names:
                t = e[s]
                gains = " ".join(f"{m}{v:+.3f}" for m, v in t["gain"].items() if v)
                cells.append(f"{s}: {gains or '0'} f{t['folds_up']}/{t['folds_down']} "
                             f"p{t['publishers_up']}/{t['publishers_down']}")
            print(f"{e['rule']:15} {e['verdict']:13} " + " | ".join(cells))
    if args.memory_pages:
        report["memory"] = memory_profile([p for pages in sets.values() for p in pages], args.memory_pages)
        for point in report["memory"]:
            print(f"after {point['pages']:6d} pages: RSS {point['rss_mb']} MB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    if args.real_json and "real" in report["sets"]:
        args.real_json.write_text(json.dumps(report["sets"]["real"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
