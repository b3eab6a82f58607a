"""The run ledger: what feedback on a run needs to know about it, by run id.

A run's query id, query vector, predicted category and answering model are kept for the
last `capacity` runs in memory; with a directory (the deployment persists outcomes) each
run is also appended to ``runs.jsonl`` there, one fsynced line per run, so feedback can
arrive later or from another process (`emafusion feedback`). Lines are read back lazily;
a torn last line (a writer killed mid-append) is skipped.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

RUNS_FILE = "runs.jsonl"


@dataclass(frozen=True)
class RunEntry:
    run_id: str
    query_id: str
    vector: tuple[float, ...]
    category: str | None
    model: str | None  # the model whose answer was returned; None: nobody answered
    models: tuple[str, ...]  # every model that answered
    # (model, the memory's prediction planning used, the drift offset in it), per answer.
    predicted: tuple[tuple[str, float, float], ...] = ()
    # Run on the plan the drift test's baseline was measured for: its feedback feeds the test.
    tested: bool = False


class RunLedger:
    def __init__(self, directory: Path | None = None, capacity: int = 100_000) -> None:
        self.directory = directory
        self.capacity = capacity
        self._runs: OrderedDict[str, RunEntry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        return self.directory / RUNS_FILE if self.directory is not None else None

    def add(self, entry: RunEntry) -> None:
        with self._lock:
            self._runs[entry.run_id] = entry
            self._runs.move_to_end(entry.run_id)
            while len(self._runs) > self.capacity:
                self._runs.popitem(last=False)
            path = self.path
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                line = (json.dumps(asdict(entry), separators=(",", ":")) + "\n").encode()
                # One write per line under O_APPEND: concurrent writers never interleave.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def get(self, run_id: str) -> RunEntry | None:
        with self._lock:
            found = self._runs.get(run_id)
        return found if found is not None else self._from_file(run_id)

    def _from_file(self, run_id: str) -> RunEntry | None:
        path = self.path
        if path is None or not path.exists():
            return None
        found = None
        with path.open("rb") as fh:
            for raw in fh:
                if run_id.encode() not in raw:
                    continue
                try:
                    data = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue  # a torn line
                if data.get("run_id") == run_id:
                    found = RunEntry(
                        run_id=data["run_id"],
                        query_id=data["query_id"],
                        vector=tuple(data["vector"]),
                        category=data.get("category"),
                        model=data.get("model"),
                        models=tuple(data.get("models", ())),
                        predicted=tuple(
                            (str(m), float(p), float(o)) for m, p, o in data.get("predicted", ())
                        ),
                        tested=bool(data.get("tested", False)),
                    )
        return found
