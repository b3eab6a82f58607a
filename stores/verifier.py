"""The learned verifier: P(a model's response to a query is correct), learned from recordings.

Features of one (query, model, response):

- the outcome memory's view: kNN success estimate, its evidence (n_eff) and the model's prior;
- the query's embedding, projected on its top principal components (topic and difficulty);
- the response text: length, lines, whether a final option parses, which one, hedging, ...;
- the answering model (one-hot).

Trained on the train split's recorded outcomes. The memory is built from the same split, so
each training row's memory features are computed leaving its own query out: at run time a
new query is never its own neighbour, and the verifier must not learn to trust a neighbour
that is the answer key.

The classifier is scikit-learn's histogram gradient boosting, fitted by
`emafusion.train.verifier`; serving never imports scikit-learn. The fitted trees are
exported to plain arrays (``verifier.npz``, loaded with ``allow_pickle=False``) and
evaluated with numpy, so loading a router directory never unpickles code and scoring one
answer costs well under a millisecond.

    <router dir>/verifier.npz    projection + trees
    <router dir>/verifier.json   models, features, k, embedder id, sha256 of the npz, metrics
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emafusion.stores.answers import LETTERS, extract_choice, option_count
from emafusion.stores.atomic import write_bytes_atomic, write_json_atomic
from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.recordings import Record

VERIFIER_NPZ = "verifier.npz"
VERIFIER_JSON = "verifier.json"
FORMAT_VERSION = 1
# Rows per block when scoring many pairs: bounds the (rows x trees) index arrays.
_BLOCK = 4096


class VerifierError(ValueError):
    """A verifier that cannot be trained, saved or loaded; the message says the fix."""


# --- text features ------------------------------------------------------------------------

_OPTION_MENTION = re.compile(r"\(([A-J])\)")
_HEDGE = re.compile(
    r"\b(however|not sure|unsure|unclear|approximately|cannot|can't|assume|might|maybe|"
    r"perhaps|possibly|it depends)\b",
    re.IGNORECASE,
)


TEXT_FEATURES = (
    "log_response_chars",
    "response_lines",
    "response_empty",
    "final_answer_parsed",
    "says_answer_is",
    "n_options",
    "log_query_chars",
    "chosen_option",
    "options_mentioned",
    "hedges",
)
MEMORY_FEATURES = ("memory_p_success", "memory_n_eff", "memory_prior")


def text_features(query: str, response: str) -> list[float]:
    """Cheap features of a response to a query (no model calls, no embeddings)."""
    n_options = option_count(query)
    choice = extract_choice(response, n_options) if n_options else None
    stripped = response.strip()
    parsed = choice is not None if n_options else bool(stripped)
    return [
        math.log1p(len(response)),
        float(response.count("\n")),
        float(not stripped),
        float(parsed),
        float("answer is" in response.lower()),
        float(n_options),
        math.log1p(len(query)),
        float(LETTERS.index(choice)) if choice else -1.0,
        float(len(set(_OPTION_MENTION.findall(response)))),
        float(len(_HEDGE.findall(response))),
    ]


# --- exported trees ------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeEnsemble:
    """Boosted regression trees as flat arrays; children are global node indices.

    A row goes left when its feature is <= the threshold (NaN: the learned side), exactly as
    scikit-learn's predictor does; the raw score is the baseline plus each tree's leaf value.
    """

    feature: np.ndarray  # int64 (nodes,)
    threshold: np.ndarray  # float64
    left: np.ndarray  # int64
    right: np.ndarray  # int64
    is_leaf: np.ndarray  # bool
    missing_left: np.ndarray  # bool
    value: np.ndarray  # float64
    roots: np.ndarray  # int64 (trees,)
    baseline: float
    max_depth: int

    def raw(self, features: np.ndarray) -> np.ndarray:
        out = np.empty(len(features))
        for start in range(0, len(features), _BLOCK):
            out[start : start + _BLOCK] = self._raw_block(features[start : start + _BLOCK])
        return out

    def _raw_block(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if not len(self.roots):
            return np.full(n, self.baseline)
        rows = np.arange(n)[:, None]
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        # Every tree advances one level per step, all rows at once.
        for _ in range(self.max_depth + 1):
            leaf = self.is_leaf[node]
            if leaf.all():
                break
            values = x[rows, self.feature[node]]
            go_left = np.where(
                np.isnan(values), self.missing_left[node], values <= self.threshold[node]
            )
            node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
        return self.baseline + self.value[node].sum(axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "tree_feature": self.feature,
            "tree_threshold": self.threshold,
            "tree_left": self.left,
            "tree_right": self.right,
            "tree_is_leaf": self.is_leaf,
            "tree_missing_left": self.missing_left,
            "tree_value": self.value,
            "tree_roots": self.roots,
            "tree_baseline": np.array([self.baseline]),
            "tree_max_depth": np.array([self.max_depth]),
        }

    @classmethod
    def from_arrays(cls, data: dict[str, np.ndarray]) -> TreeEnsemble:
        ensemble = cls(
            feature=data["tree_feature"].astype(np.int64),
            threshold=data["tree_threshold"].astype(np.float64),
            left=data["tree_left"].astype(np.int64),
            right=data["tree_right"].astype(np.int64),
            is_leaf=data["tree_is_leaf"].astype(bool),
            missing_left=data["tree_missing_left"].astype(bool),
            value=data["tree_value"].astype(np.float64),
            roots=data["tree_roots"].astype(np.int64),
            baseline=float(data["tree_baseline"][0]),
            max_depth=int(data["tree_max_depth"][0]),
        )
        n = len(ensemble.feature)
        sizes = {len(getattr(ensemble, f)) for f in ("threshold", "left", "right", "is_leaf")}
        inner = ~ensemble.is_leaf
        if (
            sizes != {n}
            or len(ensemble.value) != n
            or len(ensemble.missing_left) != n
            or (ensemble.roots >= n).any()
            or (inner & ((ensemble.left >= n) | (ensemble.right >= n))).any()
        ):
            raise VerifierError("verifier trees are inconsistent (node indices out of range)")
        return ensemble


# --- the verifier -------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True)
class Pairs:
    """(query, model, response) triples to score; ``query_index`` points into ``vectors``."""

    query_index: np.ndarray
    queries: Sequence[str]
    models: Sequence[str]
    responses: Sequence[str]
    labels: np.ndarray | None = None  # correctness, when known

    def __len__(self) -> int:
        return len(self.query_index)


def record_pairs(records: Sequence[Record], models: Sequence[str] | None = None) -> Pairs:
    """Every recorded (query, model, response) of `records`, with its correctness."""
    index, queries, names, responses, labels = [], [], [], [], []
    for i, record in enumerate(records):
        for model, outcome in record.outcomes.items():
            if models is not None and model not in models:
                continue
            index.append(i)
            queries.append(record.query)
            names.append(model)
            responses.append(outcome.response or "")
            labels.append(outcome.score >= 0.5)
    return Pairs(np.asarray(index, np.int64), queries, names, responses, np.asarray(labels))


@dataclass(frozen=True)
class FeatureSpace:
    """How a (query, model, response) becomes a feature row; fixed at training time."""

    models: tuple[str, ...]
    k: int
    embedder_id: str
    projection_mean: np.ndarray  # (dim,)
    projection: np.ndarray  # (components, dim)

    @property
    def feature_names(self) -> list[str]:
        return [
            *MEMORY_FEATURES,
            *TEXT_FEATURES,
            *(f"model={m}" for m in self.models),
            *(f"query_pc{i}" for i in range(len(self.projection))),
        ]

    def features(
        self,
        memory: OutcomeMemory,
        vectors: np.ndarray,
        pairs: Pairs,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Feature matrix of `pairs`; `exclude_ids` (one per vector) leaves queries out."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        if vectors.shape[1] != self.projection.shape[1]:
            raise VerifierError(
                f"query vectors have {vectors.shape[1]} dimensions, the verifier expects "
                f"{self.projection.shape[1]} ({self.embedder_id}). Fix: embed with that embedder "
                f"or retrain with `emafusion judges train`."
            )
        unknown = sorted(set(pairs.models) - set(self.models))
        if unknown:
            raise VerifierError(
                f"the verifier was not trained on {unknown}. Fix: score only known models "
                f"(LearnedVerifier.knows) or retrain on recordings that include them."
            )
        batch = memory.predict_arrays(vectors, self.models, k=self.k, exclude_ids=exclude_ids)
        col = {m: j for j, m in enumerate(self.models)}
        cols = np.array([col[m] for m in pairs.models], dtype=np.int64)
        q = pairs.query_index
        mem = np.stack(
            [batch.p_success[q, cols], batch.n_eff[q, cols], batch.prior[q, cols]], axis=1
        )
        text = np.array(
            [text_features(qt, r) for qt, r in zip(pairs.queries, pairs.responses, strict=True)],
            dtype=np.float64,
        ).reshape(len(pairs), len(TEXT_FEATURES))
        onehot = np.zeros((len(pairs), len(self.models)))
        onehot[np.arange(len(pairs)), cols] = 1.0
        projected = (vectors - self.projection_mean) @ self.projection.T
        return np.hstack([mem, text, onehot, projected[q]])


@dataclass(frozen=True)
class LearnedVerifier:
    space: FeatureSpace
    trees: TreeEnsemble
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> tuple[str, ...]:
        return self.space.models

    @property
    def k(self) -> int:
        return self.space.k

    @property
    def embedder_id(self) -> str:
        return self.space.embedder_id

    def knows(self, model: str) -> bool:
        return model in self.space.models

    def features(
        self,
        memory: OutcomeMemory,
        vectors: np.ndarray,
        pairs: Pairs,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        return self.space.features(memory, vectors, pairs, exclude_ids)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return _sigmoid(self.trees.raw(np.asarray(features, dtype=np.float64)))

    def score(
        self,
        memory: OutcomeMemory,
        vectors: np.ndarray,
        pairs: Pairs,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        return self.predict(self.features(memory, vectors, pairs, exclude_ids))

    # --- persistence --------------------------------------------------------------------

    def save(self, directory: Path | str) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "projection_mean": self.space.projection_mean.astype(np.float64),
            "projection": self.space.projection.astype(np.float64),
            **self.trees.arrays(),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        blob = buffer.getvalue()
        digest = hashlib.sha256(blob).hexdigest()
        # The arrays first, then the manifest naming their digest: a crash in between
        # leaves a mismatch that load() reports, never a silently mixed verifier.
        write_bytes_atomic(directory / VERIFIER_NPZ, blob)
        meta = {
            "format_version": FORMAT_VERSION,
            "models": list(self.models),
            "k": self.k,
            "embedder_id": self.embedder_id,
            "feature_names": self.space.feature_names,
            "npz_sha256": digest,
            "info": self.info,
        }
        write_json_atomic(directory / VERIFIER_JSON, meta)
        return directory

    @classmethod
    def load(
        cls, directory: Path | str, expected_embedder_id: str | None = None
    ) -> LearnedVerifier:
        directory = Path(directory)
        meta_path, npz_path = directory / VERIFIER_JSON, directory / VERIFIER_NPZ
        fix = f"Fix: retrain with `emafusion judges train --router-dir {directory}`."
        try:
            meta = json.loads(meta_path.read_text())
            blob = npz_path.read_bytes()
        except (OSError, json.JSONDecodeError) as exc:
            raise VerifierError(f"{directory}: verifier unreadable ({exc}). {fix}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise VerifierError(
                f"{meta_path}: format_version {meta.get('format_version')!r}, this emafusion "
                f"reads {FORMAT_VERSION}. {fix}"
            )
        if hashlib.sha256(blob).hexdigest() != meta.get("npz_sha256"):
            raise VerifierError(f"{npz_path}: sha256 differs from {VERIFIER_JSON}. {fix}")
        if expected_embedder_id is not None and meta["embedder_id"] != expected_embedder_id:
            raise VerifierError(
                f"{directory}: verifier trained on embeddings of {meta['embedder_id']!r}, the "
                f"router embeds with {expected_embedder_id!r}. {fix}"
            )
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        space = FeatureSpace(
            models=tuple(meta["models"]),
            k=int(meta["k"]),
            embedder_id=str(meta["embedder_id"]),
            projection_mean=arrays["projection_mean"],
            projection=arrays["projection"],
        )
        if space.projection.shape[1:] != space.projection_mean.shape:
            raise VerifierError(f"{npz_path}: projection shapes disagree. {fix}")
        verifier = cls(space, TreeEnsemble.from_arrays(arrays), dict(meta.get("info", {})))
        if space.feature_names != meta.get("feature_names"):
            raise VerifierError(f"{meta_path}: feature names differ from this emafusion's. {fix}")
        return verifier


def load_verifier(
    directory: Path | str, expected_embedder_id: str | None = None
) -> LearnedVerifier | None:
    """The verifier saved in a router directory, or None when none was trained there."""
    directory = Path(directory)
    if not (directory / VERIFIER_JSON).exists() and not (directory / VERIFIER_NPZ).exists():
        return None
    return LearnedVerifier.load(directory, expected_embedder_id)
