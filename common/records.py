"""Read chat and preference data in the formats people actually have, normalised to one record schema.

A record is a plain dict:
    messages : [{"role": "system"|"user"|"assistant", "content": str}, ...]   the conversation (SFT) or,
               for preference data, the prompt turns that precede the compared reply
    chosen, rejected : str            preference data only: the better / worse assistant reply
    ratings  : [float]                optional human ratings (annotator gate), from a list of numbers (anonymous
                                      annotators), a list of {"annotator": id, "rating": number} or an
                                      {id: number} object, under `ratings` or `annotator_ratings`
    annotators : [str]                the ids of whoever gave `ratings`, in the same order; only when the row
                                      names them (a row may also give them as this parallel list)
    category : str                    optional mixing category (set by curation sources)
    columns  : {field: value}         the row's fields no format reads (e.g. a reference answer), when it has
                                      any: what plug-in reward functions receive beside the prompt
    source   : "file:line"            where the record came from, for error messages and review queues

Formats recognised per row: instruction/input/output (Alpaca, with optional chosen/rejected), self-instruct
(instruction + instances), `messages` (OpenAI), `conversations` (ShareGPT from/value, with optional
chosen/rejected turns), KdConv (`messages` of {"message": ...}, alternating user/assistant),
HH-RLHF transcripts ("\n\nHuman: ... \n\nAssistant: ..."), and prompt/response, prompt/chosen/rejected or a
prompt alone (a record to answer: PPO prompts).
Files: .jsonl, .json (a list, or a mapping holding one), .parquet, a `datasets.save_to_disk` folder, a folder
of such files, or a jobs.curate output folder (its curated file only).

Reading is strict by default (training jobs stop at the first bad row, naming file:line), except for a preference
row whose two replies answer different conversations (NotAPair): it is skipped, and a warning gives the count and
each file:line. Curation reads leniently, passing each RecordError to a callback and going on with the rest.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from common.errors import NotAPair, RecordError, SourceError
from common.paths import resolve_path

ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "system": "system",
}
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
NOT_A_PAIR = ("chosen and rejected transcripts differ before their last Assistant reply: the replies answer "
              "different conversations, so they are not a preference pair")
# A jobs.curate output folder holds report.json beside the curated set, written both as JSONL and Parquet
# (the same records): read one of them, never the report, review queue or spot-check sample beside it.
CURATE_MARKER = "report.json"
CURATED_FILES = ("curated.jsonl", "curated.parquet")
# Parquet metadata naming the columns written as JSON text (write_parquet): values Arrow cannot hold in one type
JSON_COLUMNS_KEY = b"rayalign.json_columns"
# How many skipped rows a warning names by file:line; the count covers them all.
NAMED_SKIPS = 10

log = logging.getLogger("rayalign.records")


OnError = Callable[[RecordError], None]


def _strict_but_skipping_pairless(skipped: list[str]) -> OnError:
    """Raise a bad row's RecordError, but only note where a NotAPair row was: a public preference set holds a few,
    and a run the rest of the file can feed should not stop for them."""
    def report(error: RecordError) -> None:
        if not isinstance(error, NotAPair):
            raise error
        skipped.append(error.where)
    return report


def _warn_skipped(path: Path, skipped: list[str]) -> None:
    if skipped:
        more = f" and {len(skipped) - NAMED_SKIPS} more" if len(skipped) > NAMED_SKIPS else ""
        log.warning("%s: skipped %d preference rows whose chosen and rejected transcripts differ before their "
                    "last reply (the replies answer different conversations: no pair): %s%s", path, len(skipped),
                    ", ".join(skipped[:NAMED_SKIPS]), more)


def read_records(path: str | Path, limit: int | None = None, on_error: OnError | None = None) -> Iterator[dict]:
    """Yield normalised records from one file or dataset folder.

    on_error None (strict): raise the first RecordError, naming file:line, except NotAPair rows, which are
    skipped and then named in one warning. A callable (lenient): it receives each RecordError instead, a malformed
    row is skipped and reading goes on; a SourceError means that file yields nothing more. `limit` counts the
    records yielded, not the rows skipped."""
    path = Path(path)
    skipped: list[str] = []
    report = on_error or _strict_but_skipping_pairless(skipped)
    count = 0
    try:
        if not path.exists():
            raise SourceError.at(path, "no such data file or folder")
        for where, row in _raw_rows(path, report):
            try:
                records = normalise(row, where)
            except RecordError as exc:
                report(exc)
                continue
            for record in records:
                yield record
                count += 1
                if limit is not None and count >= limit:
                    return
    except SourceError as exc:
        report(exc)
    finally:  # also when `limit` ends the reading early
        _warn_skipped(path, skipped)


def read_many(paths: list[str | Path], limit: int | None = None) -> list[dict]:
    records: list[dict] = []
    for path in paths:
        remaining = None if limit is None else limit - len(records)
        if remaining is not None and remaining <= 0:
            break
        records.extend(read_records(resolve_path(path), remaining))
    return records


def _raw_rows(path: Path, report: OnError) -> Iterator[tuple[str, dict]]:
    try:
        if path.is_dir():
            yield from _folder_rows(path, report)
        elif path.suffix == ".jsonl":
            yield from _jsonl_rows(path, report)
        elif path.suffix == ".json":
            yield from _json_rows(path, report)
        elif path.suffix == ".parquet":
            yield from _parquet_rows(path)
        else:
            raise SourceError.at(path, f"unsupported data file type {path.suffix!r} (use .jsonl, .json, .parquet "
                                       f"or a datasets folder)")
    except OSError as exc:
        raise SourceError.at(path, f"cannot read ({exc.strerror or exc})") from None


def _jsonl_rows(path: Path, report: OnError) -> Iterator[tuple[str, dict]]:
    with path.open("rb") as handle:  # decoded per line: one badly encoded line is one bad row, not a bad file
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report(RecordError.at(where, f"not UTF-8 text (byte {exc.start + 1})"))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                report(RecordError.at(where, f"invalid JSON ({exc.msg} at column {exc.colno})"))
                continue
            if not isinstance(row, dict):
                report(RecordError.at(where, f"expected a JSON object, got {type(row).__name__}"))
                continue
            yield where, row


def _json_rows(path: Path, report: OnError) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SourceError.at(f"{path}:{exc.lineno}", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise SourceError.at(path, f"not UTF-8 text (byte {exc.start + 1})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SourceError.at(path, "expected a list of records (or a mapping holding exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise SourceError.at(path, f"expected a list of records, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            report(RecordError.at(f"{path}:item {i}", f"expected a JSON object, got {type(row).__name__}"))
            continue
        yield f"{path}:item {i}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise SourceError.at(path, f"cannot read as Parquet ({exc})") from None
    as_json = json.loads((table.schema.metadata or {}).get(JSON_COLUMNS_KEY, b"[]"))
    for i, row in enumerate(table.to_pylist(), start=1):
        for name in as_json:
            if row.get(name) is not None:
                row[name] = json.loads(row[name])
        yield f"{path}:row {i}", row


def write_parquet(path: Path, rows: list[dict]) -> None:
    """Rows as a Parquet file that read_records gives back as they were. Columns are the union of the rows' keys
    (Arrow would take them from the first row alone and drop, say, the ratings of later records). A column whose
    values Arrow cannot hold in one type (an extra field that is a number in one source and text in another, an
    empty object) is written as JSON text and named in the file's metadata, instead of failing the whole write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(dict.fromkeys(key for row in rows for key in row))
    arrays, as_json = {}, []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values)
            if _parquet_holds(arrays[name].type):
                continue
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
        arrays[name] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values],
                                pa.string())
        as_json.append(name)
    table = pa.Table.from_pydict(arrays)
    if as_json:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), JSON_COLUMNS_KEY: json.dumps(as_json)})
    pq.write_table(table, path)


def _parquet_holds(kind) -> bool:
    """Whether Parquet can store an Arrow type: not a struct without fields (from an empty object), at any depth."""
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(_parquet_holds(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _parquet_holds(kind.value_type)
    return True


def _folder_rows(path: Path, report: OnError) -> Iterator[tuple[str, dict]]:
    import datasets

    curated = _curated_file(path)
    if curated is not None:
        yield from _raw_rows(curated, report)
        return
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise SourceError.at(path, "folder holds neither a saved dataset nor .jsonl/.json/.parquet files")
        for file in files:
            try:
                yield from _raw_rows(file, report)
            except SourceError as exc:  # strict: raised again; lenient: the folder's other files still count
                report(exc)
        return
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    for i, row in enumerate(ds):
        yield f"{path}:row {i}", row


def _curated_file(path: Path) -> Path | None:
    if not (path / CURATE_MARKER).is_file():
        return None
    return next((path / name for name in CURATED_FILES if (path / name).is_file()), None)


def _text(value: Any, where: str, field: str) -> str:
    if isinstance(value, dict):  # ShareGPT-style turn {"from": ..., "value": ...}
        value = value.get("value", value.get("content"))
    if value is None:
        raise RecordError.at(where, f"missing field {field!r}")
    if not isinstance(value, str):
        raise RecordError.at(where, f"field {field!r} must be text, got {type(value).__name__}")
    return value


def _optional_text(value: Any, where: str, field: str) -> str:
    return "" if value is None else _text(value, where, field)


def _list(value: Any, where: str, field: str) -> list:
    if not isinstance(value, list):
        raise RecordError.at(where, f"field {field!r} must be a list, got {type(value).__name__}")
    return value


def _turn_object(turn: Any, where: str) -> dict:
    if not isinstance(turn, dict):
        raise RecordError.at(where, f"a turn must be an object, got {type(turn).__name__}")
    return turn


def _turn(turn: Any, where: str) -> dict:
    _turn_object(turn, where)
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if role is None or content is None:
        raise RecordError.at(where, f"a turn needs role/content (or from/value), got keys {sorted(turn)}")
    if str(role).lower() not in ROLE_ALIASES:
        raise RecordError.at(where, f"unknown role {role!r} (known: {', '.join(sorted(ROLE_ALIASES))})")
    return {"role": ROLE_ALIASES[str(role).lower()], "content": _text(content, where, "content")}


def _user_text(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def _hh_turns(transcript: str, where: str) -> list[dict]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' turns; a transcript may also start at 'Human: ' without the blank
    lines (they were split off as a preamble, and such a pair lost its whole prompt)."""
    if transcript.startswith(("Human: ", "Assistant: ")):
        transcript = "\n\n" + transcript
    parts = HH_TURN.split(transcript)
    if len(parts) < 3:
        raise RecordError.at(where, "transcript has no 'Human:/Assistant:' turns")
    return [{"role": "user" if speaker == "Human" else "assistant", "content": text.strip()}
            for speaker, text in zip(parts[1::2], parts[2::2])]


RATING_FIELDS = ("ratings", "annotator_ratings")
RATING_SHAPES = 'a list of numbers, a list of {"annotator": id, "rating": number} objects or an {id: number} object'


def _ratings(row: dict, where: str) -> dict:
    """The record's `ratings` and, when the row names who gave them, the parallel `annotators`; {} unrated.
    A list of plain numbers stays anonymous unless the row's `annotators` field names them (that is how a
    curated record, written back out, keeps its ids)."""
    field = next((name for name in RATING_FIELDS if row.get(name) is not None), None)
    if field is None:
        return {}
    value = row[field]
    if isinstance(value, dict):
        ids, numbers = list(value), list(value.values())
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        ids, numbers = _rating_objects(value, where, field)
    elif isinstance(value, list):
        ids, numbers = row.get("annotators"), value
    else:
        raise RecordError.at(where, f"field {field!r} must be {RATING_SHAPES}, got {type(value).__name__}")
    ratings = [_finite(number) for number in numbers]
    if None in ratings:
        raise RecordError.at(where, f"{field} must be numbers, got {value!r}")
    if ids is None:
        return {"ratings": ratings}
    return {"ratings": ratings, "annotators": _annotator_ids(ids, len(ratings), where, field)}


def _rating_objects(items: list, where: str, field: str) -> tuple[list, list]:
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not {"annotator", "rating"} <= set(item):
            raise RecordError.at(where, f'{field}[{i}] must be an {{"annotator": id, "rating": number}} object like '
                                        f"the rest of the list, got {item!r}")
    return [item["annotator"] for item in items], [item["rating"] for item in items]


def _finite(value: Any) -> float | None:
    """The rating as a float; None for a bool, NaN, infinity or anything else that is not a number (a NaN
    would pass every threshold comparison unnoticed)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _annotator_ids(ids: Any, count: int, where: str, field: str) -> list[str]:
    if not isinstance(ids, list) or len(ids) != count:
        raise RecordError.at(where, f"field 'annotators' must be a list of {count} annotator ids, one per rating "
                                    f"in {field!r}, got {ids!r}")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (str, int)) or i == ""]
    if bad:
        raise RecordError.at(where, f"{field}: an annotator id must be non-empty text or an integer, got {bad[0]!r}")
    names = [str(i) for i in ids]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise RecordError.at(where, f"{field}: annotator {twice[0]!r} rated this record more than once")
    return names


# The fields the formats above read; anything else in a row travels along as the record's columns.
FORMAT_FIELDS = frozenset({"instruction", "input", "output", "instances", "messages", "conversations", "prompt",
                           "response", "completion", "chosen", "rejected", *RATING_FIELDS, "annotators",
                           "category"})


def _extras(row: dict, record: dict, where: str) -> dict:
    record.update(_ratings(row, where))
    if row.get("category") is not None:
        record["category"] = str(row["category"])
    # A curated record read back carries its extras under `columns` already: merged, not nested a level deeper,
    # so a reward function still finds `answer` there.
    merged = isinstance(row.get("columns"), dict)
    columns = {**(row["columns"] if merged else {}),
               **{key: value for key, value in row.items() if key not in FORMAT_FIELDS and
                  not (key == "columns" and merged)}}
    if columns:
        record["columns"] = columns
    return record


def normalise(row: dict, where: str) -> list[dict]:
    """One raw row → one or more normalised records (self-instruct rows hold several instances). A field that is
    None is a field the row does not have: Parquet files and saved datasets hold the union of their rows' fields
    (a chat beside preference pairs reads back with chosen=None)."""
    row = {key: value for key, value in row.items() if value is not None}
    records = [_extras(row, dict(r, source=where), where) for r in _normalise(row, where)]
    for record in records:
        if not record["messages"] and "chosen" not in record:
            raise RecordError.at(where, "record has no turns")
    return records


def _normalise(row: dict, where: str) -> list[dict]:
    if "instruction" in row and "instances" in row:
        instruction = _text(row["instruction"], where, "instruction")
        instances = _list(row["instances"], where, "instances")
        if not all(isinstance(inst, dict) for inst in instances):
            raise RecordError.at(where, "every item of 'instances' must be an object")
        return [{"messages": [{"role": "user", "content": _user_text(instruction, _optional_text(inst.get("input"),
                                                                                                 where, "input"))},
                              {"role": "assistant", "content": _text(inst.get("output"), where, "output")}]}
                for inst in instances]
    if "instruction" in row:
        user = {"role": "user", "content": _user_text(_text(row["instruction"], where, "instruction"),
                                                      str(row.get("input") or ""))}
        if "chosen" in row and "rejected" in row:
            return [{"messages": [user], "chosen": _text(row["chosen"], where, "chosen"),
                     "rejected": _text(row["rejected"], where, "rejected")}]
        return [{"messages": [user, {"role": "assistant", "content": _text(row.get("output"), where, "output")}]}]
    turns_key = "messages" if "messages" in row else "conversations" if "conversations" in row else None
    if turns_key is not None:
        turns = row[turns_key]
        if not isinstance(turns, list):
            raise RecordError.at(where, f"{turns_key!r} must be a list of turns")
        if turns and isinstance(turns[0], dict) and set(turns[0]) >= {"message"} and "role" not in turns[0]:
            messages = [{"role": "user" if i % 2 == 0 else "assistant",
                         "content": _text(_turn_object(t, where).get("message"), where, "message")}
                        for i, t in enumerate(turns)]
        else:
            messages = [_turn(t, where) for t in turns]
        if "chosen" in row and "rejected" in row:
            return [{"messages": messages, "chosen": _text(row["chosen"], where, "chosen"),
                     "rejected": _text(row["rejected"], where, "rejected")}]
        return [{"messages": messages}]
    if "prompt" in row:
        prompt = row["prompt"]
        messages = [_turn(t, where) for t in prompt] if isinstance(prompt, list) else \
            [{"role": "user", "content": _text(prompt, where, "prompt")}]
        if "chosen" in row and "rejected" in row:
            return [{"messages": messages, "chosen": _text(row["chosen"], where, "chosen"),
                     "rejected": _text(row["rejected"], where, "rejected")}]
        response = row.get("response", row.get("completion"))
        if response is None:  # a prompt to answer (PPO), with no reply yet
            return [{"messages": messages}]
        return [{"messages": messages + [{"role": "assistant", "content": _text(response, where, "response")}]}]
    if "chosen" in row and "rejected" in row:
        chosen = _hh_turns(_text(row["chosen"], where, "chosen"), where)
        rejected = _hh_turns(_text(row["rejected"], where, "rejected"), where)
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise RecordError.at(where, "chosen/rejected transcripts must end with an Assistant turn")
        if chosen[:-1] != rejected[:-1]:  # compared as parsed: turns stripped, a missing leading blank line restored
            raise NotAPair.at(where, NOT_A_PAIR)
        return [{"messages": chosen[:-1], "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}]
    raise RecordError.at(where, f"unrecognised record format with keys {sorted(row)}; expected instruction/output, "
                                "messages, conversations, prompt/response or chosen/rejected")


def prompt_of(record: dict) -> list[dict]:
    """The turns a policy should answer: the chat without its final reply when it ends with one, else the whole
    chat (cutting at the last assistant turn of [user, assistant, user] answered the first question again and
    dropped the one left open)."""
    messages = record["messages"]
    if "chosen" in record or not messages or messages[-1]["role"] != "assistant":
        return messages
    return messages[:-1]


def last_response(record: dict) -> str:
    """The final assistant reply of a chat record ('' when there is none)."""
    replies = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    return replies[-1] if replies else ""
