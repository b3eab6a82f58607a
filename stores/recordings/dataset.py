"""One entry point: recordings by published dataset name, or from a JSON Lines file."""

from __future__ import annotations

from pathlib import Path

from emafusion.stores.recordings.download import dataset_files
from emafusion.stores.recordings.jsonl import load_jsonl
from emafusion.stores.recordings.mmlu_pro import load_mmlu_pro
from emafusion.stores.recordings.routerbench import load_routerbench
from emafusion.stores.recordings.schema import RecordingError, RecordSet


def load_dataset(
    dataset: str | None = None,
    recordings: Path | None = None,
    data_dir: Path | None = None,
    skip_invalid: bool = False,
) -> RecordSet:
    """Recordings by dataset name (published sets) or from a JSON Lines file."""
    if recordings is not None:
        return load_jsonl(Path(recordings), skip_invalid=skip_invalid)
    if dataset == "mmlu-pro":
        return load_mmlu_pro(dataset_files("mmlu-pro", data_dir))
    if dataset == "routerbench":
        return load_routerbench(dataset_files("routerbench", data_dir))
    raise RecordingError(
        f"unknown dataset {dataset!r}. Fix: --dataset mmlu-pro|routerbench, or "
        f"--recordings FILE.jsonl for your own."
    )
