"""Rebuild the shipped Indonesian Stanza NER model from ../shared/data, offline, with a fixed seed.

    python models/build_id_ner.py [--data ../shared/data] [--out models/stanza/id] [--max-steps 8000]

Steps (vectors and the first stage are cached in --work, so a rerun resumes). Runtime on this 2-core CPU
machine, one torch thread: 47 minutes (1 for the vectors, 12 for stage 1, 33 for stage 2); the result is
bit-identical to the shipped model.

  1. corpus   raw Indonesian text: NERGrit + NER-P tokens, UD Indonesian (CSUI, GSD) sentences, and the
              POS-tagged news corpus shipped in the PyPI package ``nlp-id``; tokenised like NERGrit, lower-cased.
  2. vectors  gensim fastText (skip-gram, 100-d), exported for every corpus word (subword vectors cover rare
              words) and converted to Stanza's ``Pretrain`` format -> ner_pretrain.pt
  3. stage 1  NERGrit train twice + NER-P train with its casing restored (``truecase``: each word's most
              frequent written form in cased Indonesian text; PPL->PER, PLC->LOC, IND->ORG, EVT/FNB -> O),
              ``python -m stanza.models.ner_tagger`` for 2,500 steps.
  4. stage 2  fine-tune that model (``--finetune``) on NERGrit train + one mention-replaced copy of it (each
              entity swapped for another training mention of its type), up to 8,000 steps; the checkpoint
              with the best NERGrit-valid F1 is kept -> ner.pt
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.shared import require  # noqa: E402
from warta.transforms.segment import TOKEN_RE  # noqa: E402

LABEL_MAP = {
    "PERSON": "PER", "PLACE": "LOC", "ORGANISATION": "ORG",  # NERGrit
    "PPL": "PER", "PLC": "LOC", "IND": "ORG",  # NER-P; EVT and FNB are not kept
}
SEED = 1234
FIRST_STAGE_STEPS = 2500  # the shipped recipe (see models/README.md)
AUGMENT = 1  # one mention-replaced copy of NERGrit in the fine-tuning stage


def read_bio(path: Path) -> list[list[tuple[str, str]]]:
    sents, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if cur:
                sents.append(cur)
            cur = []
            continue
        tok, _, tag = line.rpartition("\t")
        cur.append((tok, tag.strip()))
    if cur:
        sents.append(cur)
    return sents


def map_tag(tag: str) -> str:
    if tag == "O":
        return "O"
    prefix, _, label = tag.partition("-")
    mapped = LABEL_MAP.get(label)
    return f"{prefix}-{mapped}" if mapped else "O"


def ud_sentences(data: Path) -> list[list[str]]:
    """The sentences of UD Indonesian (CSUI, GSD), tokenised like NERGrit."""
    out = []
    for f in sorted((data / "ud").glob("*.conllu")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.startswith("# text = "):
                out.append(TOKEN_RE.findall(line[9:]))
    return out


def nlp_id_sentences() -> list[list[str]]:
    """The POS-tagged news corpus shipped in the PyPI package ``nlp-id`` (its own tokens); [] without it."""
    try:
        import nlp_id
    except ImportError:
        print("nlp-id not installed: using the shared corpora only", file=sys.stderr)
        return []
    return [[t for t, _ in s] for s in read_bio(Path(nlp_id.__file__).parent / "data" / "dataset_postag.txt")]


def corpus_sentences(data: Path) -> list[list[str]]:
    out: list[list[str]] = []
    for f in sorted((data / "ner").glob("*/*.txt")):
        out += [[t for t, _ in s] for s in read_bio(f)]
    out += ud_sentences(data) + nlp_id_sentences()
    return [[t.lower() for t in s] for s in out if s]


def build_vectors(data: Path, work: Path, dim: int) -> Path:
    pretrain = work / "ner_pretrain.pt"
    if pretrain.exists():  # resuming an interrupted rebuild
        return pretrain
    from gensim.models import FastText
    from stanza.models.common.pretrain import Pretrain

    sents = corpus_sentences(data)
    counts = Counter(t for s in sents for t in s)
    print(f"vectors: {len(sents)} sentences, {sum(counts.values())} tokens, {len(counts)} types", flush=True)
    ft = FastText(vector_size=dim, window=5, min_count=2, sg=1, epochs=10, seed=SEED, workers=1, min_n=3, max_n=5)
    ft.build_vocab(corpus_iterable=sents)
    ft.train(corpus_iterable=sents, total_examples=len(sents), epochs=ft.epochs)
    txt = work / "vectors.txt"
    words = [w for w, _ in counts.most_common() if not any(c.isspace() for c in w)]
    with txt.open("w", encoding="utf-8") as fh:
        fh.write(f"{len(words)} {dim}\n")
        for w in words:
            fh.write(w + " " + " ".join(f"{x:.5f}" for x in ft.wv[w]) + "\n")
    Pretrain(str(pretrain), str(txt), max_vocab=len(words) + 10).load()
    return pretrain


def cased_sources(data: Path) -> list[list[str]]:
    """Cased Indonesian token sequences (NERGrit train, UD, nlp-id news); never the validation split."""
    out = [[t for t, _ in s] for s in read_bio(data / "ner/nergrit/train.txt")] + ud_sentences(data)
    return out + [TOKEN_RE.findall(" ".join(s)) for s in nlp_id_sentences()]


def casing_table(sents: list[list[str]]) -> dict[str, str]:
    """lower-cased word -> its most frequent written form, not counting sentence-initial tokens."""
    forms: dict[str, Counter] = {}
    for s in sents:
        for t in s[1:]:
            forms.setdefault(t.lower(), Counter())[t] += 1
    return {k: c.most_common(1)[0][0] for k, c in forms.items()}


def truecase(sent: list[tuple[str, str]], table: dict[str, str]) -> list[tuple[str, str]]:
    """Restore the casing of a lower-cased NER-P sentence: the usual form of each word, capitalised
    inside entities when the usual form is lower-case (except short function words), and a capital
    first letter for the sentence."""
    out = []
    for i, (tok, tag) in enumerate(sent):
        form = table.get(tok, tok)
        if tag != "O" and form.islower() and len(form) > 3:
            form = form[:1].upper() + form[1:]
        if i == 0:
            form = form[:1].upper() + form[1:]
        out.append((form, tag))
    return out


def entity_spans(sent: list[tuple[str, str]]) -> list[tuple[int, int, str]]:
    """(start, end, label) of the BIO entities of a sentence (NERGrit labels)."""
    out, start = [], None
    for i, (_, tag) in enumerate([*sent, ("", "O")]):
        if start is not None and not tag.startswith("I-"):
            out.append((start, i, sent[start][1][2:]))
            start = None
        if tag.startswith("B-") or (tag.startswith("I-") and start is None):
            start = i
    return out


def mention_replaced(sents: list[list[tuple[str, str]]], copies: int, seed: int = SEED) -> list[list[tuple[str, str]]]:
    """Mention replacement (Dai & Adel, 2020): copies of the sentences in which every entity is replaced
    by another mention of the same type seen in training, so the tagger learns from the context and the
    shape of names more than from memorising them."""
    rng = random.Random(seed)
    mentions: dict[str, list[list[str]]] = {}
    for s in sents:
        for a, b, label in entity_spans(s):
            mentions.setdefault(label, []).append([t for t, _ in s[a:b]])
    out = []
    for _ in range(copies):
        for s in sents:
            spans = entity_spans(s)
            if not spans:
                continue
            new, last = [], 0
            for a, b, label in spans:
                new += s[last:a]
                words = rng.choice(mentions[label])
                new += [(w, ("B-" if k == 0 else "I-") + label) for k, w in enumerate(words)]
                last = b
            out.append(new + s[last:])
    return out


def write_json(sents: list[list[tuple[str, str]]], path: Path) -> None:
    path.write_text(json.dumps([[{"text": t, "ner": map_tag(g)} for t, g in s] for s in sents], ensure_ascii=False))


def build_data(data: Path, work: Path, nerp: str, grit_copies: int, augment: int = 0) -> tuple[Path, Path]:
    grit = read_bio(data / "ner/nergrit/train.txt")
    train = grit * grit_copies + mention_replaced(grit, augment)
    if nerp != "none":
        extra = read_bio(data / "ner/nerp/train.txt")
        if nerp == "truecased":
            table = casing_table(cased_sources(data))
            extra = [truecase(s, table) for s in extra]
        train += extra
    random.Random(SEED).shuffle(train)
    train_json, valid_json = work / "train.json", work / "valid.json"
    write_json(train, train_json)
    write_json(read_bio(data / "ner/nergrit/valid.txt"), valid_json)
    return train_json, valid_json


def train_stanza(work: Path, train_json: Path, valid_json: Path, pretrain: Path, max_steps: int, threads: int,
                 extra: list[str]) -> Path:
    """Stanza's own NER trainer on CPU; keeps the checkpoint with the best validation F1 (work/ner.pt)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [
        sys.executable, "-m", "stanza.models.ner_tagger", "--mode", "train", "--cpu",
        "--train_file", str(train_json), "--eval_file", str(valid_json),
        "--wordvec_pretrain_file", str(pretrain), "--shorthand", "id_warta",
        "--save_dir", str(work), "--save_name", "ner.pt",
        "--max_steps", str(max_steps), "--seed", str(SEED), *extra,
    ]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return work / "ner.pt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "stanza" / "id")
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "ner")
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=8000)
    ap.add_argument("--first-stage-steps", type=int, default=FIRST_STAGE_STEPS,
                    help="train first on NERGrit x2 + case-restored NER-P for this many steps, then fine-tune "
                         "on NERGrit (0: train on NERGrit only)")
    ap.add_argument("--nerp", choices=("none", "lower", "truecased"), default="none",
                    help="add NER-P to the training data, as shipped (lower-cased) or with its casing restored")
    ap.add_argument("--grit-copies", type=int, default=1, help="repeat NERGrit train this many times")
    ap.add_argument("--augment", type=int, default=AUGMENT, help="add this many mention-replaced copies of NERGrit")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is the setting the model was built with)")
    args, extra = ap.parse_known_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":  # gensim seeds each word vector with hash(word)
        os.execve(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                  dict(os.environ, PYTHONHASHSEED="0"))
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    require(args.data / "ner", "build_id_ner")
    pretrain = build_vectors(args.data, args.work, args.dim)
    print(f"vectors ready in {time.time() - t0:.0f}s", flush=True)
    if args.first_stage_steps > 0:
        stage1 = args.work / "stage1"
        stage1.mkdir(exist_ok=True)
        first = stage1 / "ner.pt"
        if not first.exists():  # resuming an interrupted rebuild
            train_json, valid_json = build_data(args.data, stage1, "truecased", 2)
            train_stanza(stage1, train_json, valid_json, pretrain, args.first_stage_steps, args.threads, [])
            print(f"first stage done in {time.time() - t0:.0f}s", flush=True)
        extra = ["--finetune", "--finetune_load_name", str(first), *extra]
    train_json, valid_json = build_data(args.data, args.work, args.nerp, args.grit_copies, args.augment)
    model = train_stanza(args.work, train_json, valid_json, pretrain, args.max_steps, args.threads, extra)
    model.replace(args.out / "ner.pt")
    shutil.copyfile(pretrain, args.out / "ner_pretrain.pt")
    print(f"done in {time.time() - t0:.0f}s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
