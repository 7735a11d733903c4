"""What the curation run did, for people: report.json, report.md and a response-length histogram."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from actors.algo.agreement import krippendorff_alpha
from jobs.curation.rows import embedding_text, ratings_of, record_of

PAIR_TEXT_CHARS = 160


def rule_counts(rows: list[dict], rules: list) -> dict[str, dict]:
    """Per rule: records it dropped (first dropping rule only), sent to review, and passed with a note.
    `rows` carry the gate columns: status, rules and notes (comma-joined rule names)."""
    dropped, review, noted = Counter(), Counter(), Counter()
    for row in rows:
        names = [n for n in row["rules"].split(",") if n]
        if row["status"] == "drop":
            dropped.update(names)
        elif row["status"] == "review":
            review.update(names)
        noted.update(n for n in row["notes"].split(",") if n)
    return {rule.name: {"threshold": rule.threshold(), "dropped": dropped[rule.name], "review": review[rule.name],
                        "noted": noted[rule.name], "note_meaning": rule.note_meaning}
            for rule in rules}


def source_file(row: dict) -> str:
    return row["source"].rsplit(":", 1)[0]


def annotation_report(rows: list[dict]) -> dict:
    """Krippendorff's α (interval) of the ratings, per source file in config order and over all sources
    pooled; each rated record is one unit. Every read record counts, whatever the gates decided: α describes
    the annotation, not the curated set."""
    by_source: dict[str, list[list[tuple[str | None, float]]]] = {}
    for row in sorted(rows, key=lambda row: row["seq"]):
        pairs = ratings_of(row)
        if pairs:
            by_source.setdefault(source_file(row), []).append(pairs)
    return {"metric": "interval",
            "sources": {name: _agreement(units) for name, units in by_source.items()},
            "overall": _agreement([unit for units in by_source.values() for unit in units])}


def _agreement(units: list[list[tuple[str | None, float]]]) -> dict:
    alpha = krippendorff_alpha([[rating for _, rating in unit] for unit in units])
    entry = {"records_rated": len(units),
             "annotators": len({a for unit in units for a, _ in unit if a is not None}),
             "anonymous_ratings": sum(1 for unit in units for a, _ in unit if a is None),
             "pairable_values": alpha.pairable_values,
             "alpha": None if alpha.value is None else round(alpha.value, 4)}
    return entry if alpha.value is not None else dict(entry, why=alpha.why)


def accounting_by_source(summary: list[dict], candidates: list[dict], dropped: list[int], final: list[dict],
                         spot_ids: list[str]) -> dict[str, dict]:
    """The report's accounting, per source file: how far each source's records got (jobs.funnel follows the
    synthetic candidates through it). dropped: indices into candidates the diversity filter removed."""
    table: dict[str, Counter] = {}

    def count(row: dict, key: str) -> None:
        table.setdefault(source_file(row), Counter())[key] += 1

    for row in summary:
        if row["unreadable"]:
            continue
        count(row, "input")
        status = row["status"]
        if status == "drop":
            count(row, "rejected_by_reviewer" if row["rules"] == "reviewer" else "dropped_by_rules")
        elif status in ("error", "review"):
            count(row, {"error": "malformed", "review": "review_queue"}[status])
        else:
            count(row, "passed_gates")
        if "reviewer" in row["notes"].split(","):
            count(row, "accepted_by_reviewer")
    for index in dropped:
        count(candidates[index], "dropped_by_diversity")
    spot = set(spot_ids)
    for row in final:
        count(row, "curated")
        if row["id"] in spot:
            count(row, "spot_checked")
    keys = ("input", "malformed", "dropped_by_rules", "rejected_by_reviewer", "review_queue", "passed_gates",
            "dropped_by_diversity", "curated", "spot_checked", "accepted_by_reviewer")
    return {source: {key: counts[key] for key in keys} for source, counts in table.items()}


def pair_entry(dropped_row: dict, kept_row: dict, similarity: float) -> dict:
    return {"similarity": round(similarity, 4), "dropped": _pair_side(dropped_row), "kept": _pair_side(kept_row)}


def _pair_side(row: dict) -> dict:
    text = embedding_text(record_of(row))
    return {"id": row["id"], "source": row["source"], "text": text[:PAIR_TEXT_CHARS]}


def render_markdown(report: dict) -> str:
    acc = report["accounting"]
    lines = [f"# Curation report: {report['run']}", "",
             f"{acc['input']} records in → {acc['curated']} curated "
             f"({acc['malformed']} malformed, {acc['dropped_by_rules']} dropped by rules, "
             f"{acc['review_queue']} to the review queue, {acc['dropped_by_diversity']} near-duplicates, "
             f"{acc['left_out_by_mix']} left out by the mix).", "",
             *_bad_input_lines(report["bad_input"]),
             "## Quality gates (a dropped record counts under the first rule that dropped it)", "",
             "| rule | threshold | dropped | review | noted |", "|---|---|---:|---:|---:|"]
    for name, r in report["rules"].items():
        note = f"{r['noted']} ({r['note_meaning']})" if r["noted"] else "0"
        lines.append(f"| {name} | {r['threshold']} | {r['dropped']} | {r['review']} | {note} |")
    lines += _annotation_lines(report["annotation"])
    div = report["diversity"]
    lines += ["## Diversity filter (all-MiniLM-L6-v2)", "",
              f"{div['candidates']} candidates → {div['kept']} kept, {div['dropped']} dropped "
              f"(cosine similarity ≥ {div['threshold']} to a kept record).", ""]
    for title, key in (("Closest dropped pairs", "closest_pairs"), ("Dropped pairs nearest the threshold",
                                                                      "borderline_pairs")):
        if div[key]:
            lines += [f"**{title}**", "", *pair_table(div[key]), ""]
    mix = report["mix"]
    lines += ["## Mix: achieved vs target", "", f"target size {mix['target_size']}, achieved {mix['achieved_size']}",
              "", "| category | target share | target | available | achieved | achieved share |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, c in mix["categories"].items():
        flag = " **short**" if c["short"] else ""
        lines.append(f"| {name}{flag} | {c['target_share']:.0%} | {c['target']} | {c['available']} | "
                     f"{c['achieved']} | {c['achieved_share']:.1%} |")
    if mix["short_categories"]:
        lines += ["", f"Short categories: {', '.join(mix['short_categories'])}: they contribute all they have; "
                      f"the others were not grown to fill the gap."]
    spot = report["spot_check"]
    lines += ["", "## Human review", "",
              f"- review queue: {acc['review_queue']} records (review_queue.jsonl)",
              f"- spot check: {spot['sampled']} of {acc['curated']} curated records "
              f"({spot['fraction']:.0%}, seed {spot['seed']}) in spot_check.jsonl",
              "- fill in `\"verdict\": \"accept\"` or `\"reject\"` and pass the file back as "
              "`curate.review_verdicts=...`: rejected records are dropped in the next run", "",
              "![response lengths](lengths.png)", ""]
    return "\n".join(lines)


def _annotation_lines(annotation: dict) -> list[str]:
    lines = ["", f"## Annotator agreement (Krippendorff's α, {annotation['metric']})", ""]
    if not annotation["overall"]["records_rated"]:
        return [*lines, "No record carried ratings.", ""]
    lines += ["| source | records rated | annotators | pairable values | α |", "|---|---:|---:|---:|---|"]
    rows = [*annotation["sources"].items(), ("all sources", annotation["overall"])]
    for name, a in rows:
        annotators = str(a["annotators"]) + (f" + {a['anonymous_ratings']} anonymous ratings"
                                              if a["anonymous_ratings"] else "")
        alpha = f"{a['alpha']:.3f}" if a["alpha"] is not None else f"undefined: {a['why']}"
        lines.append(f"| {_cell(name)} | {a['records_rated']} | {annotators} | {a['pairable_values']} | {alpha} |")
    return [*lines, "", "α = 1: annotators agree fully; 0: no better than chance; below 0: systematic disagreement.",
            ""]


def pair_table(pairs: list[dict]) -> list[str]:
    """A markdown table of dropped pairs (pair_entry's), most similar first as given."""
    return ["| similarity | dropped | kept |", "|---:|---|---|",
            *(f"| {p['similarity']:.3f} | {_cell(p['dropped']['text'])} | {_cell(p['kept']['text'])} |"
              for p in pairs)]


def _bad_input_lines(bad: dict) -> list[str]:
    total = bad["malformed_records"] + bad["unreadable_sources"]
    if not total:
        return []
    listed = "" if bad["listed"] == total else f" (the first {bad['listed']} listed)"
    lines = ["## Bad input (skipped, the rest of each source was curated)", "",
             f"{bad['malformed_records']} malformed records, {bad['unreadable_sources']} unreadable sources"
             f"{listed}.", "", "| where | kind | reason |", "|---|---|---|"]
    lines += [f"| {_cell(e['where'])} | {e['kind']} | {_cell(e['reason'])} |" for e in bad["entries"]]
    return [*lines, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def plot_lengths(before: list[int], after: list[int], limits: tuple[int, int], path: Path) -> None:
    """Overlaid histograms of final-reply lengths on a log axis (lengths span 0 to tens of thousands)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    top = max([*before, *after, limits[1]]) + 1
    bins = np.logspace(0, np.log10(top), 40)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist([max(n, 1) for n in before], bins=bins, histtype="step", linewidth=1.5,
            label=f"before ({len(before)})")
    ax.hist([max(n, 1) for n in after], bins=bins, histtype="stepfilled", alpha=0.5, label=f"after ({len(after)})")
    for limit in limits:
        ax.axvline(limit, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("final response length (characters)")
    ax.set_ylabel("records")
    ax.set_title("Response lengths before and after curation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
