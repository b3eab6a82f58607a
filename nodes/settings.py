"""A run's effective settings: the preset it names (from the router directory), overridden
by every setting the run set explicitly. Resolved once when the run starts (classify) and
kept in the state, so every node and edge decides by the same settings."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from emafusion.graph.context import Context, ContextError
from emafusion.nodes.resources import RouterResources
from emafusion.stores.presets import DEFAULT_PRESET, PresetError


def resolve(context: Context | None, resources: RouterResources) -> Context:
    context = context or Context()
    book = resources.presets
    if book is None:
        if context.preset != DEFAULT_PRESET:
            raise ContextError(
                f"Context.preset={context.preset!r}, but the router directory has no presets. "
                f"Fix: run `emafusion eval` for it, or leave the preset unset."
            )
        return context
    if context.preset not in book.presets and context.preset == DEFAULT_PRESET:
        return context
    try:
        preset = book.get(context.preset)
    except PresetError as exc:
        raise ContextError(f"Context.preset: {exc}") from None
    chosen = {name: getattr(context, name) for name in context.model_fields_set}
    return Context(**{**preset.settings, **chosen, "preset": context.preset})


def current(state: Any, runtime: Runtime[Context]) -> Context:
    """The settings the run resolved at its start (before that: the run's context)."""
    settings = state.get("settings") if isinstance(state, dict) else None
    if settings is not None:
        return Context(**settings)
    return runtime.context or Context()
