"""Shared helpers of the outcome-memory tests: synthetic unit vectors and records."""

from __future__ import annotations

import numpy as np

from emafusion.stores.memory import MemorySettings, OutcomeMemory, OutcomeRecord

DIM = 8
EMBEDDER = "test-embedder"
E = np.eye(DIM, dtype=np.float32)


def unit(vector: np.ndarray | list[float]) -> np.ndarray:
    arr = np.asarray(vector, dtype=np.float32)
    return arr / np.linalg.norm(arr, axis=-1, keepdims=True)


def rec(model: str, score: float, **fields: object) -> OutcomeRecord:
    fields.setdefault("source", "recording")
    fields.setdefault("timestamp", 1_000.0)
    return OutcomeRecord(model=model, score=score, **fields)


def memory(**settings: object) -> OutcomeMemory:
    return OutcomeMemory(DIM, EMBEDDER, MemorySettings(**settings))


def random_units(n: int, dim: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def populated(kind: str, n: int = 300, seed: int = 0) -> OutcomeMemory:
    rng = np.random.default_rng(seed)
    mem = OutcomeMemory(32, EMBEDDER, MemorySettings(index_kind=kind, k=10, half_life_s=1e6))
    outcomes = [
        [
            rec(
                f"m{j}",
                float(rng.random()),
                cost_usd=float(rng.random()) / 100 if j else None,
                latency_s=float(rng.random()),
                timestamp=float(rng.integers(0, 10**6)),
                source=("recording", "live_judged", "user_feedback")[j % 3],
            )
            for j in range(4)
            if rng.random() < 0.8
        ]
        for _ in range(n)
    ]
    categories = [("math", "code", None)[i % 3] for i in range(n)]
    mem.add_many([f"q{i}" for i in range(n)], random_units(n, 32, seed), outcomes, categories)
    return mem
