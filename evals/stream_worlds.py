"""What each stream scenario changes: the stream (drift's degraded answers) or the router
(a model out of it, an empty memory, a category withheld from train)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from emafusion.nodes.resources import RouterResources
from emafusion.stores.answers import answer_key
from emafusion.stores.artifacts import build_router_artifacts
from emafusion.stores.memory import OutcomeMemory
from emafusion.stores.novelty import NoveltyRule
from emafusion.stores.pool import Pool
from emafusion.stores.providers import ReplayChatModel, ReplayStore
from emafusion.stores.recordings import Outcome, Record, RecordSet
from emafusion.stores.taxonomy import Taxonomy


def unit(*parts: object) -> float:
    """A number in [0, 1) fixed by its parts: seeded choices that do not depend on order."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --- drift ----------------------------------------------------------------------------------


def _wrong_response(stream: Sequence[Record], i: int, model: str) -> str:
    """A recorded answer that is wrong for query i, where the model was right: another
    model's wrong answer to it; else the model's own answer to an earlier query that
    commits to another answer here (a reply to another question); else nothing."""
    record = stream[i]
    for name in sorted(record.outcomes):
        outcome = record.outcomes[name]
        if name != model and outcome.score < 0.5 and outcome.response:
            return outcome.response
    own = record.outcomes[model].response
    right = answer_key(record.query, own)
    for j in [*range(i - 1, -1, -1), *range(i + 1, len(stream))]:
        other = stream[j].outcomes.get(model)
        text = other.response if other is not None else None
        if text and text != own and answer_key(record.query, text) != right:
            return text
    return ""


def degrade(
    stream: Sequence[Record], model: str, start: int, share: float, seed: int = 0
) -> tuple[list[Record], set[str]]:
    """The stream with `model`'s right answer replaced by a wrong recorded one, scored 0,
    on a seeded `share` of the queries from position `start` on (where it was wrong
    already, it stays so); and the ids replaced. Cost and tokens stay the recorded ones:
    the model got worse, not cheaper."""
    out, degraded = list(stream), set[str]()
    for i in range(start, len(stream)):
        record = stream[i]
        old = record.outcomes.get(model)
        if old is None or old.score < 0.5 or unit(seed, record.id, "drift") >= share:
            continue
        new = Outcome(
            response=_wrong_response(stream, i, model),
            score=0.0,
            cost_usd=old.cost_usd,
            input_tokens=old.input_tokens,
            output_tokens=old.output_tokens,
        )
        out[i] = record.model_copy(update={"outcomes": {**record.outcomes, model: new}})
        degraded.add(record.id)
    return out, degraded


def serve_degraded(resources: RouterResources, model: str, stream: Sequence[Record]) -> None:
    """`model` answers from the degraded recordings from now on (other models unchanged)."""
    records = resources.records
    others = [] if records is None else records.records
    replaced = {r.id: r for r in stream}
    merged = [replaced.get(r.id, r) for r in others] + [
        r for r in stream if records is None or records.get(r.id) is None
    ]
    name = records.name if records is not None else "stream"
    store = ReplayStore(RecordSet(name, merged, source="degraded replay"))
    resources.chat_models[model] = ReplayChatModel(
        model_name=model, prices=resources.pool.get(model).prices, store=store
    )


def emptied(resources: RouterResources) -> None:
    """`cold`: the memory holds nothing; what was fitted on it (fusion, presets) goes too."""
    old = resources.memory
    resources.memory = OutcomeMemory(old.dim, old.embedder_id, old.settings)
    resources.fusion, resources.presets = None, None


def largest_category(stream: Sequence[Record]) -> str:
    counts = Counter(r.category for r in stream)
    return max(counts, key=lambda c: (counts[c], c))


def withhold_category(resources: RouterResources, records: RecordSet, category: str) -> None:
    """`unseen-category`: the memory and classifier rebuilt from train without `category`
    (no rows, no label: its validation queries are not used to calibrate either)."""
    kept = RecordSet(
        records.name,
        [r for r in records.records if r.category != category],
        source=f"{records.source}, without category {category}",
    )
    taxonomy = Taxonomy(categories=[c for c in resources.taxonomy.categories if c.name != category])
    artifacts = build_router_artifacts(
        kept,
        resources.embedder,
        taxonomy,
        resources.pool,
        splits=("train",),
        calibrate_on="validation",
    )
    resources.memory, resources.classifier = artifacts.memory, artifacts.classifier
    resources.taxonomy = taxonomy
    resources.novelty = NoveltyRule.from_json(artifacts.info.get("novelty"))
    resources.fusion, resources.presets = None, None
    keep_judged_weight(resources)


def without_model(resources: RouterResources, records: RecordSet, model: str) -> Pool:
    """Take `model` out of the router: the pool without it, and the memory and classifier
    rebuilt from train as if it had never answered. Returns the full pool, for joining."""
    full = resources.pool
    pool = Pool(dataset=full.dataset, models=[m for m in full.models if m.name != model])
    stripped = RecordSet(
        records.name,
        [
            r.model_copy(update={"outcomes": {k: v for k, v in r.outcomes.items() if k != model}})
            for r in records.records
        ],
        source=f"{records.source}, without {model}",
    )
    artifacts = build_router_artifacts(
        stripped,
        resources.embedder,
        resources.taxonomy,
        pool,
        splits=("train",),
        calibrate_on="validation",
    )
    resources.memory, resources.classifier = artifacts.memory, artifacts.classifier
    # The evaluated fusion model and presets were fitted with it: they do not apply.
    resources.fusion, resources.presets = None, None
    resources.pool = pool
    keep_judged_weight(resources)
    return full


def keep_judged_weight(resources: RouterResources) -> None:
    """A rebuilt memory counts judged outcomes as the router measured (the judges and their
    calibration are the router's, not the memory's)."""
    if resources.judged is not None:
        resources.memory.weigh_judged(resources.judged.weight)
