"""Presets: the operating points an evaluation chose, saved in the router directory.

    <router dir>/presets.json   {"format_version": 1, "presets": {NAME: {"settings": {...},
                                                                          "provenance": {...}}}}

`settings` are run settings (the fields of `emafusion.graph.Context`), `provenance` says
how they were chosen (split, figures at selection time, when, by what). The graph runs the
`default` preset unless a run names another; what is evaluated is what is served.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emafusion.stores.atomic import write_json_atomic

PRESETS_JSON = "presets.json"
FORMAT_VERSION = 1
DEFAULT_PRESET = "default"


class PresetError(ValueError):
    """A presets file that cannot be read, or a preset that does not exist; says the fix."""


@dataclass(frozen=True)
class Preset:
    name: str
    settings: Mapping[str, Any]
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PresetBook:
    presets: Mapping[str, Preset]
    source: Path | None = None

    def names(self) -> list[str]:
        return sorted(self.presets)

    def get(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            where = f" in {self.source}" if self.source else ""
            raise PresetError(
                f"unknown preset {name!r}{where}; presets: {', '.join(self.names()) or 'none'}. "
                f"Fix: name one of them, or run `emafusion eval` to write presets."
            ) from None

    def save(self, directory: Path | str) -> Path:
        data = {
            "format_version": FORMAT_VERSION,
            "presets": {
                name: {"settings": dict(p.settings), "provenance": dict(p.provenance)}
                for name, p in sorted(self.presets.items())
            },
        }
        return write_json_atomic(Path(directory) / PRESETS_JSON, data)


def load_presets(directory: Path | str) -> PresetBook | None:
    """The presets saved in a router directory, or None when there are none."""
    path = Path(directory) / PRESETS_JSON
    if not path.exists():
        return None
    fix = "Fix: rerun `emafusion eval` for this router directory, or delete the file."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PresetError(f"{path}: unreadable ({exc}). {fix}") from exc
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise PresetError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}. {fix}")
    raw = data.get("presets")
    if not isinstance(raw, dict):
        raise PresetError(f"{path}: 'presets' must be an object of NAME: preset. {fix}")
    presets = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("settings"), dict):
            raise PresetError(f"{path}: presets.{name}.settings must be an object. {fix}")
        provenance = entry.get("provenance", {})
        if not isinstance(provenance, dict):
            raise PresetError(f"{path}: presets.{name}.provenance must be an object. {fix}")
        presets[str(name)] = Preset(str(name), dict(entry["settings"]), dict(provenance))
    return PresetBook(presets, path)
