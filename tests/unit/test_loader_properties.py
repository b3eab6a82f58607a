"""Every loader, on any input file, returns a valid object or raises a clear error.

"Clear" means: an instance of the project's error type for that loader (DataError for
recordings, PoolError for pools), whose message names the file and says "Fix". Anything
else escaping (KeyError, TypeError, UnicodeDecodeError, BadZipFile, RecursionError,
csv.Error, ...) fails the property. Inputs are arbitrary bytes, and structured inputs that
are almost right: valid files with fields dropped, retyped, or replaced by arbitrary JSON
or TOML values, corrupted archives, ragged CSV rows.

EMAFUSION_PROPERTY_EXAMPLES scales the search (default 60 examples a property, a few
seconds in all); set it to thousands to hunt.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emafusion.stores.pool import Pool, PoolError, load_pool
from emafusion.stores.recordings import (
    DataError,
    Record,
    RecordSet,
    load_jsonl,
    load_mmlu_pro,
    load_routerbench,
    write_jsonl,
)

EXAMPLES = int(os.environ.get("EMAFUSION_PROPERTY_EXAMPLES", "60"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,  # file I/O on a shared machine; speed is not the property
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loader-properties")


def clear_or_valid(
    load: Callable[[], Any], path: Path, error: type[Exception], valid: type
) -> Any | None:
    """The loaded object (checked to be a `valid`), or None after a clear `error`."""
    try:
        result = load()
    except error as exc:
        message = str(exc)
        assert str(path) in message, message
        assert "Fix" in message, message
        return None
    assert isinstance(result, valid)
    return result


def assert_valid_recordings(records: RecordSet, workdir: Path) -> None:
    """A valid RecordSet: every record re-validates, and it writes out and reads back."""
    for record in records.records:
        Record.model_validate(record.model_dump())
    if records.records:
        out = workdir / "roundtrip.jsonl"
        write_jsonl(records.records, out)
        assert load_jsonl(out).records == records.records


# --- shared value strategies -------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Texts that stress decoders: surrogate escapes, BOMs, NULs, line breaks, non-ASCII.
AWKWARD_PIECES = [*"aB1 ,;:'\"[]{}()\\\n\r\t\x00\ufeff\u2028é€𝄞", "\\ud800", "\\u0000", "\ud800"]
awkward_text = st.lists(st.sampled_from(AWKWARD_PIECES), max_size=30).map("".join)


def mutate(base: dict[str, Any], draw: st.DrawFn, keys: list[str]) -> dict[str, Any]:
    """`base` with a few keys dropped, retyped to arbitrary JSON values, or added."""
    out = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*keys, "extra"]))
        action = draw(st.sampled_from(["drop", "retype", "retype"]))
        if action == "drop":
            out.pop(key, None)
        else:
            out[key] = draw(json_values | awkward_text)
    return out


# --- JSON Lines ---------------------------------------------------------------------------


def good_record(i: int) -> dict[str, Any]:
    return {
        "id": f"q{i}",
        "dataset": "mine",
        "category": "math",
        "query": "1+1?",
        "reference": "2",
        "outcomes": {"m": {"response": "2", "score": 1.0, "cost_usd": 0.001}},
    }


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    lines: list[str] = []
    for i in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["good", "bad record", "bad outcome", "json", "text"]))
        if kind == "good":
            lines.append(json.dumps(good_record(draw(st.integers(0, 8)))))
        elif kind == "bad record":
            lines.append(json.dumps(mutate(good_record(i), draw, list(good_record(i)))))
        elif kind == "bad outcome":
            record = good_record(i)
            outcome = record["outcomes"]["m"]
            record["outcomes"]["m"] = mutate(
                outcome, draw, [*outcome, "input_tokens", "output_tokens"]
            )
            lines.append(json.dumps(record))
        elif kind == "json":
            lines.append(json.dumps(draw(json_values)))
        else:
            lines.append(draw(awkward_text))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


@PROPERTY
@given(content=st.binary(max_size=600) | jsonl_files(), skip_invalid=st.booleans())
def test_jsonl_loader_is_clear_or_valid(workdir: Path, content: bytes, skip_invalid: bool) -> None:
    path = workdir / "mine.jsonl"
    path.write_bytes(content)
    loaded = clear_or_valid(lambda: load_jsonl(path, skip_invalid), path, DataError, RecordSet)
    if loaded is not None:
        assert loaded.records, "an empty RecordSet must be an error, not a value"
        assert_valid_recordings(loaded, workdir)


def test_jsonl_deep_nesting_is_clear(workdir: Path) -> None:
    path = workdir / "deep.jsonl"
    path.write_text('{"id": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert clear_or_valid(lambda: load_jsonl(path), path, DataError, RecordSet) is None


# --- MMLU-Pro zips ------------------------------------------------------------------------

MMLU_KEYS = ["question_id", "question", "options", "answer", "category", "pred"]


def good_row(qid: int) -> dict[str, Any]:
    return {
        "question_id": qid,
        "question": "Q?",
        "options": ["x", "y"],
        "answer": "B",
        "category": "math",
        "pred": "B",
        "model_outputs": "The answer is (B).",
    }


@st.composite
def mmlu_payloads(draw: st.DrawFn) -> bytes:
    entries: list[Any] = []
    for i in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["good", "good", "bad", "bad", "json"]))
        if kind == "good":
            entries.append(good_row(draw(st.integers(0, 6))))
        elif kind == "bad":
            entries.append(mutate(good_row(i), draw, [*MMLU_KEYS, "model_outputs"]))
        else:
            entries.append(draw(json_values))
    payload: Any = entries if draw(st.integers(0, 9)) else draw(json_values)
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:  # damaged JSON text
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(awkward_text) + text[cut:]
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"]))
    # surrogatepass: a lone surrogate reaches the file as its (invalid) UTF-8 bytes
    return text.encode(encoding, errors="replace" if encoding == "latin-1" else "surrogatepass")


@st.composite
def mmlu_zips(draw: st.DrawFn) -> bytes:
    buffer = io.BytesIO()
    method = draw(
        st.sampled_from(
            [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
        )
    )
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        names = ["a.json"]  # as published, mostly; else none, several, or no .json
        if draw(st.integers(0, 3)) == 0:
            names = draw(
                st.lists(st.sampled_from(["a.json", "dir/c.json", "readme.txt"]), max_size=3)
            )
        for name in dict.fromkeys(names):
            archive.writestr(name, draw(mmlu_payloads()))
    data = bytearray(buffer.getvalue())
    flips = draw(st.integers(0, 3)) if draw(st.integers(0, 2)) == 0 else 0
    for _ in range(flips):  # flipped bytes: headers, sizes, compressed data
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@PROPERTY
@given(content=st.binary(max_size=400) | mmlu_zips(), second=st.none() | mmlu_zips())
def test_mmlu_pro_loader_is_clear_or_valid(
    workdir: Path, content: bytes, second: bytes | None
) -> None:
    first = workdir / "model_outputs_one_5shots.zip"
    first.write_bytes(content)
    files = [first]
    if second is not None:
        files.append(workdir / "model_outputs_two_5shots.zip")
        files[1].write_bytes(second)
    try:
        loaded = load_mmlu_pro(files)
    except DataError as exc:
        message = str(exc)
        assert any(str(path) in message for path in files), message
        assert "Fix" in message, message
        return
    assert_valid_recordings(loaded, workdir)


def test_mmlu_pro_encrypted_member_is_clear(workdir: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.json", json.dumps([good_row(1)]))
    data = bytearray(buffer.getvalue())
    # Set the "encrypted" flag bit in the local and the central header.
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + flag_at
        data[at] |= 0x01
    path = workdir / "model_outputs_enc_5shots.zip"
    path.write_bytes(bytes(data))
    assert clear_or_valid(lambda: load_mmlu_pro([path]), path, DataError, RecordSet) is None


# --- RouterBench CSVs ---------------------------------------------------------------------

RB_COLUMNS = ["", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"]
RB_MODELS = ["m1", "m2"]


def rb_cell(column: str) -> st.SearchStrategy[str]:
    literal = st.lists(awkward_text, max_size=3).map(repr)
    number = st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.integers().map(str)
    anything = awkward_text | st.just("") | literal | number | json_values.map(repr)
    # Mostly plausible cells, so rows get past the framing into the per-cell checks.
    if column in ("prompt",) or column.endswith("|model_response"):
        return st.one_of(literal, literal, literal, anything)
    if column in RB_MODELS or column.endswith("|total_cost"):
        plausible = st.sampled_from(["0.0", "1.0", "0.5", "", "1e-05"])
        return st.one_of(plausible, plausible, plausible, number, anything)
    if column == "sample_id":
        ids = st.sampled_from(["s.1", "s.2", "s.3", "s.1", "s.2", " "])
        return st.one_of(ids, ids, ids, anything)
    names = st.sampled_from(["arc", "winogrande"])
    return st.one_of(names, names, names, anything)


@st.composite
def routerbench_csvs(draw: st.DrawFn) -> bytes:
    columns = [*RB_COLUMNS]
    for model in RB_MODELS:
        columns += [model, f"{model}|model_response", f"{model}|total_cost"]
    header = draw(st.permutations(columns))
    if draw(st.integers(0, 4)) == 0:  # a column lost, renamed or repeated
        header = draw(st.lists(st.sampled_from([*columns, "x", "x|y", ""]), max_size=12))
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row = [draw(rb_cell(column)) for column in header]
        if draw(st.integers(0, 19)) == 0:  # ragged
            row = row[: draw(st.integers(0, len(row)))] + draw(st.lists(awkward_text, max_size=2))
        rows.append(row)
    out = io.StringIO()
    if draw(st.integers(0, 5)):
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    else:  # unquoted: stray quotes, commas and line breaks break the framing
        out.write("\n".join(",".join(row) for row in [header, *rows]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return out.getvalue().encode(encoding, errors="replace")


@PROPERTY
@given(content=st.binary(max_size=600) | routerbench_csvs())
def test_routerbench_loader_is_clear_or_valid(workdir: Path, content: bytes) -> None:
    path = workdir / "tiny_test.csv"
    path.write_bytes(content)
    loaded = clear_or_valid(lambda: load_routerbench([path]), path, DataError, RecordSet)
    if loaded is not None:
        assert_valid_recordings(loaded, workdir)
        assert all(math.isfinite(v) for v in loaded.published_row_cost_per_1k.values())


def test_routerbench_deeply_nested_literal_is_clear(workdir: Path) -> None:
    path = workdir / "deep.csv"
    path.write_text("sample_id,prompt,eval_name,m\ns.1," + "[" * 10_000 + ",arc,1.0\n")
    assert clear_or_valid(lambda: load_routerbench([path]), path, DataError, RecordSet) is None


# --- pool files ---------------------------------------------------------------------------

toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.datetimes()
    | st.dates()
    | st.times()
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
MODEL_KEYS = [
    "name",
    "provider",
    "input_per_1m",
    "output_per_1m",
    "base_url",
    "api_key_env",
    "model",
    "max_tokens",
    "timeout_s",
]


def good_model(i: int) -> dict[str, Any]:
    return {"name": f"m{i}", "provider": "replay", "input_per_1m": 0.5, "output_per_1m": 1.5}


def mutate_toml(base: dict[str, Any], draw: st.DrawFn, keys: list[str]) -> dict[str, Any]:
    out = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*keys, "extra"]))
        if draw(st.booleans()):
            out.pop(key, None)
        else:
            out[key] = draw(toml_values | st.sampled_from(["openai", "replay", "inf", "nan"]))
    return out


@st.composite
def pool_files(draw: st.DrawFn) -> bytes:
    models: list[Any] = []
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["good", "bad", "value"]))
        if kind == "good":
            models.append(good_model(draw(st.integers(0, 3))))
        elif kind == "bad":
            models.append(mutate_toml(good_model(i), draw, MODEL_KEYS))
        else:
            models.append(draw(toml_values))
    document: dict[str, Any] = {"dataset": "routerbench", "models": models}
    if draw(st.integers(0, 3)) == 0:
        document = mutate_toml(document, draw, ["dataset", "models"])
    try:
        text = tomli_w.dumps(document)
    except (TypeError, ValueError):  # a mix TOML cannot express; write it as a string
        text = f"dataset = {json.dumps(str(document))}\n"
    if draw(st.integers(0, 5)) == 0:  # damaged syntax
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(awkward_text) + text[cut:]
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


@PROPERTY
@given(content=st.binary(max_size=400) | pool_files())
def test_pool_loader_is_clear_or_valid(workdir: Path, content: bytes) -> None:
    path = workdir / "pool.toml"
    path.write_bytes(content)
    pool = clear_or_valid(lambda: load_pool(path), path, PoolError, Pool)
    if pool is not None:
        assert pool.models and len(set(pool.names)) == len(pool.names)


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5_000 + "]" * 5_000,
        "a = " + "{b = " * 2_000 + "1" + "}" * 2_000,
        "\x00",
    ],
)
def test_pool_pathological_toml_is_clear(workdir: Path, text: str) -> None:
    path = workdir / "pool.toml"
    path.write_text(text)
    assert clear_or_valid(lambda: load_pool(path), path, PoolError, Pool) is None


def test_pool_unreadable_paths_are_clear(workdir: Path) -> None:
    folder = workdir / "pool-dir.toml"
    folder.mkdir(exist_ok=True)
    assert clear_or_valid(lambda: load_pool(folder), folder, PoolError, Pool) is None
    latin1 = workdir / "latin1.toml"
    latin1.write_bytes('dataset = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(PoolError, match=r"line 1, column 15 \(byte 14\).*not UTF-8"):
        load_pool(latin1)
    bom = workdir / "bom.toml"
    bom.write_text(tomli_w.dumps({"models": [good_model(1)]}), encoding="utf-8-sig")
    assert load_pool(bom).names == ["m1"]
