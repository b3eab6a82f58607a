"""Where the recordings live, and how a missing copy is fetched and verified.

Resolution order for the data directory:
1. ``EMAFUSION_DATA_DIR`` (must exist; missing files are fetched into it);
2. ``../shared/data`` beside the project checkout (or beside the working directory);
3. a per-user cache directory, filled by downloading from the publishers' addresses.

Every file is checked against its published sha256 before use: a mismatch is an error,
never a silent use of a different file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import platformdirs

DATA_DIR_ENV = "EMAFUSION_DATA_DIR"
# A mirror laid out like the data directory (<mirror>/<dataset>/<file>); useful behind a
# proxy, and how the tests exercise the download path against a local server.
DATA_MIRROR_ENV = "EMAFUSION_DATA_MIRROR"

_MMLU_PRO_BASE = (
    "https://github.com/TIGER-AI-Lab/MMLU-Pro/raw/"
    "f418b116db00b065c2aea046518d8fcf74d39872/eval_results/"
)
_ROUTERBENCH_BASE = (
    "https://github.com/shuhao02/RouterDC/raw/"
    "0e63989c5bf4363330b8a4616386e3f7f116d9f8/datasets/routerbench_zs/"
)


@dataclass(frozen=True)
class SourceFile:
    dataset: str
    name: str
    sha256: str
    url: str

    @property
    def relative_path(self) -> str:
        return f"{self.dataset}/{self.name}"


def _mmlu(model: str, sha256: str) -> SourceFile:
    name = f"model_outputs_{model}_5shots.zip"
    return SourceFile("mmlu-pro", name, sha256, _MMLU_PRO_BASE + name)


def _rb(name: str, sha256: str) -> SourceFile:
    return SourceFile("routerbench", name, sha256, _ROUTERBENCH_BASE + name)


# The published files and their sha256, as listed in the data README's SHA256SUMS.
# fmt: off
SOURCES: dict[str, tuple[SourceFile, ...]] = {
    "mmlu-pro": (
        _mmlu("DeepSeek-Coder-V2", "7a1cb6f4f2dbb89c98d42c339f1b4008e8c33c5d48370822beef6826016a13d0"),
        _mmlu("Meta-Llama-3_1-70B-Instruct", "26573565138fcd27358a0945c9f525a7d9a75a756689058a0d5bfcbc64fa55cb"),
        _mmlu("Meta-Llama-3_1-8B-Instruct", "d5e76b2564b5baad90892c3664287a51f562a3be792a130acaec458b8560a1cf"),
        _mmlu("Mistral-7B-Instruct-v0.2", "ff1c5ae8a0f6412cca52537746f192476398c24590a3fb79e8f10c300ffa8248"),
        _mmlu("Mixtral-8x7B-Instruct-v0.1", "4716478ca233a86baa39b1c99452589191d8db3df3b398c871ff2832959408aa"),
        _mmlu("Phi-3-mini-4k-instruct", "7f45083108479ef586cc6c855325294c1220a9fcb614066abf22234a26d7037e"),
        _mmlu("Qwen1.5-72B-Chat", "a87935dfe3c349c06115a3b82e299dea30929a3b25ababc879394b58cc93c0b9"),
        _mmlu("Qwen1.5-7B-Chat", "e1819661f16044ee97734d292c9a7e40f38f9be0aae274642f07943ab69a37b5"),
        _mmlu("c4ai-command-r-v01", "246e2da80791811b1f5a283b40b4f7d62dafc5128d2653edcfe9b81557762e52"),
        _mmlu("gemini-1.5-flash-002", "fed3caed9a9c1bfc7da74e5116f70ffdb9023794d1677eb2f7d48a2a4adec2e7"),
        _mmlu("gemini-1.5-pro-002", "7d95c116e999dc15012d753e871bbbc8fd4e74b9feb49b992ea55247576af370"),
        _mmlu("jamba-1.5-large", "c4685b28a9b56fcb1270d9d2674f4989f5fc45129f3f635207d3543d67da1a15"),
        _mmlu("mathstral-7B", "c5613c4778e8dfe18d53015aa5f163fd86141cde22cdb7667f235d496e025f9a"),
    ),
    "routerbench": (
        _rb("arc_challenge_test.csv", "7bffb55faca2e1f9d19f7197c652884780a1e0f7fe14bad5b2b1c6afbe7a6769"),
        _rb("arc_challenge_train.csv", "59e044850520be06f74dd9766b9ab4621d783f7fa5269d7dda118b9abb115d78"),
        _rb("winograde_test.csv", "de7c8689d4b682c860b660988808ee2e40366b12076811e7891081facec4a2e1"),
        _rb("winograde_train.csv", "f6d54caab59bebb9facf3407c515a07a20faf4e75c639b7e91988ceaf312906a"),
    ),
}
# fmt: on

DATASETS = tuple(SOURCES)


class DataError(Exception):
    """A problem with the recordings on disk; the message names the file and the fix."""


class DataDirError(DataError):
    pass


class ChecksumMismatchError(DataError):
    pass


class DownloadError(DataError):
    pass


def _shared_candidates() -> list[Path]:
    project_root = Path(__file__).resolve().parents[2]  # stores/recordings/ -> checkout
    return [project_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def user_cache_data_dir() -> Path:
    return Path(platformdirs.user_cache_dir("emafusion")) / "data"


def resolve_data_dir(
    env: Mapping[str, str] | None = None,
    shared_candidates: list[Path] | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """The data directory by the documented order (see module docstring)."""
    env = os.environ if env is None else env
    explicit = env.get(DATA_DIR_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataDirError(
                f"{DATA_DIR_ENV}={explicit!r} is not a directory. Fix: create it "
                f"(missing recordings are then downloaded into it), point it at a copy of the "
                f"recordings, or unset it to use ../shared/data or the user cache."
            )
        return path
    for candidate in shared_candidates if shared_candidates is not None else _shared_candidates():
        if candidate.is_dir():
            return candidate
    return cache_dir if cache_dir is not None else user_cache_data_dir()


_sha256_lock = threading.Lock()
_sha256_memo: dict[tuple[int, int, int, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256, memoized per process on its identity (device, inode, size, mtime
    and ctime: any write changes ctime), so verifying a file and keying a cache by it read
    the file once."""
    stat = path.stat()
    memo_key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _sha256_lock:
        known = _sha256_memo.get(memo_key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    with _sha256_lock:
        _sha256_memo[memo_key] = digest.hexdigest()
    return digest.hexdigest()


def verify_file(path: Path, expected_sha256: str) -> None:
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ChecksumMismatchError(
            f"{path}: sha256 {actual} does not match the published {expected_sha256}. "
            f"Fix: delete the file and run `emafusion data fetch` to download it again "
            f"(or restore the original)."
        )


def download_file(url: str, dest: Path, expected_sha256: str, timeout_s: float = 120.0) -> Path:
    """Stream `url` to `dest`, verifying sha256 before the file appears under its name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as resp:
                    if resp.status_code != 200:
                        raise DownloadError(
                            f"GET {url} answered HTTP {resp.status_code}. Fix: check the "
                            f"network or set {DATA_MIRROR_ENV} / {DATA_DIR_ENV} to a copy."
                        )
                    for chunk in resp.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
            except httpx.HTTPError as exc:
                raise DownloadError(
                    f"GET {url} failed: {exc}. Fix: check the network or set "
                    f"{DATA_MIRROR_ENV} / {DATA_DIR_ENV} to a copy of the recordings."
                ) from exc
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise ChecksumMismatchError(
                f"{url}: downloaded sha256 {actual} does not match the published "
                f"{expected_sha256}; the file was not kept. Fix: retry, or use a trusted copy "
                f"via {DATA_DIR_ENV}."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def source_url(source: SourceFile, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    mirror = env.get(DATA_MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{source.relative_path}"
    return source.url


def dataset_files(
    dataset: str,
    data_dir: Path | None = None,
    download: bool = True,
    env: Mapping[str, str] | None = None,
) -> list[Path]:
    """Paths of a dataset's files, verified; missing ones fetched when `download`."""
    if dataset not in SOURCES:
        raise DataError(
            f"unknown dataset {dataset!r}. Fix: use one of {', '.join(DATASETS)}, "
            f"or pass your own recordings with --recordings FILE.jsonl."
        )
    root = data_dir if data_dir is not None else resolve_data_dir(env)
    paths = []
    for source in SOURCES[dataset]:
        path = root / source.relative_path
        if not path.exists():
            if not download:
                raise DataDirError(
                    f"{path} is missing. Fix: run `emafusion data fetch --dataset {dataset}`, "
                    f"or set {DATA_DIR_ENV} to a directory that holds the recordings."
                )
            download_file(source_url(source, env), path, source.sha256)
        else:
            verify_file(path, source.sha256)
        paths.append(path)
    return paths
