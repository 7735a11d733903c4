"""report.md of jobs.synthesize: what was asked, what came back, what failed and why, how fast."""

from __future__ import annotations


def render_markdown(report: dict) -> str:
    counts, speed = report["counts"], report["throughput"]
    lines = [f"# Synthesis: {report['run']}", "",
             f"Generator: `{report['generator']}`, seed {report['seed']}.", "",
             "| requested | of which repeat earlier seeds | generated | failed | needed a retry | requests re-sent |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {counts['requested']} | {counts['repeats_of_earlier_seeds']} | {counts['generated']} | "
             f"{counts['failed']} | {counts['retried']} | {counts['transport_retries']} of {counts['requests_sent']} |",
             "",
             "Needed a retry: candidates with a generation asked again (it came back unusable) or a request sent "
             "again. Requests re-sent: sent again after a timeout, connection error, 429, 5xx or malformed reply, of "
             "all the requests sent; the endpoint's health (the engine generator re-sends none).", ""]
    if speed["candidates_per_s"] is not None:
        lines += [f"This run generated {speed['generated_this_run']} candidates in {speed['seconds']} s "
                  f"({speed['candidates_per_s']} candidates/s).", ""]
    else:
        lines += ["Every batch was already on disk: nothing was generated this run.", ""]
    if report["failures_by_reason"]:
        lines += ["## Failures (after retries; listed in failures.jsonl)", "", "| reason | count |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(report["failures_by_reason"].items())]
    return "\n".join(lines) + "\n"
