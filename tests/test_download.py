"""The download path, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emafusion.stores.download import (
    DATA_DIR_ENV,
    DATA_MIRROR_ENV,
    SOURCES,
    ChecksumMismatchError,
    DataDirError,
    DownloadError,
    dataset_files,
    download_file,
    resolve_data_dir,
    sha256_of,
)


def _source(name: str):  # type: ignore[no-untyped-def]
    return next(s for s in SOURCES["routerbench"] if s.name == name)


def test_download_verifies_and_keeps_a_good_copy(
    file_server: tuple[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    base, root = file_server
    source = _source("winograde_test.csv")
    shutil.copy(data_dir / source.relative_path, root / source.name)
    dest = tmp_path / "cache" / source.relative_path
    download_file(f"{base}/{source.name}", dest, source.sha256)
    assert sha256_of(dest) == source.sha256
    assert [p.name for p in dest.parent.iterdir()] == [source.name]  # no temp files left


def test_corrupted_download_is_an_error_and_is_not_kept(
    file_server: tuple[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    base, root = file_server
    source = _source("winograde_test.csv")
    good = (data_dir / source.relative_path).read_bytes()
    (root / source.name).write_bytes(good[:-100] + b"x" * 100)
    dest = tmp_path / "cache" / source.relative_path
    with pytest.raises(ChecksumMismatchError, match="does not match the published"):
        download_file(f"{base}/{source.name}", dest, source.sha256)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_http_error_is_a_download_error(file_server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = file_server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{base}/missing.csv", tmp_path / "x.csv", "0" * 64)


def test_empty_cache_is_filled_from_a_mirror(
    file_server: tuple[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    base, root = file_server
    shutil.copytree(data_dir / "routerbench", root / "routerbench")
    cache = tmp_path / "cache"
    env = {DATA_MIRROR_ENV: base}
    resolved = resolve_data_dir(env=env, shared_candidates=[], cache_dir=cache)
    assert resolved == cache
    paths = dataset_files("routerbench", resolved, env=env)
    assert sorted(p.name for p in paths) == sorted(s.name for s in SOURCES["routerbench"])
    assert all(sha256_of(p) == s.sha256 for p, s in zip(paths, SOURCES["routerbench"], strict=True))


def test_resolution_order(tmp_path: Path) -> None:
    explicit, shared, cache = tmp_path / "explicit", tmp_path / "shared", tmp_path / "cache"
    explicit.mkdir()
    shared.mkdir()
    env = {DATA_DIR_ENV: str(explicit)}
    assert resolve_data_dir(env=env, shared_candidates=[shared], cache_dir=cache) == explicit
    assert resolve_data_dir(env={}, shared_candidates=[shared], cache_dir=cache) == shared
    assert resolve_data_dir(env={}, shared_candidates=[tmp_path / "no"], cache_dir=cache) == cache


def test_missing_explicit_data_dir_names_the_variable(tmp_path: Path) -> None:
    env = {DATA_DIR_ENV: str(tmp_path / "nowhere")}
    with pytest.raises(DataDirError, match=f"{DATA_DIR_ENV}=.*not a directory.*Fix"):
        resolve_data_dir(env=env)


def test_missing_files_without_download_say_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="emafusion data fetch --dataset routerbench"):
        dataset_files("routerbench", tmp_path, download=False)
