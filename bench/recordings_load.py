"""Benchmark loading the published recordings: parsed from the files vs the parsed-recordings
cache (`emafusion.stores.recordings.cache`), and what that does to `emafusion ask`.

Every load runs in a fresh process (as `emafusion ask` or a server start does: nothing is
memoized in between), against a private cache directory (``--cache-dir``, default a
temporary one), and is timed inside the process from before `load_dataset` to after it
(imports excluded):

  * ``cold``: the cache off (EMAFUSION_RECORDINGS_CACHE=0): unzip/parse/validate, as before;
  * ``first load``: the cache empty: a cold load plus writing the cache (once per change);
  * ``warm``: the cache written: a cache hit.

Both still check every published file against its sha256. The ratio is cold / warm, by
medians of ``--repeats`` loads, all in one run. With ``--ask``, it also times whole
`emafusion ask --dataset mmlu-pro --record-id ...` commands (wall time by /usr/bin/time,
median of ``--ask-repeats``), cache off vs on, against a router directory built once
beforehand (``--router-dir``, default under the cache directory).

Usage:  .venv/bin/python bench/recordings_load.py [--datasets mmlu-pro,routerbench] [--ask]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tables import markdown  # bench/tables.py: the scripts run from bench/

from emafusion.stores.artifacts import ROUTER_MANIFEST

BIN = Path(sys.executable).parent

_TIMED_LOAD = """
import sys, time
from emafusion.stores.recordings import load_dataset
started = time.perf_counter()
records = load_dataset(sys.argv[1])
print(time.perf_counter() - started, len(records), sum(len(r.outcomes) for r in records.records))
"""


def _env(cache_dir: Path, cache: bool) -> dict[str, str]:
    """The recordings cache in `cache_dir`, on or off (the embeddings' cache as it is)."""
    env = dict(os.environ)
    env["EMAFUSION_RECORDINGS_CACHE_DIR"] = str(cache_dir / "recordings")
    env["EMAFUSION_RECORDINGS_CACHE"] = "1" if cache else "0"
    return env


def timed_load(dataset: str, cache_dir: Path, cache: bool) -> tuple[float, int, int]:
    """(seconds, records, outcomes) of one load in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _TIMED_LOAD, dataset],
        env=_env(cache_dir, cache),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def bench_dataset(dataset: str, cache_dir: Path, repeats: int) -> list[str]:
    shutil.rmtree(cache_dir / "recordings", ignore_errors=True)
    cold = [timed_load(dataset, cache_dir, cache=False) for _ in range(repeats)]
    first = timed_load(dataset, cache_dir, cache=True)
    warm = [timed_load(dataset, cache_dir, cache=True) for _ in range(repeats)]
    assert {c[1:] for c in cold} == {w[1:] for w in warm} == {first[1:]}  # same records
    size = sum(p.stat().st_size for p in (cache_dir / "recordings").glob("*.pickle"))
    cold_s = statistics.median(c[0] for c in cold)
    warm_s = statistics.median(w[0] for w in warm)
    return [
        dataset,
        f"{cold[0][1]:,} / {cold[0][2]:,}",
        f"{cold_s:.2f}",
        f"{first[0]:.2f}",
        f"{warm_s:.2f}",
        f"{cold_s / warm_s:.1f}x",
        f"{size / 1e6:.0f} MB",
    ]


def _ask_command(router_dir: Path, record_id: str) -> list[str]:
    return [
        str(BIN / "emafusion"),
        "ask",
        "--dataset",
        "mmlu-pro",
        "--router-dir",
        str(router_dir),
        "--record-id",
        record_id,
        "--no-record",
    ]


def timed_ask(router_dir: Path, record_id: str, cache_dir: Path, cache: bool) -> float:
    """Wall seconds of one `emafusion ask`, as /usr/bin/time reports them."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        subprocess.run(
            ["/usr/bin/time", "-f", "%e", "-o", report.name, *_ask_command(router_dir, record_id)],
            env=_env(cache_dir, cache),
            check=True,
            capture_output=True,
        )
        return float(report.read().split()[-1])


def bench_ask(router_dir: Path, record_id: str, cache_dir: Path, repeats: int) -> list[list[str]]:
    if not (router_dir / ROUTER_MANIFEST).exists():
        print(f"  building the router in {router_dir} (once)...", file=sys.stderr)
        started = time.perf_counter()
        subprocess.run(
            _ask_command(router_dir, record_id),
            env=_env(cache_dir, True),
            check=True,
            capture_output=True,
        )
        print(f"  built in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    timed_ask(router_dir, record_id, cache_dir, cache=True)  # the cache written
    before = [timed_ask(router_dir, record_id, cache_dir, cache=False) for _ in range(repeats)]
    after = [timed_ask(router_dir, record_id, cache_dir, cache=True) for _ in range(repeats)]
    b, a = statistics.median(before), statistics.median(after)
    return [
        ["cache off (as before)", " / ".join(f"{t:.2f}" for t in before), f"{b:.2f}", "1.0x"],
        ["cache on (warm)", " / ".join(f"{t:.2f}" for t in after), f"{a:.2f}", f"{b / a:.1f}x"],
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        type=lambda s: s.split(","),
        default=["mmlu-pro", "routerbench"],
        help="comma separated (default mmlu-pro,routerbench)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="loads per mode (median)")
    parser.add_argument("--ask", action="store_true", help="also time `emafusion ask`")
    parser.add_argument("--ask-repeats", type=int, default=3)
    parser.add_argument("--record-id", default="mmlu-pro/70", help="the query ask replays")
    parser.add_argument("--router-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a temporary one")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="emafusion-recordings-bench-"))
    print(
        f"emafusion recordings-load benchmark: python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, cache under {cache_dir}, {args.repeats} loads per mode, "
        f"each in a fresh process"
    )
    started = time.perf_counter()
    try:
        rows = [bench_dataset(d, cache_dir, args.repeats) for d in args.datasets]
        header = [
            "dataset",
            "records / outcomes",
            "cold s (parse)",
            "first load s (parse + write cache)",
            "warm s (cache hit)",
            "cold / warm",
            "cache file",
        ]
        print()
        print(markdown(header, rows))
        if args.ask:
            router_dir = args.router_dir or cache_dir / "router-mmlu-pro"
            ask_rows = bench_ask(router_dir, args.record_id, cache_dir, args.ask_repeats)
            print(
                f"\n`emafusion ask --dataset mmlu-pro --record-id {args.record_id} --no-record`"
                f", wall time (/usr/bin/time), {args.ask_repeats} runs each:\n"
            )
            print(markdown(["recordings", "runs s", "median s", "speed-up"], ask_rows))
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
