"""Keep API keys out of everything datagen stores or prints.

Servers quote keys in error messages ("Incorrect API key provided: sk-..."), and URLs can
carry credentials; every message that reaches a file or the terminal goes through
:func:`redact` first.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[REDACTED]"

# key-shaped tokens: provider prefixes (OpenAI/Anthropic sk-, Hugging Face hf_, GitHub gh*_,
# Google AIza, AWS AKIA), bearer tokens, key=value pairs and URL credentials
_PATTERNS = [
    (re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{16,}"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{6,}"), rf"\1{REDACTED}"),
    (
        re.compile(
            r"(?i)(\b(?:api[_-]?key|access[_-]?token|token|secret|password)[\"']?\s*[:=]\s*"
            r"[\"']?)[^\s\"'&,;]{4,}"
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"//[^/\s@]+@"), f"//{REDACTED}@"),
]


def redact(text: str, *secrets: str) -> str:
    """``text`` with each of ``secrets`` (and anything key-shaped) replaced by [REDACTED]."""
    for s in secrets:
        if s and len(s) >= 6:
            text = text.replace(s, REDACTED)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def env_secret(var: str) -> str:
    """The value of the key's environment variable ('' when unset)."""
    return os.environ.get(var, "")


def has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return bool(parts.username or parts.password)


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment: what may be stored in a manifest."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
