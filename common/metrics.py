"""Metrics a person can plot: TensorBoard event files, metrics.jsonl and metrics.csv side by side. Appends across
resumes (a resumed run continues the same files). The PNG curves drawn at the end of a run live with the jobs
that draw them (jobs/plots.py)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from common.durable import write_atomically


class MetricsLogger:
    def __init__(self, folder: str | Path, tensorboard: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.folder / "metrics.jsonl"
        self.csv_path = self.folder / "metrics.csv"
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with self.jsonl_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self._writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step`: a run resumed from that checkpoint logs those steps again."""
        rows = [row for row in read_jsonl(self.jsonl_path) if row["step"] <= step]
        write_atomically(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in rows))

    def close(self) -> None:
        """Flush TensorBoard and rewrite metrics.csv from the JSONL (columns = union of keys)."""
        if self._writer is not None:
            self._writer.close()
        write_csv(read_jsonl(self.jsonl_path), self.csv_path)


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    return value


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_csv(rows: list[dict], path: str | Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue())
