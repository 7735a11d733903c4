"""Diversity filter (jobs/curation/dedup.py): exact greedy semantics, and the real all-MiniLM-L6-v2 model on
hand-picked near-paraphrases (English, and Chinese from PAWS-X) against unrelated sentences."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from jobs.curation.dedup import encode, greedy_dedup, load_encoder

PAWSX_DEV = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "paraphrase" / "pawsx-zh" / "dev_2k.tsv"


def reference_greedy(vectors: np.ndarray, threshold: float) -> list[int]:
    """The definition, one candidate at a time."""
    kept: list[int] = []
    for i, v in enumerate(vectors):
        if not kept or max(float(v @ vectors[j]) for j in kept) < threshold:
            kept.append(i)
    return kept


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    # plant near-duplicates: every third row is a slightly perturbed copy of an earlier row
    for i in range(3, n, 3):
        base[i] = base[rng.integers(0, i)] + rng.normal(scale=0.3, size=dim)
    return (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_blocked_selection_equals_the_definition(block_size):
    vectors = unit_rows(120, 16, seed=0)
    result = greedy_dedup(vectors, 0.85, block_size)
    assert result.kept == reference_greedy(vectors, 0.85)
    assert sorted(result.kept + [p.index for p in result.dropped]) == list(range(120))
    for pair in result.dropped:  # each drop names its most similar kept record that came before it
        assert pair.kept_index in result.kept and pair.kept_index < pair.index
        earlier_kept = [k for k in result.kept if k < pair.index]
        assert pair.similarity == pytest.approx(max(float(vectors[pair.index] @ vectors[k]) for k in earlier_kept),
                                                abs=1e-6)


@pytest.mark.parametrize("block_size", [2, 3, 1024])
def test_a_chain_keeps_both_ends_when_the_middle_is_dropped(block_size):
    """Rows at 0°, 25° and 50°: 0~1 and 1~2 are near-duplicates (cos 25° = 0.906), 0 and 2 are not
    (cos 50° = 0.643). Row 2 conflicts only with the dropped row 1, so greedy keeps it."""
    angles = np.radians([0.0, 25.0, 50.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    result = greedy_dedup(vectors, 0.85, block_size)
    assert result.kept == [0, 2]
    assert [(p.index, p.kept_index) for p in result.dropped] == [(1, 0)]
    assert result.dropped[0].similarity == pytest.approx(np.cos(np.radians(25.0)), abs=1e-6)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dense_near_duplicate_chains_match_the_definition(seed):
    """Most rows are small steps from the previous one, so conflicts chain within and across blocks."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(scale=1.0, size=(300, 8))
    steps[::17] = rng.normal(scale=3.0, size=(len(steps[::17]), 8))  # an occasional jump to a new region
    walk = np.cumsum(steps, axis=0) + rng.normal(size=8) * 4
    vectors = (walk / np.linalg.norm(walk, axis=1, keepdims=True)).astype(np.float32)
    expected = reference_greedy(vectors, 0.97)
    assert 20 < len(expected) < 280  # the case is neither trivial nor all-dropped
    for block_size in (5, 64, 300):
        assert greedy_dedup(vectors, 0.97, block_size).kept == expected


def test_similarity_equal_to_the_threshold_is_dropped():
    vectors = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)  # cos(0, 1) = 0.6
    assert greedy_dedup(vectors, 0.6).kept == [0, 2]  # kept only if similarity < threshold
    assert greedy_dedup(vectors, 0.61).kept == [0, 1]  # row 2 vs row 1: 0.8 >= 0.61


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


def pawsx_pair(row_id: str) -> tuple[str, str]:
    with PAWSX_DEV.open(encoding="utf-8") as handle:
        row = next(r for r in csv.DictReader(handle, delimiter="\t") if r["id"] == row_id)
    assert row["label"] == "1"
    return row["sentence1"], row["sentence2"]


def test_real_embeddings_drop_paraphrases_and_keep_unrelated_records(encoder):
    zh_a, zh_b = pawsx_pair("6")  # the two names swapped inside the brackets: a paraphrase
    texts = [
        "How do I reset my password?",  # 0 kept
        "The capital of France is Paris.",  # 1 kept
        "What is the way to reset my password?",  # 2 paraphrase of 0
        "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",  # 3 kept
        "The capital of France is Paris!",  # 4 trivial edit of 1
        "How do I reset my password?",  # 5 exact duplicate of 0
        "Paris is the capital city of France.",  # 6 paraphrase of 1
        zh_a,  # 7 kept
        zh_b,  # 8 paraphrase of 7
        "我喜欢在周末踢足球。",  # 9 kept: unrelated Chinese
        "1880 年，费尔南多·海德里希在马坦萨斯将栽培法引入了古巴。",  # 10 kept: unrelated Chinese (PAWS-X 1440)
    ]
    result = greedy_dedup(encode(encoder, texts), 0.85)
    assert result.kept == [0, 1, 3, 7, 9, 10]
    assert {p.index: p.kept_index for p in result.dropped} == {2: 0, 4: 1, 5: 0, 6: 1, 8: 7}
    exact = next(p for p in result.dropped if p.index == 5)
    assert exact.similarity == pytest.approx(1.0, abs=1e-5)


def test_a_long_shared_system_prompt_does_not_make_a_source_one_record(encoder):
    """Records of one source share its persona prompt; embedded first, past the encoder's 128 word pieces it made
    every record the same vector and all but one were dropped as near-duplicates."""
    from jobs.curation.rows import embedding_text

    persona = "You are a careful, friendly assistant for a hardware shop. " * 20
    records = [{"messages": [{"role": "system", "content": persona}, {"role": "user", "content": question},
                             {"role": "assistant", "content": answer}]}
               for question, answer in [("How do I reset my password?", "Use the link on the sign-in page."),
                                        ("What is photosynthesis?", "Plants turning light into sugar."),
                                        ("Which drill bit for concrete?", "A masonry bit.")]]
    assert greedy_dedup(encode(encoder, [embedding_text(r) for r in records]), 0.85).kept == [0, 1, 2]  # was [0]
    assert all(persona.strip() not in embedding_text(r) for r in records)
