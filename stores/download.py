"""Kept for importers of `emafusion.stores.download`; the code is in recordings/download.py."""

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

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DATA_MIRROR_ENV",
    "SOURCES",
    "ChecksumMismatchError",
    "DataDirError",
    "DataError",
    "DownloadError",
    "SourceFile",
    "dataset_files",
    "download_file",
    "resolve_data_dir",
    "sha256_of",
    "source_url",
    "user_cache_data_dir",
    "verify_file",
]
