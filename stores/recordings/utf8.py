"""Bytes to text for every file the project reads, with the place where decoding failed.

A UnicodeDecodeError says "position 8193" in some buffer; a user needs the line and
column in their file. A leading byte-order mark (editors on Windows add one) is accepted.
"""

from __future__ import annotations

import codecs

BOM = codecs.BOM_UTF8


class NotUTF8Error(ValueError):
    """Bytes that are not UTF-8; `where` is "line L, column C (byte B)" of the input."""

    def __init__(self, line: int, column: int, offset: int, bad: bytes) -> None:
        self.line = line
        self.column = column
        self.offset = offset
        self.where = f"line {line}, column {column} (byte {offset})"
        super().__init__(
            f"{self.where}: byte 0x{bad[:1].hex()} is not UTF-8. Fix: save the file as "
            f"UTF-8 (or convert it, e.g. `iconv -f LATIN1 -t UTF-8`)"
        )


def decode_utf8(data: bytes, first_line: int = 1) -> str:
    """`data` as text, a leading BOM dropped; NotUTF8Error names the line and column.

    `first_line` is the line number `data` starts at, for callers that decode line by line.
    """
    skip = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = skip + exc.start
        start = max(skip, data.rfind(b"\n", 0, bad) + 1)
        line = first_line + data.count(b"\n", 0, bad)
        column = len(data[start:bad].decode("utf-8", "replace")) + 1
        raise NotUTF8Error(line, column, bad, data[bad : skip + exc.end]) from exc


def unencodable(text: str) -> int | None:
    """Index of the first character UTF-8 cannot encode (a lone surrogate), else None.

    Python string literals and stdlib JSON accept escapes such as "\\ud800"; such text
    cannot be written back out, so loaders refuse it where it enters.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
