"""OutcomeMemory: the learned kNN router's memory of past queries and model outcomes.

Prediction
----------
Every stored query has an embedding (searchable with FAISS, inner product on unit vectors),
a category, and per model that answered it at most one ground-truth outcome and at most one
judged outcome. For a new query the memory estimates each model's chance of success from
the outcomes of the nearest stored queries, shrunk toward a prior:

    p = (sum_i w_i * s_i + m * prior) / (sum_i w_i + m)

``w_i`` is a non-negative kernel of the similarity (optionally times a time decay), ``m`` the
shrinkage strength, and ``prior`` the model's mean score in the query's category (when that
category has enough records for the model), else its global mean shrunk toward its base
prior by the same ``m`` pseudo-outcomes, ``(sum_j s_j + m * base) / (n + m)`` (a model with one
lucky answer is not taken for one that is always right), where ``base`` is a declared prior
(``MemorySettings.model_priors``), else ``MemorySettings.default_prior``; with no outcome of
the model at all, the prior is ``base``. An exploration bonus
``c / sqrt(1 + sum_i w_i)`` is reported next to ``p`` (and folded into ``ucb``), never into it.
Time decay (``half_life_s``) scales the neighbour weights only; priors are plain means, kept as
running totals so neither `add` nor `predict` ever rescans the whole memory.

Outcome sources
---------------
``recording`` and ``user_feedback`` outcomes are ground truth, ``live_judged`` ones the
judges' estimate. They are stored apart per (query, model), and a judged outcome never
replaces ground truth. Where a (query, model) has ground truth, predictions use it; where it
only has a judged outcome, that counts with weight ``MemorySettings.judged_weight`` (default
0: judged outcomes move nothing until a caller measured the judges' calibration and set it).
Within ground truth, user feedback wins over a recording whatever their timestamps: the
feedback is what the user said about the very answer served, a recording is another run of
the same model on the query. Otherwise the newest outcome wins. Each `Prediction` reports
how many neighbours gave ground truth (``truth_count``, ``n_truth``) and how many judged
outcomes (``judged_count``, ``n_judged``). Costs and latencies are measured either way, so
judged outcomes' costs count in full.

A category given to `add` is a predicted category unless the caller says it is a label
(``category_is_label=True``); a predicted category never replaces a label. Priors use the
label when there is one, else the predicted category.

Vectors must be unit length (the embedders return them so). A vector whose norm is off by
more than ``NORM_TOLERANCE`` is rejected, unless ``MemorySettings(normalize_inputs=True)``,
in which case it is normalized. Zero, non-finite or wrong-sized vectors are always rejected.

Persistence: generations and the outcome log
--------------------------------------------
A memory directory holds

    MANIFEST.json              names the current generation, its log_end and lineage
    gen-000007-1a2b3c4d/       index.faiss, outcomes.npz, meta.json (a complete snapshot)
    log/seg-<start>.log        the outcome log: append-only, checksummed records
    .lock, log/.lock           flock files

``save(directory)`` writes a generation (building a fresh memory, e.g. from recordings);
``append(...)`` records outcomes durably with one small fsynced write to the log, safe from
many processes at once; ``load`` reads the current generation and replays the log after
its ``log_end``; ``refresh()`` tails the log from where this memory read it, picking up what
other processes appended; ``compact()`` folds the log into a new generation. Nothing that an
`append` acknowledged is ever lost: a torn record (writer killed mid-append) is dropped and
counted in ``log_report``, generations are replaced atomically, the log is only trimmed after
a generation holding it is published, and ``save`` over a directory merges what others
recorded there (see `OutcomeMemory.save`).

Storage interface
-----------------
`OutcomeStore` (in ``store.py``) is what the memory needs from storage, so that a
PostgreSQL implementation can sit behind the same calls as `LocalFileStore`:

    bind(embedder_id, dim)                 the embedder log entries are checked against
    exclusive() / shared()                 generation writers vs readers, across processes
    current() -> GenerationRef | None      name, embedder_id, log_end, lineage of the current one
    read_generation(ref) -> StoredGeneration
    write_generation(files, meta, *, log_end, lineage, embedder_id) -> name   (atomic)
    append(entries) -> list[int]           durable when it returns; positions only grow
    read_since(position) -> LogRead        entries at >= position, end, dropped records
    seal(position) -> LogRead              read_since, and later appends land at >= end
    discard_before(position)               drop log content a published generation holds

Modules: ``records`` (outcomes, settings, validation), ``results`` (prediction types),
``tables`` and ``estimator`` (in-memory state and learning), ``predictor`` (the estimate),
``snapshot`` and ``generations`` (generation files), ``log`` (the outcome log), ``store``
(the storage interface), ``outcome_memory`` (`OutcomeMemory`, which ties them together).
"""

from .generations import FORMAT_VERSION, INDEX_FILE, MANIFEST_FILE, GenerationRef
from .log import LogRead
from .outcome_memory import OutcomeMemory
from .persistence import LogReport
from .records import (
    NORM_TOLERANCE,
    SOURCES,
    LogEntry,
    MemorySettings,
    OutcomeMemoryError,
    OutcomeRecord,
    Source,
    StoredQuery,
)
from .results import PRIOR_SOURCES, BatchPrediction, Evidence, ModelStats, Prediction
from .store import LocalFileStore, OutcomeStore

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "NORM_TOLERANCE",
    "PRIOR_SOURCES",
    "SOURCES",
    "BatchPrediction",
    "Evidence",
    "GenerationRef",
    "LocalFileStore",
    "LogEntry",
    "LogRead",
    "LogReport",
    "MemorySettings",
    "ModelStats",
    "OutcomeMemory",
    "OutcomeMemoryError",
    "OutcomeRecord",
    "OutcomeStore",
    "Prediction",
    "Source",
    "StoredQuery",
]
