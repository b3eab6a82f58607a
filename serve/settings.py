"""How a server runs: its limits and its API keys. Only the deployment sets these (the
command line, environment variables); nothing here comes from a request.

API keys are bearer tokens read from a file (one a line, `#` comments) or from an
environment variable (comma- or whitespace-separated). They are kept as SHA-256 digests
and compared in constant time; the keys themselves are never logged nor echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from emafusion.stores.redaction import register_secret

# Short keys are guessable; a key this short is refused when loaded.
MIN_KEY_LENGTH = 16
LOOPBACK_NAMES = {"localhost"}


class ServeConfigError(ValueError):
    """A server setting that cannot be used; the message names it and the fix."""


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The accepted bearer keys, as digests. Empty: no authentication (loopback only)."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, keys: list[str] | tuple[str, ...], where: str = "the keys") -> ApiKeys:
        cleaned = [k.strip() for k in keys if k.strip()]
        short = [i for i, k in enumerate(cleaned, 1) if len(k) < MIN_KEY_LENGTH]
        if short:
            raise ServeConfigError(
                f"{where}: key number(s) {short} shorter than {MIN_KEY_LENGTH} characters. "
                f"Fix: use long random keys (e.g. `python -c 'import secrets; "
                f"print(secrets.token_urlsafe(32))'`)."
            )
        bad = [i for i, k in enumerate(cleaned, 1) if any(c.isspace() for c in k)]
        if bad:
            raise ServeConfigError(f"{where}: key number(s) {bad} contain whitespace.")
        for key in cleaned:
            register_secret(key)  # redacted wherever it might appear (errors, logs)
        return cls(tuple(key_digest(k) for k in cleaned))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def check(self, presented: str) -> bytes | None:
        """The digest of `presented` when it is an accepted key (constant time), else None."""
        digest = key_digest(presented)
        found = False
        for known in self.digests:
            found |= hmac.compare_digest(digest, known)
        return digest if found else None


def load_api_keys(file: Path | None = None, env: str | None = None) -> ApiKeys:
    """Keys from `file` or the environment variable named `env` (at most one of them)."""
    if file is not None and env is not None:
        raise ServeConfigError("give --api-keys-file or --api-keys-env, not both")
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeConfigError(
                f"--api-keys-file {file}: unreadable ({type(exc).__name__})"
            ) from None
        keys = [line.split("#", 1)[0] for line in text.splitlines()]
        loaded = ApiKeys.of(keys, where=str(file))
        if not loaded.enabled:
            raise ServeConfigError(f"--api-keys-file {file}: holds no key (one per line)")
        return loaded
    if env is not None:
        value = os.environ.get(env, "")
        loaded = ApiKeys.of(value.replace(",", " ").split(), where=f"${env}")
        if not loaded.enabled:
            raise ServeConfigError(f"--api-keys-env {env}: the variable is unset or empty")
        return loaded
    return ApiKeys()


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, keys: ApiKeys) -> None:
    """Serving beyond this machine without keys would hand the pool's credits to anyone."""
    if not keys.enabled and not is_loopback(host):
        raise ServeConfigError(
            f"refusing to listen on {host!r} without API keys: anyone who reaches it could "
            f"spend the pool's credits. Fix: pass --api-keys-file FILE or --api-keys-env VAR, "
            f"or listen on 127.0.0.1."
        )


@dataclass(frozen=True)
class ServeSettings:
    """Limits and keys of one server (the deployment's choices)."""

    api_keys: ApiKeys = field(default_factory=ApiKeys)
    max_body_bytes: int = 1_048_576  # 1 MiB: far past any chat, short of a memory attack
    max_messages: int = 128
    max_concurrency: int = 64  # chat completions in flight; past it: 429
    # Conversations remembered for `sticky` routing, and for how long.
    sticky_conversations: int = 10_000
    sticky_ttl_s: float = 3600.0
    # None: the run's default (Context.record_outcomes, i.e. $EMAFUSION_RECORD_OUTCOMES).
    record_outcomes: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_messages", "max_concurrency", "sticky_conversations"):
            if getattr(self, name) < 1:
                raise ServeConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sticky_ttl_s <= 0:
            raise ServeConfigError(f"sticky_ttl_s must be > 0, got {self.sticky_ttl_s}")
