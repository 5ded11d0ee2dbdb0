"""NER tagging speed, fp32 against int8 (``ner.precision``), at 1 and 2 torch threads.

    python bench/bench_ner_int8.py [--split ../shared/data/ner/nergrit/valid.txt] [--rounds 5] [--passes 3]

warta's own tagging path (``NerModel`` + ``ner_tags``, 32 sentences per forward pass, as the workers tag)
over the pre-tokenised sentences of the split, ``--passes`` times per timing: ``fp32`` and ``int8`` as
``ner.precision`` sets them, and ``fp32-stanza-decode``, the path before #29 (fp32, Stanza's own
``Trainer.predict`` with its numpy Viterbi instead of ``transforms.ner.predict``). The rounds alternate the
precisions and thread counts so that load from other processes on a shared machine falls on all of them
alike; the medians (and the min-max) of sentences/s are reported, with the load average before and after.
Also the share of sentences whose entities (spans and types) are identical between the two precisions.
Results: bench/results/ner_int8.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import warta.transforms.ner as ner  # noqa: E402
from bench.shared import require  # noqa: E402
from warta.models.build_id_ner import read_bio  # noqa: E402
from warta.transforms.ner import SHIPPED, NerModel, ner_tags  # noqa: E402


def tagger(model: NerModel, stanza_decode: bool = False):
    def tag(sents):
        if not stanza_decode:
            return ner_tags(model, sents)
        batched = ner.predict
        ner.predict = lambda trainer, batch: trainer.predict(batch)
        try:
            return ner_tags(model, sents)
        finally:
            ner.predict = batched
    return tag


def entity_sets(tags: list[list[str]]) -> list[set]:
    from stanza.models.ner.utils import decode_from_bioes
    return [{(e["start"], e["end"], e["type"]) for e in decode_from_bioes(t)} for t in tags]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", type=Path, default=ROOT.parent / "shared/data/ner/nergrit/valid.txt")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passes", type=int, default=3, help="passes over the split per timing")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/ner_int8.json")
    args = ap.parse_args(argv)

    import torch

    tokens = [[t for t, _ in s] for s in read_bio(require(args.split, "bench_ner_int8"))]
    work = tokens * args.passes
    models = {p: NerModel(SHIPPED["id"], 1, precision=p) for p in ("fp32", "int8")}
    assert models["int8"].precision == "int8"
    taggers = {"fp32-stanza-decode": tagger(models["fp32"], True), "fp32": tagger(models["fp32"]),
               "int8": tagger(models["int8"])}
    tags = {p: tag(tokens) for p, tag in taggers.items()}  # also the warm-up
    assert tags["fp32"] == tags["fp32-stanza-decode"]  # the batched decoding finds Stanza's paths
    same = entity_sets(tags["fp32"]), entity_sets(tags["int8"])
    n_fp32 = sum(len(s) for s in same[0])
    agree = sum(len(a & b) for a, b in zip(*same))
    load0 = os.getloadavg()
    speeds: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for precision, tag in taggers.items():
                t0 = time.perf_counter()
                tag(work)
                speeds.setdefault(f"{precision}_{threads}t", []).append(len(work) / (time.perf_counter() - t0))
                print(f"{precision} {threads} thread(s): {speeds[f'{precision}_{threads}t'][-1]:.1f} sentences/s, "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    result = {"split": str(args.split), "sentences": len(tokens), "passes": args.passes, "rounds": args.rounds,
              "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load0],
              "loadavg_after": [round(x, 2) for x in load1],
              "entities_fp32": n_fp32, "entities_int8": sum(len(s) for s in same[1]),
              "entities_identical_share": round(agree / max(1, n_fp32), 4),
              "sentences_identical_share": round(sum(a == b for a, b in zip(*same)) / len(tokens), 4),
              "sentences_per_s": {k: {"median": round(statistics.median(v), 1), "min": round(min(v), 1),
                                      "max": round(max(v), 1)} for k, v in speeds.items()}}
    for threads in args.threads:
        before, fp, q = (result["sentences_per_s"][f"{p}_{threads}t"]["median"]
                         for p in ("fp32-stanza-decode", "fp32", "int8"))
        result[f"speedup_int8_over_fp32_{threads}t"] = round(q / fp, 2)
        result[f"speedup_int8_over_before_{threads}t"] = round(q / before, 2)
    print(json.dumps(result, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
