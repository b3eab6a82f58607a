"""Presets: the graph runs the router directory's `default` preset; a run's explicit
settings override it; bad presets and unknown names are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emafusion.graph import Context, ContextError, make_graph
from emafusion.nodes.resources import RouterResources, checked_presets
from emafusion.nodes.settings import resolve
from emafusion.stores.presets import Preset, PresetBook, PresetError, load_presets
from emafusion.stores.recordings import RecordSet


def _book(tmp_path: Path) -> PresetBook:
    book = PresetBook(
        {
            "default": Preset("default", {"escalation_threshold": 0.91, "max_levels": 2}),
            "cheap": Preset("cheap", {"escalation_threshold": 0.3, "max_levels": 1}),
        }
    )
    book.save(tmp_path)
    loaded = load_presets(tmp_path)
    assert loaded is not None
    return loaded


def test_presets_round_trip_and_resolve(tmp_path: Path, tiny_resources: RouterResources) -> None:
    tiny_resources.presets = _book(tmp_path)
    default = resolve(Context(), tiny_resources)
    assert (default.escalation_threshold, default.max_levels) == (0.91, 2)
    cheap = resolve(Context(preset="cheap"), tiny_resources)
    assert (cheap.escalation_threshold, cheap.max_levels) == (0.3, 1)
    # What a run sets itself wins over the preset; the rest comes from the preset.
    mine = resolve(Context(preset="cheap", max_levels=3), tiny_resources)
    assert (mine.escalation_threshold, mine.max_levels) == (0.3, 3)
    with pytest.raises(ContextError, match="unknown preset 'max'.*cheap, default"):
        resolve(Context(preset="max"), tiny_resources)
    tiny_resources.presets = None
    assert resolve(Context(), tiny_resources) == Context()
    with pytest.raises(ContextError, match="has no presets"):
        resolve(Context(preset="cheap"), tiny_resources)


async def test_the_graph_runs_the_default_preset(
    tmp_path: Path, tiny_resources: RouterResources, synthetic_records: RecordSet
) -> None:
    tiny_resources.presets = _book(tmp_path)
    record = synthetic_records.split("test")[0]
    result = await make_graph(tiny_resources).ainvoke(
        {"query": record.query, "record_id": record.id}, context=Context(record_outcomes=False)
    )
    decided = [e["data"] for e in result["trace"] if e["event"] == "decided"]
    assert {d["threshold"] for d in decided} == {0.91}


def test_bad_presets_name_the_file_and_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "presets.json"
    path.write_text("{not json")
    with pytest.raises(PresetError, match=f"{path}: unreadable"):
        load_presets(tmp_path)
    path.write_text(json.dumps({"format_version": 1, "presets": {"x": {"settings": 3}}}))
    with pytest.raises(PresetError, match="presets.x.settings must be an object"):
        load_presets(tmp_path)
    bad = {"format_version": 1, "presets": {"fast": {"settings": {"max_levels": 0}}}}
    path.write_text(json.dumps(bad))
    with pytest.raises(PresetError, match="(?s)preset .fast. has invalid settings.*max_levels"):
        checked_presets(load_presets(tmp_path))
    path.write_text(json.dumps({"format_version": 1, "presets": {"p": {"settings": {"pool": 1}}}}))
    with pytest.raises(PresetError, match="(?s)cannot set pool"):
        checked_presets(load_presets(tmp_path))
    assert load_presets(tmp_path / "nowhere") is None
