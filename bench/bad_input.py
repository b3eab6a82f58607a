"""Bad input, tried as a careless or hostile user would: is each one a clear error?

Each case feeds one damaged or hostile input to the real loader, router directory, run
context or CLI, and the outcome is classed:
  * clear error: the project's own error, naming where (the file, line or field) and a fix;
  * unclear error: the project's own error, without the place or without a fix;
  * crash: any other exception (a traceback for the user);
  * silent wrong: accepted;
and, for the router directory, whether what was stored before is still there afterwards
(data lost). The router's memory and classifier are the synthetic test world's
(tests/synthetic.py) with the hash embedder: no recordings or embedding model needed.

Usage:  .venv/bin/python bench/bad_input.py [--verbose]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydantic  # noqa: E402

import emafusion.nodes.resources as resources_module  # noqa: E402
from emafusion.cli.main import main as cli_main  # noqa: E402
from emafusion.graph.context import Context  # noqa: E402
from emafusion.nodes.resources import DeploymentSettings, load_router  # noqa: E402
from emafusion.stores.embeddings import HashEmbedder  # noqa: E402
from emafusion.stores.pool import load_pool  # noqa: E402
from emafusion.stores.recordings import DataError, load_jsonl, write_jsonl  # noqa: E402
from emafusion.stores.taxonomy import load_taxonomy  # noqa: E402
from tests import synthetic  # noqa: E402

OWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, DataError, pydantic.ValidationError)
# A message that says what is valid, or what to do, counts as giving the fix.
FIX_WORDS = (
    "fix",
    "use ",
    "pass ",
    "set ",
    "rebuild",
    "run ",
    "give ",
    "name ",
    "one of",
    "must",
    "should be",
    "expected",
    "raise ",
)


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    run: Callable[[Path], object]  # raises on refusal
    where: str  # what a clear message names ('' = the field name in `name`)
    check_kept: Callable[[Path], bool] | None = None
    # A valid input: accepted is right when this holds of what was returned.
    valid: Callable[[object], bool] | None = None


@dataclass(frozen=True)
class Outcome:
    kind: str  # clear | read | unclear | crash | silent
    message: str
    lost: bool


def classify(case: Case, workdir: Path) -> Outcome:
    try:
        returned = case.run(workdir)
    except OWN_ERRORS as exc:
        text = str(exc)
        named = case.where.lower() in text.lower()
        fix = any(word in text.lower() for word in FIX_WORDS)
        kind = "clear" if named and fix else "unclear"
    except SystemExit as exc:  # argparse's refusal: a usage line, exit code 2
        text, kind = f"exit {exc.code}", "clear" if exc.code == 2 else "crash"
    except Exception as exc:  # noqa: BLE001 - anything else is what the user would see
        text, kind = f"{type(exc).__name__}: {exc}", "crash"
    else:
        ok = case.valid is not None and case.valid(returned)
        text, kind = ("read correctly", "read") if ok else ("accepted", "silent")
    lost = case.check_kept is not None and not case.check_kept(workdir)
    return Outcome(kind, text, lost)


# ------------------------------------------------------------------------ the inputs


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _one_query_reads(records: object) -> bool:
    loaded = getattr(records, "records", [])
    return len(loaded) == 1 and loaded[0].id == "q1" and loaded[0].query == "2+2?"


def _good_line() -> dict[str, object]:
    return {
        "id": "q1",
        "dataset": "mine",
        "category": "math",
        "query": "2+2?",
        "reference": "4",
        "outcomes": {"m": {"response": "4", "score": 1.0, "cost_usd": 0.001}},
    }


def recordings_cases() -> list[Case]:
    def jsonl(name: str, content: bytes | str) -> Callable[[Path], object]:
        return lambda d: load_jsonl(_write(d / name, content))

    good = json.dumps(_good_line())
    variants: dict[str, tuple[bytes | str, str]] = {
        "empty file": (b"", "empty.jsonl"),
        "not UTF-8": (good.encode().replace(b"2+2", b"2\xff2") + b"\n", "latin.jsonl"),
        "truncated line": (good[:40] + "\n", "cut.jsonl"),
        "a JSON array": ("[" + good + "]\n", "array.jsonl"),
    }
    cases = [Case("recordings", n, jsonl(f, c), f) for n, (c, f) in variants.items()]
    # Valid input in a form editors write: read, and read right (the check raises if not).
    bom = jsonl("bom.jsonl", b"\xef\xbb\xbf" + good.encode() + b"\n")
    cases.append(Case("recordings", "UTF-8 BOM (valid)", bom, "", valid=_one_query_reads))
    field_breaks: dict[str, Callable[[dict], None]] = {
        "score 1.5": lambda r: r["outcomes"]["m"].update(score=1.5),
        "cost NaN": lambda r: r["outcomes"]["m"].update(cost_usd=math.nan),
        "cost negative": lambda r: r["outcomes"]["m"].update(cost_usd=-1),
        "id missing": lambda r: r.pop("id"),
        "query a number": lambda r: r.update(query=5),
        "unknown field": lambda r: r.update(colour="red"),
        "no outcomes": lambda r: r.update(outcomes={}),
    }
    for name, breaks in field_breaks.items():
        record = _good_line()
        record["id"] = "q2"
        breaks(record)
        text = good + "\n" + json.dumps(record, allow_nan=True) + "\n"
        cases.append(Case("recordings", name, jsonl("fields.jsonl", text), "fields.jsonl:2"))
    twice = good + "\n" + good + "\n"
    cases.append(Case("recordings", "duplicate id", jsonl("dup.jsonl", twice), "q1"))
    return cases


POOL_MODEL = '[[models]]\nname = "m"\nprovider = "replay"\ninput_per_1m = 1\noutput_per_1m = 1\n'


def pool_cases() -> list[Case]:
    def pool(text: bytes | str) -> Callable[[Path], object]:
        return lambda d: load_pool(_write(d / "pool.toml", text))

    variants = {
        "TOML syntax": ('[[models]\nname = "m"\n', "pool.toml"),
        "no models": ("dataset = 'x'\n", "models"),
        "negative price": (POOL_MODEL.replace("input_per_1m = 1", "input_per_1m = -1"), "input"),
        "NaN price": (POOL_MODEL.replace("input_per_1m = 1", "input_per_1m = nan"), "input"),
        "unknown provider": (POOL_MODEL.replace('"replay"', '"carrier-pigeon"'), "provider"),
        "duplicate model": (POOL_MODEL + "\n" + POOL_MODEL, "m"),
        "a key inline": (POOL_MODEL + 'api_key = "sk-secret"\n', "api_key"),
        "openai without base_url": (POOL_MODEL.replace('"replay"', '"openai"'), "base_url"),
        "timeout 0": (POOL_MODEL + "timeout_s = 0\n", "timeout"),
        "binary file": (b"\x00\x01\xff", "pool.toml"),
    }
    cases = [Case("pool", n, pool(t), w) for n, (t, w) in variants.items()]
    cases.append(Case("pool", "missing file", lambda d: load_pool(d / "nope.toml"), "nope.toml"))
    return cases


def taxonomy_cases() -> list[Case]:
    def taxonomy(name: str, text: bytes | str) -> Callable[[Path], object]:
        return lambda d: load_taxonomy(_write(d / name, text))

    return [
        Case("taxonomy", "not TOML", taxonomy("t.toml", "[categories"), "t.toml"),
        Case("taxonomy", "no categories", taxonomy("t2.toml", "name = 'x'\n"), "t2.toml"),
        Case("taxonomy", "binary file", taxonomy("t3.toml", b"\x00\xff"), "t3.toml"),
        Case("taxonomy", "missing file", lambda d: load_taxonomy(d / "none.toml"), "none.toml"),
    ]


def _deployment(workdir: Path) -> DeploymentSettings:
    world = workdir / "world"
    if not world.exists():
        world.mkdir()
        synthetic.write_deployment_files(world, synthetic.make_records(12))
    return DeploymentSettings(
        recordings=world / "synthetic.jsonl",
        pool=world / "pool.toml",
        router_dir=workdir / "router",
    )


def _fresh_router(workdir: Path) -> tuple[DeploymentSettings, int]:
    deployment = _deployment(workdir)
    router = deployment.router_dir
    assert router is not None
    if router.exists():
        import shutil

        shutil.rmtree(router)
    stored = len(load_router(deployment).memory.records())
    return deployment, stored


def router_cases() -> list[Case]:
    def damaged(relative: str, data: bytes | None) -> Callable[[Path], object]:
        def run(workdir: Path) -> object:
            deployment, stored = _fresh_router(workdir)
            assert deployment.router_dir is not None
            (workdir / "stored.txt").write_text(str(stored))
            target = deployment.router_dir / relative
            if data is None:
                target.unlink()
            else:
                target.write_bytes(data)
            return load_router(deployment)

        return run

    def kept(workdir: Path) -> bool:
        """What was stored before is there once the damage is undone by the user's fix."""
        memory = workdir / "router" / "memory"
        return memory.exists() and any(memory.iterdir())

    def other_recordings(workdir: Path) -> object:
        deployment, _ = _fresh_router(workdir)
        other = workdir / "other.jsonl"
        write_jsonl(synthetic.make_records(13, name="other").records, other)
        return load_router(replace(deployment, recordings=other))

    def named_file(name: str) -> str:
        return name.rsplit("/", 1)[-1]

    files = {
        "classifier.npz damaged": ("classifier.npz", b"PK\x03\x04garbage"),
        "ROUTER.json missing (memory kept)": ("ROUTER.json", None),
        "ROUTER.json not JSON": ("ROUTER.json", b"{"),
        "presets.json not JSON": ("presets.json", b"[1,"),
        "fusion.json wrong shape": ("fusion.json", b'{"format_version": 99}'),
    }
    cases = [
        Case("router dir", n, damaged(f, b), named_file(f), check_kept=kept)
        for n, (f, b) in files.items()
    ]
    cases.append(
        Case("router dir", "built for other recordings", other_recordings, "recordings", kept)
    )
    return cases


def context_cases() -> list[Case]:
    settings: dict[str, dict[str, object]] = {
        "budget negative": {"budget_usd": -1.0},
        "budget NaN": {"budget_usd": math.nan},
        "escalation_threshold 1.5": {"escalation_threshold": 1.5},
        "escalation_threshold NaN": {"escalation_threshold": math.nan},
        "max_levels 0": {"max_levels": 0},
        "router_dir (a path)": {"router_dir": "/tmp/x"},
        "api_key_env (a variable)": {"api_key_env": "HOME"},
        "base_url": {"base_url": "http://attacker"},
        "judge_pool (a path)": {"judge_pool": "/etc/passwd"},
        "unknown_setting": {"unknown_setting": 1},
    }
    return [
        Case("run context", n, lambda _d, s=s: Context(**s), n.split(" ")[0])
        for n, s in settings.items()
    ]


def cli_cases() -> list[Case]:
    def cli(*argv: str) -> Callable[[Path], object]:
        def run(workdir: Path) -> object:
            deployment = _deployment(workdir)
            world = ["--recordings", str(deployment.recordings), "--pool", str(deployment.pool)]
            world += ["--router-dir", str(deployment.router_dir)]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = cli_main([*argv, *(world if argv[0] == "ask" else [])])
            if code == 0:
                return code
            raise ValueError(err.getvalue())  # the message the user saw, with code != 0

        return run

    return [
        Case("CLI", "ask --budget 0", cli("ask", "--budget", "0", "hi"), "budget"),
        Case("CLI", "ask --threshold nan", cli("ask", "--threshold", "nan", "hi"), "threshold"),
        Case("CLI", "ask --max-levels 0", cli("ask", "--max-levels", "0", "hi"), "max_levels"),
        Case("CLI", "ask --preset nope", cli("ask", "--preset", "nope", "hi"), "nope"),
        Case(
            "CLI",
            "data check missing file",
            cli("data", "check", "--recordings", "/x.jsonl"),
            "/x.jsonl",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--verbose", action="store_true", help="print every case's message")
    args = parser.parse_args()
    # The hash embedder stands in for MiniLM: same interface, no model to load.
    resources_module.default_embedder = lambda *a, **k: HashEmbedder()  # type: ignore[assignment]
    cases = [
        *recordings_cases(),
        *pool_cases(),
        *taxonomy_cases(),
        *router_cases(),
        *context_cases(),
        *cli_cases(),
    ]
    table: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            workdir = Path(tmp) / f"case{i}"
            workdir.mkdir()
            outcome = classify(case, workdir)
            row = table.setdefault(
                case.category,
                dict.fromkeys(("cases", "read", "clear", "unclear", "crash", "silent", "lost"), 0),
            )
            row["cases"] += 1
            row[outcome.kind] += 1
            row["lost"] += int(outcome.lost)
            if args.verbose or outcome.kind != "clear" or outcome.lost:
                print(
                    f"[{outcome.kind}{', data lost' if outcome.lost else ''}] "
                    f"{case.category}: {case.name}: {outcome.message[:300]}"
                )
    print()
    print(
        "| category | cases tried | clear errors | valid, read right | unclear errors "
        "| crashes | silent wrong | data lost |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for category, row in table.items():
        print(
            f"| {category} | {row['cases']} | {row['clear']} | {row['read']} | {row['unclear']} "
            f"| {row['crash']} | {row['silent']} | {row['lost']} |"
        )


if __name__ == "__main__":
    main()
