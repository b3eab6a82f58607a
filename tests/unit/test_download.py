"""The download path, against a real HTTP server on 127.0.0.1, with small synthetic files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from emafusion.stores.download import (
    DATA_DIR_ENV,
    DATA_MIRROR_ENV,
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
)
from emafusion.stores.recordings import download as download_module

CONTENT = b"sample_id,prompt\n" + b"s.1,['a prompt']\n" * 2000


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_and_keeps_a_good_copy(
    file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = file_server
    (root / "tiny.csv").write_bytes(CONTENT)
    dest = tmp_path / "cache" / "tiny" / "tiny.csv"
    download_file(f"{base}/tiny.csv", dest, _sha(CONTENT))
    assert dest.read_bytes() == CONTENT and sha256_of(dest) == _sha(CONTENT)
    assert [p.name for p in dest.parent.iterdir()] == ["tiny.csv"]  # no temp files left


def test_corrupted_download_is_an_error_and_is_not_kept(
    file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = file_server
    (root / "tiny.csv").write_bytes(CONTENT[:-100] + b"x" * 100)
    dest = tmp_path / "cache" / "tiny.csv"
    with pytest.raises(ChecksumMismatchError, match="does not match the published"):
        download_file(f"{base}/tiny.csv", dest, _sha(CONTENT))
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_http_error_is_a_download_error(file_server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = file_server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{base}/missing.csv", tmp_path / "x.csv", "0" * 64)


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    # Port 9 (discard) on 127.0.0.1: refused at once, no network involved.
    with pytest.raises(DownloadError, match="failed.*Fix"):
        download_file("http://127.0.0.1:9/x.csv", tmp_path / "x.csv", "0" * 64, timeout_s=5)
    assert list(tmp_path.iterdir()) == []


def test_empty_cache_is_filled_from_a_mirror(
    file_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = file_server
    files = {"a.csv": CONTENT, "b.csv": CONTENT + b"s.2,['b']\n"}
    sources = tuple(
        SourceFile("tiny", name, _sha(data), "http://192.0.2.1/never")
        for name, data in files.items()
    )
    (root / "tiny").mkdir()
    for name, data in files.items():
        (root / "tiny" / name).write_bytes(data)
    monkeypatch.setitem(download_module.SOURCES, "tiny", sources)
    cache = tmp_path / "cache"
    env = {DATA_MIRROR_ENV: base}
    resolved = resolve_data_dir(env=env, shared_candidates=[], cache_dir=cache)
    assert resolved == cache
    assert source_url(sources[0], env) == f"{base}/tiny/a.csv"
    paths = dataset_files("tiny", resolved, env=env)
    assert [p.read_bytes() for p in paths] == list(files.values())
    # Present now: verified, not fetched again (the served copies are gone).
    for name in files:
        (root / "tiny" / name).unlink()
    assert dataset_files("tiny", resolved, env=env) == paths


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


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'.*--recordings"):
        dataset_files("nope", tmp_path)


def test_the_old_import_path_is_the_same_code() -> None:
    import emafusion.stores.download as old

    assert old.dataset_files is download_module.dataset_files
    assert old.DataError is DataError
