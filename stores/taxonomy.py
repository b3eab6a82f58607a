"""The taxonomy router's data: task categories and the fast embedding classifier.

Categories come from a taxonomy file (name, description, examples). The classifier is a
similarity-weighted kNN vote over labelled query embeddings (training queries plus each
category's description and examples), with its two temperatures chosen by log-loss on a
held-out split so that its probabilities are calibrated.
"""

from __future__ import annotations

import io
import json
import math
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emafusion.stores.atomic import write_bytes_atomic
from emafusion.stores.recordings.utf8 import NotUTF8Error, decode_utf8

CLASSIFIER_FORMAT_VERSION = 1


class TaxonomyError(ValueError):
    """A taxonomy file or classifier that cannot be used; the message says how to fix it."""


class Category(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    examples: list[str] = Field(default_factory=list)

    @property
    def seed_texts(self) -> list[str]:
        """Texts that stand for the category before any traffic is labelled."""
        texts = [self.description] if self.description else []
        return texts + list(self.examples)


class Taxonomy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: list[Category] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Taxonomy:
        names = [c.name for c in self.categories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"category names must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Taxonomy:
        """A bare taxonomy from category labels, for recordings that ship no taxonomy file."""
        return cls(categories=[Category(name=n) for n in names])


def default_taxonomy_path(dataset: str) -> Path:
    path = Path(str(resources.files("emafusion.stores") / "taxonomies" / f"{dataset}.toml"))
    if not path.is_file():
        raise TaxonomyError(
            f"no shipped taxonomy for {dataset!r}. Fix: pass --taxonomy FILE.toml with "
            f"[[categories]] entries (name, description, examples)."
        )
    return path


def load_taxonomy(path: Path | str) -> Taxonomy:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise TaxonomyError(
            f"{path}: no such taxonomy file. Fix: name an existing TOML taxonomy (the "
            f"defaults live in stores/taxonomies/), or leave it out to use the recordings' labels."
        ) from exc
    except OSError as exc:  # a directory, no permission, a disk error
        raise TaxonomyError(
            f"{path}: cannot be read ({exc.strerror or exc}). Fix: name a readable TOML file."
        ) from exc
    try:
        raw = tomllib.loads(decode_utf8(data))  # as pool files: a byte-order mark is accepted
        return Taxonomy.model_validate(raw)
    except NotUTF8Error as exc:
        raise TaxonomyError(f"{path}, {exc}.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TaxonomyError(f"{path}: not valid TOML ({exc}). Fix: correct the file.") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise TaxonomyError(f"{path}: field {where}: {err['msg']}. Fix: correct the file.") from exc


def extend_taxonomy(taxonomy: Taxonomy, labels: Sequence[str]) -> Taxonomy:
    """The taxonomy plus any category that labelled data names but the file lacks."""
    known = set(taxonomy.names)
    extra = [Category(name=n) for n in sorted(set(labels) - known)]
    return Taxonomy(categories=[*taxonomy.categories, *extra]) if extra else taxonomy


@dataclass
class CategoryClassifier:
    """kNN over labelled embeddings -> calibrated category probabilities."""

    categories: list[str]
    vectors: np.ndarray  # (n, dim) float32, L2-normalized
    labels: np.ndarray  # (n,) int index into categories
    embedder_id: str
    k: int = 25
    neighbour_temperature: float = 0.05
    calibration_temperature: float = 1.0
    # A small floor keeps a category the neighbours never voted for possible, not certain-zero.
    floor: float = 1e-3
    fitted_on: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.labels):
            raise TaxonomyError("classifier vectors and labels must have the same length")
        if len(self.labels) and (
            self.labels.min() < 0 or self.labels.max() >= len(self.categories)
        ):
            raise TaxonomyError("classifier labels must index its categories")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def fit(
        cls,
        categories: Sequence[str],
        vectors: np.ndarray,
        labels: Sequence[str],
        embedder_id: str,
        k: int = 25,
    ) -> CategoryClassifier:
        index = {name: i for i, name in enumerate(categories)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise TaxonomyError(
                f"labels {unknown[:5]} are not categories of the taxonomy. Fix: add them to the "
                f"taxonomy file or relabel the data."
            )
        codes = np.array([index[label] for label in labels], dtype=np.int64)
        return cls(list(categories), vectors, codes, embedder_id, k=k)

    def _check(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.shape[1] != self.dim:
            raise TaxonomyError(
                f"query vector dimension {queries.shape[1]} != classifier dimension {self.dim}. "
                f"Fix: embed with the classifier's embedder ({self.embedder_id})."
            )
        return queries

    def _votes(self, queries: np.ndarray, neighbour_temperature: float) -> np.ndarray:
        """Similarity-weighted neighbour votes per category, normalized to sum to one."""
        n_cat = len(self.categories)
        out = np.zeros((len(queries), n_cat), dtype=np.float64)
        k = min(self.k, len(self.vectors))
        for start in range(0, len(queries), 512):
            block = queries[start : start + 512]
            sims = block @ self.vectors.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            top_sims = np.take_along_axis(sims, top, axis=1).astype(np.float64)
            weights = np.exp(
                (top_sims - top_sims.max(axis=1, keepdims=True)) / neighbour_temperature
            )
            rows = np.repeat(np.arange(len(block)), k)
            np.add.at(
                out[start : start + len(block)], (rows, self.labels[top].ravel()), weights.ravel()
            )
        out /= out.sum(axis=1, keepdims=True)
        return out

    def _calibrate(self, votes: np.ndarray, calibration_temperature: float) -> np.ndarray:
        logits = np.log(votes + self.floor) / calibration_temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict_proba(self, queries: np.ndarray) -> np.ndarray:
        """(n, n_categories) probabilities, rows summing to one."""
        if len(self.vectors) == 0:
            queries = self._check(queries)
            return np.full((len(queries), len(self.categories)), 1.0 / len(self.categories))
        votes = self._votes(self._check(queries), self.neighbour_temperature)
        return self._calibrate(votes, self.calibration_temperature)

    def calibrate(
        self,
        queries: np.ndarray,
        labels: Sequence[str],
        neighbour_grid: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2),
        calibration_grid: Sequence[float] = (0.5, 0.7, 1.0, 1.5, 2.0, 3.0),
    ) -> float:
        """Pick both temperatures by log-loss on held-out labelled queries; returns it."""
        queries = self._check(queries)
        index = {name: i for i, name in enumerate(self.categories)}
        truth = np.array([index[label] for label in labels])
        best = (math.inf, self.neighbour_temperature, self.calibration_temperature)
        for nt in neighbour_grid:
            votes = self._votes(queries, nt)
            for ct in calibration_grid:
                probs = self._calibrate(votes, ct)
                loss = float(-np.mean(np.log(probs[np.arange(len(truth)), truth] + 1e-12)))
                if loss < best[0]:
                    best = (loss, nt, ct)
        _, self.neighbour_temperature, self.calibration_temperature = best
        self.fitted_on["calibration"] = len(truth)
        return best[0]

    # --- persistence -------------------------------------------------------------------

    def save(self, path: Path | str) -> Path:
        """One .npz file, written atomically (temporary file, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": CLASSIFIER_FORMAT_VERSION,
            "categories": self.categories,
            "embedder_id": self.embedder_id,
            "k": self.k,
            "neighbour_temperature": self.neighbour_temperature,
            "calibration_temperature": self.calibration_temperature,
            "floor": self.floor,
            "fitted_on": self.fitted_on,
        }
        buffer = io.BytesIO()
        np.savez(buffer, vectors=self.vectors, labels=self.labels, meta=np.array(json.dumps(meta)))
        return write_bytes_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path | str, expected_embedder_id: str | None = None) -> CategoryClassifier:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                vectors, labels = data["vectors"], data["labels"]
        except FileNotFoundError as exc:
            raise TaxonomyError(
                f"{path}: no classifier here. Fix: build one with `emafusion memory build`."
            ) from exc
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise TaxonomyError(
                f"{path}: unreadable classifier ({type(exc).__name__}: {exc}). Fix: rebuild it "
                f"with `emafusion memory build`."
            ) from exc
        if meta.get("format_version") != CLASSIFIER_FORMAT_VERSION:
            raise TaxonomyError(f"{path}: format {meta.get('format_version')} is not supported.")
        if expected_embedder_id and meta["embedder_id"] != expected_embedder_id:
            raise TaxonomyError(
                f"{path}: built with embedder {meta['embedder_id']!r}, not "
                f"{expected_embedder_id!r}. Fix: rebuild it with the current embedder."
            )
        return cls(
            categories=list(meta["categories"]),
            vectors=vectors,
            labels=labels,
            embedder_id=meta["embedder_id"],
            k=int(meta["k"]),
            neighbour_temperature=float(meta["neighbour_temperature"]),
            calibration_temperature=float(meta["calibration_temperature"]),
            floor=float(meta["floor"]),
            fitted_on=dict(meta.get("fitted_on", {})),
        )
