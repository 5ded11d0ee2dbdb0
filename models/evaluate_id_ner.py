"""Score the shipped Indonesian NER model: entity-level exact-span micro F1 (PER/LOC/ORG) and speed.

    python models/evaluate_id_ner.py [--split ../shared/data/ner/nergrit/valid.txt] [--json bench/results/ner.json]
                                     [--precisions fp32 int8]

Spans are compared exactly (start, end, label) after mapping NERGrit labels to PER/LOC/ORG. Speed is
sentences/s of batched tagging (the pipeline's pre-tokenised Stanza call) with the torch threads given.
Each precision is scored on the same split: fp32 (the shipped weights, top-level keys) and int8 (the
same model after ``transforms.ner.quantize_int8``, under ``"int8"``, with ``f1_delta`` to fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.shared import require  # noqa: E402
from warta.models.build_id_ner import map_tag, read_bio  # noqa: E402


def spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """BIO/BIOES tags -> {(start, end_exclusive, label)}."""
    out, start, label = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, lab = tag.partition("-")
        if start is not None and (prefix in ("O", "B", "S") or lab != label):
            out.add((start, i, label))
            start = label = None
        if prefix in ("B", "S") or (prefix in ("I", "E") and start is None):
            start, label = i, lab
        if prefix in ("E", "S") and start is not None:
            out.add((start, i + 1, label))
            start = label = None
    return out


def load_pipeline(model: Path, pretrain: Path, threads: int, batch: int, precision: str = "fp32"):
    """The documented ``stanza.Pipeline`` over the model files (what the scores are measured with);
    with ``precision="int8"`` its NER models are quantized as warta's workers quantize theirs."""
    from warta.transforms.ner import build_pipeline, quantize_int8
    pipe = build_pipeline("id", {"ner_model_path": str(model), "ner_pretrain_path": str(pretrain),
                                 "ner_batch_size": batch}, threads)
    if precision == "int8":
        for trainer in pipe.processors["ner"].trainers:
            quantize_int8(trainer.model)
    return pipe


def _speed_worker(args, shard, barrier, queue, lean, precision):
    if lean:  # warta's own path: NerModel + ner_tags (no Stanza Document objects), same tags
        from warta.transforms.ner import NerModel, ner_tags
        model = NerModel({"ner_model_path": str(args.model), "ner_pretrain_path": str(args.pretrain)}, 1,
                         precision=precision)
        tag = lambda batch: ner_tags(model, batch)  # noqa: E731
    else:
        tag = load_pipeline(args.model, args.pretrain, 1, args.batch, precision)
    tag(shard[:8])
    barrier.wait()
    t0 = time.perf_counter()
    for i in range(0, len(shard), args.batch):
        tag(shard[i:i + args.batch])
    queue.put((t0, time.perf_counter(), len(shard)))


def multi_process_speed(args, tokens: list[list[str]], lean: bool = False, precision: str = "fp32") -> float:
    """Sentences/s with one single-threaded process per core (how the pipeline runs with 2 workers)."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    work = tokens * args.repeat
    barrier, queue = ctx.Barrier(args.processes), ctx.Queue()
    procs = [ctx.Process(target=_speed_worker, args=(args, work[i::args.processes], barrier, queue, lean, precision))
             for i in range(args.processes)]
    for p in procs:
        p.start()
    spans = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return len(work) / (max(e for _, e, _ in spans) - min(s for s, _, _ in spans))


def score(args, sents: list[list[tuple[str, str]]], precision: str) -> dict:
    """Entity F1 and speed of one precision over ``sents``."""
    pipe = load_pipeline(args.model, args.pretrain, args.threads, args.batch, precision)
    tokens = [[t for t, _ in s] for s in sents]
    pipe(tokens[:16])  # warm-up
    t0 = time.perf_counter()
    docs = [pipe(tokens[i:i + args.batch]) for i in range(0, len(tokens), args.batch)]
    wall = time.perf_counter() - t0
    pred_tags = [[tok.ner for tok in s.tokens] for d in docs for s in d.sentences]
    counts: Counter = Counter()
    per_label: dict[str, Counter] = {}
    for gold_s, pred in zip(sents, pred_tags):
        gold = spans([map_tag(g) for _, g in gold_s])
        guess = spans(pred)
        for span in guess | gold:
            kind = "tp" if span in gold and span in guess else ("fp" if span in guess else "fn")
            counts[kind] += 1
            per_label.setdefault(span[2], Counter())[kind] += 1

    def prf(c: Counter) -> dict[str, float]:
        p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
        return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0, 4)}

    n_tok = sum(len(t) for t in tokens)
    many = args.processes > 1
    return {"micro": prf(counts), "per_label": {k: prf(v) for k, v in sorted(per_label.items())},
            "sentences_per_s": round(len(sents) / wall, 1), "tokens_per_s": round(n_tok / wall, 1),
            f"sentences_per_s_{args.processes}_processes_x_1_thread":
            round(multi_process_speed(args, tokens, precision=precision), 1) if many else None,
            f"sentences_per_s_{args.processes}_processes_x_1_thread_warta_path":
            round(multi_process_speed(args, tokens, lean=True, precision=precision), 1) if many else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", type=Path, default=ROOT.parent / "shared/data/ner/nergrit/valid.txt")
    ap.add_argument("--model", type=Path, default=ROOT / "models/stanza/id/ner.pt")
    ap.add_argument("--pretrain", type=Path, default=ROOT / "models/stanza/id/ner_pretrain.pt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256, help="sentences per Stanza call")
    ap.add_argument("--processes", type=int, default=2, help="also measure N single-threaded processes")
    ap.add_argument("--repeat", type=int, default=5, help="passes over the split for the multi-process timing")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/ner.json")
    args = ap.parse_args(argv)

    sents = read_bio(require(args.split, "evaluate_id_ner"))
    result = {"split": str(args.split.relative_to(ROOT.parent)) if args.split.is_relative_to(ROOT.parent) else str(args.split),
              "sentences": len(sents), "threads": args.threads}
    for precision in args.precisions:
        scores = score(args, sents, precision)
        if precision == "fp32":
            result.update(scores)
        else:
            result[precision] = scores
    if "fp32" in args.precisions:
        for precision in args.precisions:
            if precision != "fp32":
                result[precision]["f1_delta"] = round(result[precision]["micro"]["f1"] - result["micro"]["f1"], 4)
    result["model_mb"] = round((args.model.stat().st_size + args.pretrain.stat().st_size) / 2**20, 1)
    print(json.dumps(result, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
