"""Secrets never leave the process: passwords in URLs are masked wherever text is shown."""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host  ->  scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)(?P<secret>[^@/\s]*)@")
# libpq keyword form: password=secret
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'[^']*'|\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", url)


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask URL passwords, `password=` pairs and any known secret value in free text."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def url_secrets(*urls: str | None) -> tuple[str, ...]:
    """The passwords inside `urls`, so errors that quote them decoded can be masked too."""
    from urllib.parse import unquote

    found: list[str] = []
    for url in urls:
        match = _URL_PASSWORD.search(url or "")
        if match and match["secret"]:
            found += [match["secret"], unquote(match["secret"])]
    return tuple(found)
