"""Near-duplicate rule quality: precision and recall of "cosine similarity of the all-MiniLM-L6-v2 embeddings
>= threshold ⇒ duplicate" (the curation job's diversity filter, jobs/curation/dedup.py) on labelled pairs.
Not a test; prints one table (with the precision of flagging every pair, the base rate, as the baseline)
and writes bench/results/curate_dedup_quality.json, with a threshold sweep and the worst pairs of each set.

    .venv/bin/python bench/curate_dedup_quality.py [--threshold 0.85] [--pawsx 2000] [--pairs 300]

Pairs:
  PAWS-X zh (../shared/data/paraphrase/pawsx-zh/dev_2k.tsv): real human-labelled paraphrase / non-paraphrase
    sentence pairs. Its non-paraphrases are adversarial (word-swapped, high overlap), by design hard.
  English, CONSTRUCTED here (no English paraphrase set is in ../shared/data), labels by construction,
  records embedded as the job embeds them (the whole conversation, jobs.curation.rows.embedding_text):
    trivial edit (duplicate): an English SFT record (llms-from-scratch, self-instruct) against itself after
      one edit, in turn: exact copy, lower case, punctuation removed, whitespace changed, one typo (two
      letters swapped), the request wrapped in "Please help: ... Thanks!".
    reworded reply (duplicate): an llms-from-scratch record against the same request answered by the
      preference set's rewrite of its reply (../shared/data/preference/llms-from-scratch: the polite or the
      rude variant, whichever differs): same request, same answer, other words (real text, not generated here).
    same instruction (not a duplicate): two llms-from-scratch records with one instruction text and
      different inputs (e.g. "Rewrite the sentence using a simile." on two sentences): distinct examples that
      share a template, the hard negatives.
    unrelated (not a duplicate): two English SFT records with different instructions, drawn at random.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from common.records import normalise, read_records
from jobs.curation.dedup import encode, load_encoder
from jobs.curation.rows import embedding_text

DATA = Path(__file__).resolve().parent.parent / ".." / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
ENGLISH_SFT = ("sft/llms-from-scratch/instruction-data.json", "sft/self-instruct/seed_tasks.jsonl",
               "sft/self-instruct/user_oriented_instructions.jsonl")
SWEEP = (0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
EXAMPLES = 3  # lowest-similarity duplicates and highest-similarity non-duplicates kept in the JSON


def pawsx_pairs(limit: int) -> list[dict]:
    with (DATA / "paraphrase" / "pawsx-zh" / "dev_2k.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))[:limit]
    return [{"set": "PAWS-X zh", "subset": "paraphrase" if r["label"] == "1" else "non-paraphrase",
             "a": r["sentence1"], "b": r["sentence2"], "duplicate": r["label"] == "1"} for r in rows]


def _map_text(record: dict, fn) -> dict:
    return dict(record, messages=[dict(m, content=fn(m["content"])) for m in record["messages"]])


def _typo(text: str) -> str:
    words = text.split(" ")
    longest = max(range(len(words)), key=lambda i: len(words[i]))
    w = words[longest]
    if len(w) >= 4:
        words[longest] = w[0] + w[2] + w[1] + w[3:]
    return " ".join(words)


def _user_turn(record: dict, fn) -> dict:
    messages = [dict(m) for m in record["messages"]]
    messages[0]["content"] = fn(messages[0]["content"])
    return dict(record, messages=messages)


EDITS = {
    "exact copy": lambda r: r,
    "lower case": lambda r: _map_text(r, str.lower),
    "punctuation removed": lambda r: _map_text(r, lambda t: re.sub(r"[^\w\s]", "", t)),
    "whitespace changed": lambda r: _map_text(r, lambda t: t.replace(" ", "  ") + "\n"),
    "one typo": lambda r: _user_turn(r, _typo),
    "request wrapped": lambda r: _user_turn(r, lambda t: f"Please help: {t} Thanks!"),
}


def instruction_of(record: dict) -> str:
    return record["messages"][0]["content"].split("\n")[0].strip()


def english_pairs(per_subset: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    pool = [r for source in ENGLISH_SFT for r in read_records(DATA / source)]

    def pair(subset: str, a: dict, b: dict, duplicate: bool, edit: str = "") -> dict:
        return {"set": "English (constructed)", "subset": subset, "edit": edit, "a": embedding_text(a),
                "b": embedding_text(b), "duplicate": duplicate}

    pairs = []
    edit_names = list(EDITS)
    for k, record in enumerate(rng.sample(pool, per_subset)):
        edit = edit_names[k % len(edit_names)]
        pairs.append(pair("trivial edit", record, EDITS[edit](record), True, edit))

    sft_file = DATA / "sft" / "llms-from-scratch" / "instruction-data.json"
    raw = json.loads(sft_file.read_text(encoding="utf-8"))
    preference = json.loads((DATA / "preference" / "llms-from-scratch" / "instruction-data-with-preference.json")
                            .read_text(encoding="utf-8"))
    rewrites = {(p["instruction"], p["input"]): p["rejected"] if p["chosen"] == p["output"] else p["chosen"]
                for p in preference}
    records = [(row, normalise(row, f"{sft_file}:{i + 1}")[0]) for i, row in enumerate(raw)]
    reworded = [(record, _reply(record, rewrites[(row["instruction"], row["input"])]))
                for row, record in records if rewrites.get((row["instruction"], row["input"]), row["output"])
                != row["output"]]
    pairs += [pair("reworded reply", a, b, True) for a, b in rng.sample(reworded, min(per_subset, len(reworded)))]

    by_instruction = defaultdict(list)
    for row, record in records:
        by_instruction[row["instruction"]].append((row["input"], record))
    same = [(group[i][1], group[j][1]) for group in by_instruction.values() for i in range(len(group))
            for j in range(i + 1, len(group)) if group[i][0] != group[j][0]]
    pairs += [pair("same instruction", a, b, False) for a, b in rng.sample(same, min(per_subset, len(same)))]

    unrelated = 0
    while unrelated < per_subset:
        a, b = rng.sample(pool, 2)
        if instruction_of(a) != instruction_of(b):
            pairs.append(pair("unrelated", a, b, False))
            unrelated += 1
    return pairs


def _reply(record: dict, text: str) -> dict:
    return dict(record, messages=[*record["messages"][:-1], {"role": "assistant", "content": text}])


def embed_pairs(model, pairs: list[dict]) -> np.ndarray:
    """Cosine similarity per pair; each distinct text is embedded once."""
    texts = list(dict.fromkeys(t for p in pairs for t in (p["a"], p["b"])))
    index = {t: i for i, t in enumerate(texts)}
    vectors = encode(model, texts)
    return np.array([float(vectors[index[p["a"]]] @ vectors[index[p["b"]]]) for p in pairs])


def scores(sims: np.ndarray, actual: np.ndarray, threshold: float) -> dict:
    predicted = sims >= threshold
    true_pos = int((predicted & actual).sum())
    precision = true_pos / max(int(predicted.sum()), 1)
    recall = true_pos / max(int(actual.sum()), 1)
    return {"threshold": threshold, "flagged": int(predicted.sum()), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12)}


def summarise(pairs: list[dict], sims: np.ndarray, threshold: float) -> dict:
    actual = np.array([p["duplicate"] for p in pairs])
    out = {"pairs": len(pairs), "duplicates": int(actual.sum()), "base_rate_precision": float(actual.mean()),
           **scores(sims, actual, threshold), "sweep": [scores(sims, actual, t) for t in SWEEP], "subsets": {}}
    for subset in dict.fromkeys(p["subset"] for p in pairs):
        idx = [i for i, p in enumerate(pairs) if p["subset"] == subset]
        s = sims[idx]
        duplicate = pairs[idx[0]]["duplicate"]
        order = np.argsort(s if duplicate else -s)[:EXAMPLES]  # the pairs the rule gets most wrong
        out["subsets"][subset] = {
            "pairs": len(idx), "duplicate": duplicate, "flagged_share": float((s >= threshold).mean()),
            "similarity": {"min": float(s.min()), "median": float(np.median(s)), "max": float(s.max())},
            "hardest": [{"similarity": round(float(s[k]), 4), "edit": pairs[idx[k]].get("edit", ""),
                         "a": pairs[idx[k]]["a"][:200], "b": pairs[idx[k]]["b"][:200]} for k in order]}
        if subset == "trivial edit":
            by_edit = {e: np.array([sims[i] for i in idx if pairs[i]["edit"] == e]) for e in EDITS}
            out["subsets"][subset]["by_edit"] = {e: {"pairs": len(s), "flagged_share": float((s >= threshold).mean()),
                                                     "min_similarity": float(s.min())} for e, s in by_edit.items()}
    return out


def table(results: dict, threshold: float) -> str:
    lines = [f"{'set / subset':36s} | pairs | dup. | flagged ≥{threshold:.2f} | {'similarity min / median / max':29s} | "
             f"precision | recall | base rate",
             f"{'-' * 37}|-------|------|---------------|{'-' * 31}|-----------|--------|----------"]
    for name, s in results["sets"].items():
        lines.append(f"{name:36s} | {s['pairs']:5d} | {s['duplicates']:4d} | {s['flagged']:13d} | {'':29s} | "
                     f"{s['precision']:9.3f} | {s['recall']:6.3f} | {s['base_rate_precision']:9.3f}")
        for subset, sub in s["subsets"].items():
            sim = sub["similarity"]
            lines.append(f"  {subset + (' (dup)' if sub['duplicate'] else ' (not dup)'):34s} | {sub['pairs']:5d} | "
                         f"{sub['pairs'] if sub['duplicate'] else 0:4d} | {sub['flagged_share']:13.1%} | "
                         f"{sim['min']:11.3f} / {sim['median']:6.3f} / {sim['max']:6.3f} | {'':9s} | {'':6s} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=0.85, help="similarity at or above which a pair counts "
                                                                      "as a duplicate (curate.max_similarity)")
    parser.add_argument("--pawsx", type=int, default=2000, help="PAWS-X zh dev pairs to score (0: skip; 2000: all)")
    parser.add_argument("--pairs", type=int, default=300, help="constructed English pairs per subset (0: skip)")
    parser.add_argument("--max-tokens", type=int, default=128, help="word pieces the encoder reads per text "
                                                                    "(curate.embed_max_tokens)")
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing the English pairs")
    args = parser.parse_args()

    results: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_cores": os.cpu_count(),
                     "machine": platform.platform(), "args": vars(args), "sets": {}}
    started = time.perf_counter()
    model = load_encoder(args.max_tokens)
    for name, pairs in (("PAWS-X zh (dev, human labels)", pawsx_pairs(args.pawsx) if args.pawsx else []),
                        ("English (constructed here)", english_pairs(args.pairs, args.seed) if args.pairs else [])):
        if pairs:
            results["sets"][name] = summarise(pairs, embed_pairs(model, pairs), args.threshold)
            print(f"  {name}: {len(pairs)} pairs scored", flush=True)
    results["seconds"] = time.perf_counter() - started
    print(table(results, args.threshold))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "curate_dedup_quality.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
