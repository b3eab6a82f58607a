"""Recorded model outputs: the generic `Record` shape and the loaders that produce it.

One job per module: `schema` (Record, Outcome, RecordSet, the split rule, routing text),
`jsonl` (a user's own recordings), `mmlu_pro` and `routerbench` (the published sets),
`download` (where the published files live, fetched and sha256-checked), `dataset` (one
entry point by name), `utf8` (decoding with the place of a bad byte). Every loader either
returns a valid RecordSet or raises a `DataError` naming the file, the place and the fix.
"""

from emafusion.stores.recordings.dataset import load_dataset
from emafusion.stores.recordings.download import (
    DATA_DIR_ENV,
    DATA_MIRROR_ENV,
    DATASETS,
    SOURCES,
    ChecksumMismatchError,
    DataDirError,
    DataError,
    DownloadError,
    SourceFile,
    dataset_files,
    download_file,
    resolve_data_dir,
    sha256_of,
    source_url,
    user_cache_data_dir,
    verify_file,
)
from emafusion.stores.recordings.jsonl import load_jsonl, write_jsonl
from emafusion.stores.recordings.mmlu_pro import load_mmlu_pro, mmlu_pro_query, read_mmlu_pro_zip
from emafusion.stores.recordings.routerbench import load_routerbench
from emafusion.stores.recordings.schema import (
    SPLITS,
    Outcome,
    Record,
    RecordingError,
    RecordSet,
    Split,
    embedding_text,
    normalize_query,
    routing_text,
    split_of,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DATA_MIRROR_ENV",
    "SOURCES",
    "SPLITS",
    "ChecksumMismatchError",
    "DataDirError",
    "DataError",
    "DownloadError",
    "Outcome",
    "Record",
    "RecordSet",
    "RecordingError",
    "SourceFile",
    "Split",
    "dataset_files",
    "download_file",
    "embedding_text",
    "load_dataset",
    "load_jsonl",
    "load_mmlu_pro",
    "load_routerbench",
    "mmlu_pro_query",
    "normalize_query",
    "read_mmlu_pro_zip",
    "resolve_data_dir",
    "routing_text",
    "sha256_of",
    "source_url",
    "split_of",
    "user_cache_data_dir",
    "verify_file",
    "write_jsonl",
]
