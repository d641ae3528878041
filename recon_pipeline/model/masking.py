"""Secrets never leave the process: passwords in URLs are masked wherever text is shown.

URLs are read by the drivers' own parsers (SQLAlchemy's `make_url`, pymongo's URI parser),
so whatever a driver would take as a password is what gets masked: the userinfo password,
percent-encoded or not, and password-carrying options in the query string. The masked URL
keeps the rest of the text exactly as written, so an operator still sees which server.
"""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import sqlalchemy as sa
from pymongo.errors import InvalidURI
from pymongo.uri_parser import parse_userinfo, split_options

MASK = "***"

# Query-string options that carry a secret, lower-cased: libpq's `password`/`sslpassword`
# (`postgresql://host/db?user=u&password=s`), ODBC's `pwd`, MongoDB's TLS key password
# and `authMechanismProperties` (AWS_SESSION_TOKEN:...).
SECRET_OPTIONS = frozenset({"password", "pwd", "sslpassword", "tlscertificatekeyfilepassword",
                            "authmechanismproperties"})

# Free text is scanned for URL-looking substrings only to hand them to the parsers above.
_URL_CANDIDATE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>`]+")
_TRAILING_PUNCTUATION = ".,;:)]}!?"
# libpq keyword DSNs (`host=h password=s`) quoted in driver errors.
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'[^']*'|[^\s&]+)",
                               re.IGNORECASE)


class _Unparseable(ValueError):
    """The driver's parser refused the URL: it is masked whole."""


def _mongo_secrets(url: str) -> list[str]:
    """Secrets of a `mongodb://` or `mongodb+srv://` URL, read by pymongo's parser.

    `parse_uri` would resolve a `mongodb+srv` host in DNS; masking must never touch the
    network, so the URL is split the way `parse_uri` splits it and its userinfo and
    options go through the same public functions it uses (`parse_userinfo`,
    `split_options`). Hosts (one, several, or an SRV name) play no part in the secrets."""
    rest = url.partition("://")[2]
    hosts_and_db, _, options = rest.partition("?")
    host_part = hosts_and_db.partition("/")[0]
    found: list[str] = []
    try:
        if "@" in host_part:
            found.append(parse_userinfo(host_part.rpartition("@")[0])[1])
        parsed = split_options(options, validate=False, normalize=False) if options else {}
    except (InvalidURI, ValueError) as error:
        raise _Unparseable(str(error)) from None
    for name, value in parsed.items():
        if name.lower() in SECRET_OPTIONS:
            found += value if isinstance(value, list) else [str(value)]
    return found


def _sqlalchemy_secrets(url: str) -> list[str]:
    """Secrets of any other URL (`postgresql+psycopg://`, `https://`...), read by
    SQLAlchemy's `make_url`: the password and password-carrying query options."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as error:
        raise _Unparseable(str(error)) from None
    found = [parsed.password] if parsed.password else []
    for name, value in parsed.query.items():
        if name.lower() in SECRET_OPTIONS:
            found += [value] if isinstance(value, str) else list(value)
    return found


def _parsed_secrets(url: str) -> list[str]:
    scheme = url.partition("://")[0].lower()
    secrets = _mongo_secrets(url) if scheme in ("mongodb", "mongodb+srv") else (
        _sqlalchemy_secrets(url))
    return [secret for secret in secrets if secret]


def secret_forms(secret: str) -> set[str]:
    """Every spelling of a secret that text may carry: as given, percent-decoded (a
    driver's error quotes the decoded value) and percent-encoded (as written in a URL)."""
    forms = {secret, unquote(secret), unquote_plus(secret), quote(secret, safe=""),
             quote_plus(secret, safe=""), quote(secret, safe="!$&'()*+,;=")}
    return {form for form in forms if form}


def _replace(text: str, secrets: set[str]) -> str:
    # Longest first, so `p%40ss` is masked whole before `p` or `ss` could be.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _replace_in_url(url: str, secrets: set[str]) -> str:
    """Replace the secrets where a URL holds them: the userinfo password (`:secret@`) and
    the value of a secret option (`password=secret`). A username, host or other option
    that happens to spell the password stays readable."""
    alternatives = "|".join(map(re.escape, sorted(secrets, key=len, reverse=True)))
    options = "|".join(sorted(SECRET_OPTIONS))
    return re.sub(rf"(?P<head>:|[?&;](?i:{options})=)(?:{alternatives})(?=[@&;#]|$)",
                  lambda m: f"{m['head']}{MASK}", url)


def _scheme_only(url: str) -> str:
    return f"{url.partition('://')[0]}://{MASK}"


def mask_url(url: str) -> str:
    """`url` with its secrets replaced by `***`, everything else as written.

    A URL the parser refuses, or one whose secret is spelled in a way the replacement
    missed (say, needlessly encoded characters), is masked whole but for its scheme."""
    try:
        secrets = _parsed_secrets(url)
    except _Unparseable:
        return url if "@" not in url and "password" not in url.lower() else _scheme_only(url)
    if not secrets:
        return url
    masked = _replace_in_url(url, {form for secret in secrets for form in secret_forms(secret)})
    try:
        left = _parsed_secrets(masked)
    except _Unparseable:
        return _scheme_only(url)
    return masked if all(secret == MASK for secret in left) else _scheme_only(url)


def _mask_candidate(match: re.Match[str]) -> str:
    candidate = match.group(0)
    trailing = len(candidate) - len(candidate.rstrip(_TRAILING_PUNCTUATION))
    url, rest = candidate[:len(candidate) - trailing], candidate[len(candidate) - trailing:]
    return mask_url(url) + rest


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask free text (an error message, a log line): every known secret value in all its
    spellings, then the secrets of any URL found in it, then libpq `password=` pairs."""
    text = _replace(text, {form for secret in secrets if secret
                           for form in secret_forms(secret)})
    text = _URL_CANDIDATE.sub(_mask_candidate, text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def url_secrets(*urls: str | None) -> tuple[str, ...]:
    """The secrets inside `urls` in every spelling, so that errors quoting them (decoded,
    say) can be masked too. A URL its parser refuses contributes nothing here; text that
    quotes it is still masked by `mask_text`'s URL scan."""
    found: set[str] = set()
    for url in urls:
        if not url:
            continue
        try:
            secrets = _parsed_secrets(url)
        except _Unparseable:
            continue
        found |= {form for secret in secrets for form in secret_forms(secret)}
    return tuple(sorted(found, key=len, reverse=True))
