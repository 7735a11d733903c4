"""jobs.synthesize without a model: candidates and their seeds, the prompts, the garbage retries, resumable
shards, the funnel's arithmetic, and the refusals that come before any generation."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from common.config import SynthConfig, load_config
from common.errors import ConfigError, RecordError
from common.paths import REPO_ROOT
from jobs.synthesis.funnel import check_funnel, funnel_stages
from jobs.synthesis.generators import OUTPUT_COLUMNS, GenerateCandidates, Reply, complete_stage
from jobs.synthesis.prompts import (SeedTask, candidates, examples_for, load_seed_tasks, task_messages,
                                    to_record)
from jobs.synthesis.report import render_markdown
from jobs.synthesis.run import Generator, Shards, build_report

SEEDS = REPO_ROOT.parent / "shared/data/sft/self-instruct/seed_tasks.jsonl"


def test_repeats_reuse_the_first_candidates_seeds():
    plan = candidates(SynthConfig(count=5, repeat_seeds=2))
    assert [(c.index, c.seed_index) for c in plan] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 0), (6, 1)]


def test_seed_tasks_are_the_first_user_turns_with_their_ids():
    tasks = load_seed_tasks(SEEDS)
    first = json.loads(SEEDS.read_text().splitlines()[0])
    assert len(tasks) == 175 and tasks[0] == SeedTask("seed_task_0", first["instruction"])


def test_a_seed_file_without_tasks_is_refused(tmp_path):
    empty = tmp_path / "seeds.jsonl"
    empty.write_text('{"prompt": "", "response": "x"}\n')
    with pytest.raises(RecordError, match="seeds.jsonl"):
        load_seed_tasks(empty)


def test_examples_depend_on_the_seed_index_only():
    tasks = [SeedTask(str(i), f"task {i}") for i in range(20)]
    assert examples_for(tasks, 3, 42, 7) == examples_for(tasks, 3, 42, 7)
    assert examples_for(tasks, 3, 42, 7) != examples_for(tasks, 3, 42, 8)
    assert len({e.id for e in examples_for(tasks, 3, 42, 7)}) == 3
    assert examples_for(tasks[:2], 3, 42, 0) and len(examples_for(tasks[:2], 3, 42, 0)) == 2


def test_the_template_numbers_the_examples_on_one_line_each_cut_to_length():
    [message] = task_messages("Tasks:\n{examples}\nNew:", [SeedTask("a", "Say\nhi"), SeedTask("b", "Count to ten")],
                              max_chars=8)
    assert message == {"role": "user", "content": "Tasks:\n1. Say hi\n2. Count to…\nNew:"}


def test_unusable_generations_are_retried_from_a_fresh_draw_then_reported():
    """complete_stage's contract: every try of a conversation uses draw + try; a usable text ends its tries, and a
    failed request is final (the HTTP generator retried it already: asking again squared the requests)."""
    calls = []

    def complete(conversations, seed_indices, draw, max_tokens):
        calls.append((list(seed_indices), draw))
        # per seed index, what each try returns: 0 is usable on its second try, 1 never, 2 at once; 3's first
        # request fails outright (None) after two transport retries, and is not asked again; every request of 0
        # needed one transport retry
        table = {0: ["  ", "fine"], 1: ["", "", ""], 2: ["good"], 3: [None, "ok now"]}
        texts = [(s, table[s][min(draw - 10, len(table[s]) - 1)]) for s in seed_indices]
        return [Reply(None, "HTTP 503", 2) if text is None else Reply(text, "", int(s == 0)) for s, text in texts]

    results = complete_stage([[{}]] * 4, [0, 1, 2, 3], complete, draw=10, max_tokens=8, retries=2, min_chars=2)
    assert calls == [([0, 1, 2, 3], 10), ([0, 1], 11), ([1], 12)]
    assert [(r.text, r.tries) for r in results] == [("fine", 2), (None, 3), ("good", 1), (None, 1)]
    assert [r.transport_retries for r in results] == [2, 0, 0, 2]  # summed over a candidate's tries
    assert results[3].error == "HTTP 503"
    assert "unusable generation ''" in results[1].error and not results[0].error


@pytest.fixture
def endpoint_down_for_one_request():
    """A real OpenAI-compatible chat endpoint on loopback whose first request gets 503 (a replica restarting, say)
    and every later one an answer; yields its base URL and the paths of the requests it received."""
    received = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.path)
            if len(received) == 1:
                self._send(503, {"error": {"message": "warming up", "type": "unavailable"}})
                return
            self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Name a river."}}]})

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_sent_again_after_a_503_is_a_retry_and_a_transport_retry_in_the_report(
        endpoint_down_for_one_request):
    """The candidate's task and answer each took one generation, but the task's request went out twice: the report
    counts the candidate as retried, and the re-sent request apart, where an endpoint's health shows."""
    url, received = endpoint_down_for_one_request
    cfg = load_config(None, ["synth.generator=http", f"synth.endpoint={url}", "synth.backoff_s=0", "synth.count=1"])
    generate = GenerateCandidates(cfg.synth, 42, [SeedTask("s", "Name a fruit.")], {"kind": "http", "model": "m",
                                                                                      "token": None})
    batch = generate({"index": np.array([0]), "seed_index": np.array([0])})
    row = {column: batch[column][0] for column in ("index", "seed_index", *OUTPUT_COLUMNS)}
    assert received == ["/v1/chat/completions"] * 3  # the task twice (503, then an answer), the answer once
    assert (row["error"], row["task_tries"], row["answer_tries"], row["transport_retries"]) == ("", 1, 1, 1)
    report = build_report(cfg, Generator("openai-compatible", {"kind": "http"}), 42, [row], 1, 1.0)
    assert report["counts"] == {"requested": 1, "repeats_of_earlier_seeds": 0, "generated": 1, "failed": 0,
                                "retried": 1, "requests_sent": 3, "transport_retries": 1}
    assert "| 1 | 0 | 1 | 0 | 1 | 1 of 3 |" in render_markdown(report)


def test_a_record_says_where_it_came_from():
    cfg = SynthConfig()
    row = {"index": 9, "seed_index": 1, "task": " Name a fruit. ", "answer": "An apple.\n", "task_tries": 1,
           "answer_tries": 2, "error": "", "seed_tasks": json.dumps(["seed_task_3"])}
    record = to_record(row, "vllm-engine:m", cfg, 42)
    assert record["messages"] == [{"role": "user", "content": "Name a fruit."},
                                  {"role": "assistant", "content": "An apple."}]
    assert record["provenance"] == {"generator": "vllm-engine:m", "template": record["provenance"]["template"],
                                    "seed": 42, "seed_index": 1, "candidate": 9, "seed_tasks": ["seed_task_3"],
                                    "tries": {"task": 1, "answer": 2}}
    assert len(record["provenance"]["template"]) == 12


def test_shards_are_whole_files_listed_by_batch(tmp_path):
    shards = Shards(tmp_path / "s")
    shards.write(3, [{"index": 7, "error": ""}, {"index": 6, "error": ""}])
    shards.write(0, [{"index": 1, "error": ""}])
    shards.write(1, [{"index": 2, "error": ""}, {"index": 3, "error": "task: APITimeoutError (after 4 tries)"}])
    shards.write(2, [{"index": 4, "error": "answer: unusable generation '' (shorter than synth.min_chars=2)"}])
    # A failed request is asked again by the same command; an unusable generation would come back the same.
    assert shards.done() == {0, 2, 3} and [r["index"] for r in shards.read()] == [1, 2, 3, 4, 6, 7]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [f"batch-0000{i}.jsonl" for i in range(4)]


@pytest.mark.parametrize("overrides, message", [
    (["synth.generator=http"], "synth.endpoint must be set when generator=http"),
    (["synth.count=2", "synth.repeat_seeds=3"], "synth.repeat_seeds (3) must not exceed count (2)"),
    (["synth.template=Use {these}"], "synth.template must use only the {examples} placeholder"),
])
def test_bad_synth_settings_are_refused_on_load(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


SYNTH = {"counts": {"requested": 10, "repeats_of_earlier_seeds": 2, "generated": 9, "failed": 1}}
CURATE = {"accounting_by_source": {"/c.jsonl": {"input": 9, "malformed": 0, "dropped_by_rules": 1,
                                                "rejected_by_reviewer": 1, "review_queue": 1, "passed_gates": 6,
                                                "dropped_by_diversity": 2, "curated": 3, "spot_checked": 1,
                                                "accepted_by_reviewer": 1}},
          "diversity": {"threshold": 0.85, "closest_pairs": []}, "spot_check": {"fraction": 0.3}}


def test_the_funnel_follows_the_candidates_file():
    stages = funnel_stages(SYNTH, CURATE, "/c.jsonl")
    assert [(s["stage"], s["count"]) for s in stages] == [
        ("requested", 10), ("generated", 9), ("passed the quality gates", 6), ("diverse", 4),
        ("curated (in the mix)", 3), ("spot-check sample", 1), ("accepted", 3)]
    assert "1 left out by the mix" in stages[4]["note"] and "1 rejected" in stages[6]["note"]
    assert check_funnel(SYNTH, CURATE, "/c.jsonl") == []


def test_a_funnel_that_loses_records_says_where():
    broken = {"accounting_by_source": {"/c.jsonl": dict(CURATE["accounting_by_source"]["/c.jsonl"], input=8)}}
    assert check_funnel(SYNTH, broken, "/c.jsonl") == [
        "generated = read by curation: 9 != 8", "input = malformed + dropped + rejected + review + passed: 8 != 9"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("overrides, line", [
    (["synth.seed_tasks=/nonexistent/seeds.jsonl"], "/nonexistent/seeds.jsonl: no such data file or folder"),
    (["synth.model=/nonexistent/model"], "synth.model"),
    (["synth.max_prompt_tokens=500"], "exceeds the model's context of 512 tokens"),
    (["synth.generator=http", f"synth.endpoint=http://127.0.0.1:{_closed_port()}/v1"], "cannot be reached"),
    (["synth.category=poetry"], "synth.category 'poetry' is not a category of curate.mix"),
])
def test_bad_input_is_one_line_and_exit_2_before_ray_starts(tmp_path, overrides, line):
    job = "jobs.funnel" if "category" in overrides[0] else "jobs.synthesize"
    done = subprocess.run([sys.executable, "-m", job, f"run.output_root={tmp_path}", *overrides],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert line in done.stderr.strip().splitlines()[-1] and "Ray embedded" not in done.stderr
