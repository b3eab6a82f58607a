"""A separate process writing to one outcome memory, for the multi-process tests.

    python tests/unit/memory_worker.py MODE DIRECTORY WORKER COUNT [GO_FILE]

Worker w records COUNT outcomes: outcome i is model ``w{w}`` on query ``w{w}-{i}`` and on the
shared query ``shared-{i % 5}`` (so workers also merge into the same stored queries). It
prints ``ACK i`` once outcome i is acknowledged. Modes:

- ``append``: `append` each outcome;
- ``append-compact``: `append`, then `compact` after each;
- ``add-save``: `add` then `save` after each (what ``ask --save-memory`` did);
- ``compact``: only `compact` (COUNT is 0);
- ``tear-append``: append COUNT outcomes, then tear the next append half-way and hang
  (the test SIGKILLs it);
- ``hang-compact:<file>``: append COUNT outcomes, then compact, hanging half-way through
  writing ``<file>`` of the generation (index.faiss, MANIFEST.json) or, for ``discard``,
  after the new manifest is published but before the log is trimmed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from emafusion.stores.memory import OutcomeMemory, OutcomeRecord, generations, log

DIM = 16


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def outcome(worker: int, i: int) -> OutcomeRecord:
    return OutcomeRecord(
        model=f"w{worker}", score=(i % 4) / 4, source="live_judged", timestamp=1000.0 + i
    )


def hang(*_: object) -> None:
    print("HUNG", flush=True)
    time.sleep(600)


def main(argv: list[str]) -> None:
    mode, directory, worker, count = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    if len(argv) > 4:
        while not Path(argv[4]).exists():  # start together, so the writers overlap
            time.sleep(0.005)
    memory = OutcomeMemory.load(directory)
    for i in range(count):
        entries = [
            (f"w{worker}-{i}", vector(worker * 1000 + i)),
            (f"shared-{i % 5}", vector(i % 5)),
        ]
        if mode == "add-save":
            for query_id, vec in entries:
                memory.add(query_id, vec, [outcome(worker, i)])
            memory.save(directory)
        else:
            memory.append_many(
                [q for q, _ in entries],
                np.stack([v for _, v in entries]),
                [[outcome(worker, i)]] * 2,
            )
            if mode == "append-compact":
                memory.compact()
        print(f"ACK {i}", flush=True)
    if mode == "compact":
        memory.compact()
    elif mode == "tear-append":
        real_write = log._write

        def torn(fd: int, data: memoryview) -> int:
            real_write(fd, bytes(data[: len(data) // 2]))
            hang()
            return 0

        log._write = torn
        memory.append(f"w{worker}-torn", vector(999_999), [outcome(worker, count)])
    elif mode.startswith("hang-compact:"):
        target = mode.split(":", 1)[1]
        if target == "discard":
            log.OutcomeLog.discard_before = hang  # type: ignore[method-assign]
        else:
            real_bytes = generations._write_bytes

            def stalling(path: Path, data: bytes | memoryview) -> None:
                if target in path.name:
                    with open(path, "wb") as fh:
                        fh.write(bytes(data[: len(data) // 2]))
                    hang()
                real_bytes(path, data)

            generations._write_bytes = stalling
        memory.compact()
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
