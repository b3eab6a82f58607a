"""One entry point: recordings by published dataset name, or from a JSON Lines file.

Every command that reads recordings (eval, ask, serve, judges, the benchmarks) loads them
here, through the parsed-recordings cache (`emafusion.stores.recordings.cache`): the files
are still checked (the published ones against their sha256), parsing is skipped when the
cache holds exactly these files.
"""

from __future__ import annotations

from pathlib import Path

from emafusion.stores.recordings.cache import cached_load
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
        path = Path(recordings)
        if not path.is_file():  # the loader's own error names the fix
            return load_jsonl(path, skip_invalid=skip_invalid)
        return cached_load(
            "jsonl",
            [path],
            lambda: load_jsonl(path, skip_invalid=skip_invalid),
            {"skip_invalid": skip_invalid},
        )
    if dataset == "mmlu-pro":
        files = dataset_files("mmlu-pro", data_dir)
        return cached_load("mmlu-pro", files, lambda: load_mmlu_pro(files))
    if dataset == "routerbench":
        files = dataset_files("routerbench", data_dir)
        return cached_load("routerbench", files, lambda: load_routerbench(files))
    raise RecordingError(
        f"unknown dataset {dataset!r}. Fix: --dataset mmlu-pro|routerbench, or "
        f"--recordings FILE.jsonl for your own."
    )
