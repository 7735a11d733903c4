"""The seed's funnel, counted: requested → generated → passed the gates → diverse → curated → spot-checked, with
reviewers' verdicts, from jobs.synthesize's report and jobs.curate's per-source accounting of the candidates file.
Pure: tables and a plot from two reports."""

from __future__ import annotations

from pathlib import Path

from common.durable import publish

from jobs.curation.report import pair_table


def funnel_stages(synth: dict, curate: dict, candidates_file: str) -> list[dict]:
    """One {stage, count, note} per step of the funnel, for the candidates file only (other curation sources
    share the mix but not the funnel). Every count follows from the previous one; `check_funnel` proves it."""
    counts = synth["counts"]
    src = curate["accounting_by_source"].get(str(candidates_file), {})
    diverse = src.get("passed_gates", 0) - src.get("dropped_by_diversity", 0)
    return [
        {"stage": "requested", "count": counts["requested"], "note": f"{counts['repeats_of_earlier_seeds']} repeat "
                                                                     f"earlier seeds on purpose"},
        {"stage": "generated", "count": counts["generated"], "note": f"{counts['failed']} failed after retries"},
        {"stage": "passed the quality gates", "count": src.get("passed_gates", 0),
         "note": f"{src.get('dropped_by_rules', 0)} dropped, {src.get('review_queue', 0)} to the review queue, "
                 f"{src.get('rejected_by_reviewer', 0)} rejected by reviewers, {src.get('malformed', 0)} malformed"},
        {"stage": "diverse", "count": diverse, "note": f"{src.get('dropped_by_diversity', 0)} near-duplicates "
                                                        f"(cosine ≥ {curate['diversity']['threshold']})"},
        {"stage": "curated (in the mix)", "count": src.get("curated", 0),
         "note": f"{diverse - src.get('curated', 0)} left out by the mix"},
        {"stage": "spot-check sample", "count": src.get("spot_checked", 0),
         "note": f"{curate['spot_check']['fraction']:.0%} of the curated set, in spot_check.jsonl"},
        {"stage": "accepted", "count": src.get("curated", 0),
         "note": f"{src.get('accepted_by_reviewer', 0)} accepted and {src.get('rejected_by_reviewer', 0)} rejected "
                 f"by reviewers so far (curate.review_verdicts)"},
    ]


def check_funnel(synth: dict, curate: dict, candidates_file: str) -> list[str]:
    """The identities the funnel must satisfy; each broken one as a line (empty: the counts add up)."""
    counts = synth["counts"]
    src = curate["accounting_by_source"].get(str(candidates_file), {})
    problems = []

    def expect(name: str, left: int, right: int) -> None:
        if left != right:
            problems.append(f"{name}: {left} != {right}")

    expect("requested = generated + failed", counts["requested"], counts["generated"] + counts["failed"])
    expect("generated = read by curation", counts["generated"], src.get("input", 0))
    expect("input = malformed + dropped + rejected + review + passed", src.get("input", 0),
           sum(src.get(k, 0) for k in ("malformed", "dropped_by_rules", "rejected_by_reviewer", "review_queue",
                                       "passed_gates")))
    if src.get("curated", 0) > src.get("passed_gates", 0) - src.get("dropped_by_diversity", 0):
        problems.append("curated exceeds the diverse records")
    return problems


def render_markdown(run: str, stages: list[dict], curate: dict, problems: list[str]) -> str:
    lines = [f"# Synthetic-data funnel: {run}", "", "| stage | records | share of requested | |", "|---|---:|---:|---|"]
    top = stages[0]["count"] or 1
    lines += [f"| {s['stage']} | {s['count']} | {s['count'] / top:.1%} | {s['note']} |" for s in stages]
    lines += ["", "The counts add up." if not problems else "**The counts do not add up:** " + "; ".join(problems),
              "", "![funnel](funnel.png)", "", "## Closest dropped pairs", "",
              *pair_table(curate["diversity"]["closest_pairs"])]
    mix = curate["mix"]
    lines += ["", "## Achieved mix", "", "| category | target share | achieved | achieved share |",
              "|---|---:|---:|---:|"]
    lines += [f"| {name} | {c['target_share']:.0%} | {c['achieved']} | {c['achieved_share']:.1%} |"
              for name, c in mix["categories"].items()]
    return "\n".join(lines) + "\n"


def plot_funnel(stages: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["stage"] for s in stages][::-1]
    counts = [s["count"] for s in stages][::-1]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.barh(names, counts, color="#4c72b0")
    ax.bar_label(bars, labels=[str(c) for c in counts], padding=3)
    ax.set_xlabel("records")
    ax.set_title("synthetic-data funnel")
    ax.set_xlim(0, max(counts + [1]) * 1.15)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    publish(tmp, path)
