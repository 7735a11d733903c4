"""SFT data curation (SPEC §1): pure record-level pieces, unit-tested without Ray.

rows      records ↔ the flat rows the Ray Data pipeline carries, content ids, texts to screen and embed
rules     the quality gates as a registry of named rules, each with its threshold from CurateConfig
facts     claim extraction and the pluggable FactVerifier with a local knowledge-base verifier
dedup     sentence embeddings (all-MiniLM-L6-v2) and the greedy blocked-matrix diversity filter
mixing    sampling to the category ratio with a size target; short categories are reported
review    the seeded spot-check sample and reviewers' verdicts fed back into the next run
report    report.json / report.md / the response-length histogram
pipeline  the Ray Data wiring and the atomic writing of outputs (jobs/curate.py is its entry point)
"""
