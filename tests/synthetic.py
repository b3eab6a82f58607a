"""A small synthetic world for unit tests: recordings, a pool and a router built in well
under a second, with no recordings on disk and no MiniLM.

Three topics whose queries share topic words (so the hash embedder clusters them), four
models of rising price; "large" is right on most queries, "tiny" only on arithmetic, the
others in between. Answers commit to an option letter, so the offline judges have
something to read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from emafusion.nodes.resources import RouterResources
from emafusion.stores.artifacts import RouterArtifacts, build_router_artifacts
from emafusion.stores.embeddings import HashEmbedder
from emafusion.stores.pool import ModelSpec, Pool
from emafusion.stores.recordings import Outcome, Record, RecordSet
from emafusion.stores.taxonomy import Taxonomy

TOPICS = {
    "arithmetic": "sum product number add multiply integer digits arithmetic",
    "history": "empire war century king treaty revolution dynasty history",
    "biology": "cell protein gene organism enzyme species tissue biology",
}
# (price per 1M tokens, accuracy per topic)
MODELS = {
    "tiny": (0.1, {"arithmetic": 0.9, "history": 0.2, "biology": 0.2}),
    "small": (0.5, {"arithmetic": 0.6, "history": 0.6, "biology": 0.4}),
    "mid": (2.0, {"arithmetic": 0.7, "history": 0.75, "biology": 0.75}),
    "large": (10.0, {"arithmetic": 0.95, "history": 0.95, "biology": 0.9}),
}
LETTERS = "ABCD"


def _unit(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def query_text(topic: str, i: int) -> str:
    """Topic words in the question and the options: what the embedder can tell apart."""
    words = TOPICS[topic].split()
    picked = [words[(i * 3 + k) % len(words)] for k in range(8)]
    return f"Case {i}: {' '.join(picked[:4])}. Which holds?\n" + "\n".join(
        f"{letter}. {word}" for letter, word in zip(LETTERS, picked[4:], strict=True)
    )


def make_records(n_per_topic: int = 60, name: str = "synthetic") -> RecordSet:
    records = []
    for topic in TOPICS:
        for i in range(n_per_topic):
            rid = f"{name}/{topic}/{i}"
            reference = LETTERS[int(_unit(rid, "ref") * 4)]
            outcomes = {}
            for model, (price, accuracy) in MODELS.items():
                right = _unit(rid, model) < accuracy[topic]
                shift = 1 + int(_unit(rid, model, "w") * 3)
                wrong = LETTERS[(LETTERS.index(reference) + shift) % 4]
                letter = reference if right else wrong
                outcomes[model] = Outcome(
                    response=f"Reasoning about it. The answer is ({letter}).",
                    score=1.0 if right else 0.0,
                    cost_usd=price * 1e-4,
                    input_tokens=90,
                    output_tokens=10,
                )
            records.append(
                Record(
                    id=rid,
                    dataset=name,
                    category=topic,
                    query=query_text(topic, i),
                    reference=reference,
                    outcomes=outcomes,
                )
            )
    return RecordSet(name, records, source=f"synthetic ({len(records)} records)")


def make_pool() -> Pool:
    return Pool(
        models=[
            ModelSpec(name=m, provider="replay", input_per_1m=p, output_per_1m=p)
            for m, (p, _) in MODELS.items()
        ]
    )


def make_taxonomy() -> Taxonomy:
    return Taxonomy.from_names(list(TOPICS))


def make_artifacts(records: RecordSet, embedder: HashEmbedder | None = None) -> RouterArtifacts:
    return build_router_artifacts(
        records,
        embedder or HashEmbedder(),
        make_taxonomy(),
        make_pool(),
        splits=("train",),
        calibrate_on="validation",
    )


def make_resources(
    records: RecordSet | None = None,
    pool: Pool | None = None,
    replay_records: RecordSet | None = None,
    router_dir: Path | None = None,
    replay: bool = True,
    info: dict[str, object] | None = None,
) -> RouterResources:
    """Resources over synthetic recordings; `replay_records` (default: the same) answer
    the replay models (`replay=False`: a live pool, no recordings); `info`: ROUTER.json
    entries set over the built ones (for example a damaged one)."""
    records = records or make_records()
    embedder = HashEmbedder()
    artifacts = make_artifacts(records, embedder)
    artifacts.info.update(info or {})
    return RouterResources.create(
        pool or make_pool(),
        artifacts,
        embedder,
        make_taxonomy(),
        (replay_records if replay_records is not None else records) if replay else None,
        router_dir=router_dir,
    )


def write_deployment_files(directory: Path, records: RecordSet) -> tuple[Path, Path]:
    """The recordings (JSON Lines) and the pool (TOML) a deployment of this world reads."""
    from emafusion.stores.recordings import write_jsonl

    recordings = directory / "synthetic.jsonl"
    write_jsonl(records.records, recordings)
    pool = directory / "pool.toml"
    pool.write_text(
        "".join(
            f'[[models]]\nname = "{m}"\nprovider = "replay"\n'
            f"input_per_1m = {p}\noutput_per_1m = {p}\n\n"
            for m, (p, _) in MODELS.items()
        )
    )
    return recordings, pool
