"""jobs.synthesize's wiring: check the generator before Ray starts, generate the missing batches on Ray Data,
write each finished batch as it lands, then gather the batches into candidates.jsonl, failures.jsonl and a report.

Batches are the unit of resume: <run>/synthesize-shards/<fingerprint>/batch-NNNNN.jsonl, each written whole
(temp file, then rename) by the driver as soon as all its candidates are back. A re-run of the same settings
generates only the batches that have no file; other settings get a folder of their own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from common.config import Config, resolve_path
from common.configlib import to_dict
from common.errors import ConfigError, EmptyDatasetError, EndpointError
from jobs.curation.pipeline import quiet_ray_data
from jobs.synthesis.prompts import Candidate, candidates, load_seed_tasks, to_record

log = logging.getLogger("rayalign.synthesize")

# Settings that change how fast candidates come, not what they are: a re-run with other values reuses the shards.
THROUGHPUT_ONLY = ("engines", "concurrency", "http_workers", "timeout_s", "backoff_s", "token_env", "token_file")
HTTP_CPUS = 0.25  # an HTTP actor mostly waits on the network
PREFLIGHT_TIMEOUT_S = 30.0  # the check before generating waits this long whatever synth.timeout_s says


@dataclass(frozen=True)
class SynthResult:
    output_dir: Path
    candidates_file: Path
    report: dict


@dataclass(frozen=True)
class Generator:
    name: str  # provenance: what generated the candidates
    spec: dict  # GenerateCandidates' `generator` argument


def run(cfg: Config) -> SynthResult:
    """Generate cfg.synth.count (+ repeat_seeds) candidates into <run>/synthesize/ (uses or starts Ray)."""
    from cluster import runtime

    syn = cfg.synth
    seed = cfg.run.seed if syn.seed is None else syn.seed
    seed_tasks = load_seed_tasks(resolve_path(syn.seed_tasks))
    generator = prepare_generator(cfg)  # a bad model, endpoint or token fails here, before Ray starts
    shards = Shards(cfg.run.run_dir() / "synthesize-shards" / fingerprint(cfg, generator, seed))
    wanted = candidates(syn)
    done = shards.done()
    todo = [c for c in wanted if c.index // syn.batch_size not in done]
    seconds, warm = 0.0, None
    if todo:
        log.info("generating %d candidates in %d batches with %s (%d batches already on disk; one where a "
                 "request failed is generated again)", len(todo), len({c.index // syn.batch_size for c in todo}),
                 generator.name, len(done))
        runtime.start(cfg.ray)
        quiet_ray_data()
        clock = time.perf_counter()  # generation alone (the engines' start-up included), not Ray's start
        first_batch = generate(cfg, todo, seed, seed_tasks, generator, shards)
        seconds = time.perf_counter() - clock
        warm = _warm_rate(first_batch, len(todo), seconds)
    else:
        log.info("all %d candidates already generated in %s", len(wanted), shards.folder)
    rows = shards.read()
    report = build_report(cfg, generator, seed, rows, len(todo), seconds, warm)
    output_dir = cfg.run.output_dir("synthesize")
    candidates_file = write_outputs(output_dir, [to_record(r, generator.name, syn, seed) for r in rows
                                                 if not r["error"]], rows, report)
    return SynthResult(output_dir, candidates_file, report)


def prepare_generator(cfg: Config) -> Generator:
    syn = cfg.synth
    if syn.generator == "engine":
        return _engine_generator(cfg)
    return _http_generator(cfg)


def _engine_generator(cfg: Config) -> Generator:
    from common.model_dir import check_model_dir, context_length

    syn = cfg.synth
    model_path = str(check_model_dir(syn.model or cfg.model.path, what="synth.model" if syn.model else "model.path"))
    max_model_len = syn.max_prompt_tokens + max(syn.max_task_tokens, syn.max_response_tokens)
    context = context_length(model_path)
    if context is not None and max_model_len > context:
        raise ConfigError(f"synth.max_prompt_tokens + the longer of synth.max_task_tokens/max_response_tokens = "
                          f"{max_model_len} exceeds the model's context of {context} tokens ({model_path})")
    from actors.rollout.engines import rollout_engine_class

    # Chosen once, here (ppo.rollout.engine: vllm, hf or auto, with the named fallback), and handed to every actor.
    engine = rollout_engine_class(cfg.ppo.rollout, model_path).engine
    return Generator(f"{engine}-engine:{Path(model_path).name}",
                     {"kind": "engine", "engine": engine, "model_path": model_path, "max_model_len": max_model_len})


def _http_generator(cfg: Config) -> Generator:
    """Asks the endpoint for its models and one token of a completion, with the configured token: an endpoint
    that is down, or refuses the token, fails the job here in one line rather than every candidate later."""
    import openai

    from common.auth import resolve_token

    syn = cfg.synth
    token = resolve_token(syn.token_env, syn.token_file, setting="synth.token_file")
    client = openai.OpenAI(base_url=syn.endpoint, api_key=token or "unused", timeout=PREFLIGHT_TIMEOUT_S,
                           max_retries=1)
    try:
        served = [m.id for m in client.models.list()]
        model = syn.endpoint_model or (served[0] if served else None)
        if model is None or model not in served:
            raise EndpointError(f"synth.endpoint {syn.endpoint} serves {served}, not synth.endpoint_model={model!r}")
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    except openai.AuthenticationError as exc:
        raise EndpointError(f"synth.endpoint {syn.endpoint} refused the API key (HTTP {exc.status_code}); set "
                            f"synth.token_file or ${syn.token_env}") from None
    except openai.APIConnectionError as exc:
        raise EndpointError(f"synth.endpoint {syn.endpoint} cannot be reached: {exc.__cause__ or exc}") from None
    except openai.APIStatusError as exc:
        raise EndpointError(f"synth.endpoint {syn.endpoint} answered HTTP {exc.status_code} to a test request: "
                            f"{exc.message}") from None
    return Generator(f"openai-compatible:{syn.endpoint}#{model}",
                     {"kind": "http", "model": model, "token": token})


def fingerprint(cfg: Config, generator: Generator, seed: int) -> str:
    settings = {k: v for k, v in to_dict(cfg.synth).items() if k not in THROUGHPUT_ONLY}
    # The engine's whole model path, not the name's last part: two models in .../hf folders must not share shards.
    data = {"synth": settings, "generator": generator.name, "model_path": generator.spec.get("model_path"),
            "seed": seed}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Shards:
    """Finished batches on disk, each one JSONL file written whole."""

    def __init__(self, folder: Path):
        self.folder = folder

    def done(self) -> set[int]:
        """Batches on disk, except those where a request failed (an endpoint down for a while): those are generated
        again when the command runs again. An unusable generation is not a reason: the same seeds give it again."""
        return {int(path.stem.split("-")[1]) for path in self.folder.glob("batch-*.jsonl")
                if not any(request_failed(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()
                           if line.strip())}

    def write(self, batch: int, rows: list[dict]) -> None:
        from jobs.make_task import write_jsonl

        write_jsonl(sorted(rows, key=lambda r: r["index"]), self.folder / f"batch-{batch:05d}.jsonl")

    def read(self) -> list[dict]:
        rows = [json.loads(line) for path in sorted(self.folder.glob("batch-*.jsonl"))
                for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return sorted(rows, key=lambda r: r["index"])


def request_failed(row: dict) -> bool:
    """Whether a candidate failed for want of an answer (timeouts, HTTP errors), not for what came back."""
    return bool(row["error"]) and "unusable generation" not in row["error"]


def generate(cfg: Config, todo: list[Candidate], seed: int, seed_tasks: list, generator: Generator,
             shards: Shards) -> tuple[float, int]:
    """Ray Data: candidate numbers → GenerateCandidates on an actor pool; the driver writes each batch once all of
    its candidates are back. Returns (seconds, candidates back) when the first batch was written: the pool's start-up
    is over by then."""
    import ray
    from tqdm import tqdm

    from jobs.synthesis.generators import OUTPUT_COLUMNS, GenerateCandidates

    syn = cfg.synth
    size = syn.batch_size
    items = [{"index": c.index, "seed_index": c.seed_index, "batch": c.index // size} for c in todo]
    expected = Counter(item["batch"] for item in items)
    engine = generator.spec["kind"] == "engine"
    ds = ray.data.from_items(items, override_num_blocks=len(expected)).map_batches(
        GenerateCandidates, fn_constructor_kwargs={"cfg": syn, "seed": seed, "seed_tasks": seed_tasks,
                                                   "generator": generator.spec},
        batch_size=size, num_cpus=syn.engine_cpus if engine else HTTP_CPUS,
        compute=ray.data.ActorPoolStrategy(size=syn.engines if engine else syn.http_workers))
    gathered: dict[int, list[dict]] = defaultdict(list)
    columns = ("index", "seed_index", *OUTPUT_COLUMNS)
    started, first_batch, back = time.perf_counter(), None, 0
    with tqdm(total=len(items), desc="synthesize", unit="cand", mininterval=1.0) as bar:
        for row in ds.iter_rows():
            batch = int(row["batch"])
            gathered[batch].append({c: _plain(row[c]) for c in columns})
            back += 1
            bar.update(1)
            if len(gathered[batch]) == expected[batch]:
                shards.write(batch, gathered.pop(batch))
                first_batch = first_batch or (time.perf_counter() - started, back)
    return first_batch


def _warm_rate(first_batch: tuple[float, int], total: int, seconds: float) -> float | None:
    """Candidates/s once the first batch is in (the engines are up): the rate a longer run approaches."""
    at, back = first_batch
    return round((total - back) / (seconds - at), 3) if total > back and seconds > at else None


def _plain(value):
    """numpy scalars from Arrow → JSON-ready Python values."""
    return value.item() if hasattr(value, "item") else value


def build_report(cfg: Config, generator: Generator, seed: int, rows: list[dict], generated_now: int,
                 seconds: float, warm_rate: float | None = None) -> dict:
    syn = cfg.synth
    failed = [r for r in rows if r["error"]]
    reasons = Counter(r["error"].split(":", 1)[0] + ": " + _reason_kind(r["error"]) for r in failed)
    resent = [r.get("transport_retries", 0) for r in rows]  # 0 in shards written before the count was kept
    retried = sum(1 for r, n in zip(rows, resent) if r["task_tries"] > 1 or r["answer_tries"] > 1 or n)
    return {
        "run": cfg.run.name, "generator": generator.name, "seed": seed,
        "counts": {"requested": syn.count + syn.repeat_seeds, "repeats_of_earlier_seeds": syn.repeat_seeds,
                   "generated": len(rows) - len(failed), "failed": len(failed), "retried": retried,
                   "requests_sent": sum(r["task_tries"] + r["answer_tries"] for r in rows) + sum(resent),
                   "transport_retries": sum(resent)},
        "failures_by_reason": dict(reasons),
        "failures": [{"candidate": r["index"], "error": r["error"]} for r in failed[:100]],
        "throughput": {"generated_this_run": generated_now, "seconds": round(seconds, 2),
                       "candidates_per_s": round(generated_now / seconds, 3) if generated_now and seconds else None,
                       "after_first_batch_per_s": warm_rate},
        "config": to_dict(syn),
    }


def _reason_kind(error: str) -> str:
    detail = error.split(":", 1)[1].strip() if ":" in error else error
    return detail.split(" ", 1)[0] if detail.startswith("unusable") else detail.split(":", 1)[0]


def write_outputs(output_dir: Path, records: list[dict], rows: list[dict], report: dict) -> Path:
    """Each file whole or not at all; candidates.jsonl last, so its presence means the set is complete."""
    from jobs.make_task import write_jsonl
    from jobs.ppo_report import write_atomic
    from jobs.synthesis.report import render_markdown

    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl([{"candidate": r["index"], "error": r["error"], "task": r["task"], "answer": r["answer"]}
                 for r in rows if r["error"]], output_dir / "failures.jsonl")
    write_atomic(output_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    write_atomic(output_dir / "report.md", render_markdown(report))
    candidates_file = output_dir / "candidates.jsonl"
    if not records:  # the failures are listed; no candidates file says the set is not there
        candidates_file.unlink(missing_ok=True)
        first = report["failures"][:3]
        raise EmptyDatasetError(f"no candidate was generated: {report['counts']['failed']} failed after retries "
                                f"(listed in {output_dir / 'failures.jsonl'}), e.g. "
                                f"{'; '.join(str(f['candidate']) + ': ' + f['error'] for f in first)}")
    return write_jsonl(records, candidates_file)
