"""The router served: an OpenAI-compatible HTTP API (`create_app`, `run_server`) and a
LangChain chat model (`ChatEmaFusion`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emafusion.serve.settings import ApiKeys, ServeConfigError, ServeSettings, load_api_keys

if TYPE_CHECKING:
    from emafusion.serve.app import create_app
    from emafusion.serve.chat_model import ChatEmaFusion, RouterUnanswered
    from emafusion.serve.server import run_server

__all__ = [
    "ApiKeys",
    "ChatEmaFusion",
    "RouterUnanswered",
    "ServeConfigError",
    "ServeSettings",
    "create_app",
    "load_api_keys",
    "run_server",
]

_LAZY = {
    "create_app": "emafusion.serve.app",
    "ChatEmaFusion": "emafusion.serve.chat_model",
    "RouterUnanswered": "emafusion.serve.chat_model",
    "run_server": "emafusion.serve.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emafusion.serve' has no attribute {name!r}")
