"""Secrets kept out of everything the harness records: reports, engine metadata, errors, terminal lines.

A base URL may carry credentials (``http://user:pw@host/v1``) or a key in its query
(``?api_key=...``). The client sends them (as an ``Authorization`` header, or in the query it
must keep); everything that writes a URL or a message down passes it through here first.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"
# shorter secrets are masked inside URLs only: replacing "pw" in free text would garble every word holding it
MIN_SECRET = 4

# query or fragment parameters whose value is a credential (compared lower-cased)
SECRET_PARAMS = frozenset({
    "api_key", "api-key", "apikey", "key", "token", "access_token", "auth", "password", "secret",
    "client_secret", "sig", "signature", "x-api-key",
})

# a URL inside free text: stops at whitespace, quotes, brackets and commas (comma-separated replica lists)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>,`()]+")
# `user:pw@` right after `//`, for text urlsplit cannot parse
_USERINFO = re.compile(r"(//)[^/@\s]*@")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without ``user:password@``, and the (user, password) it carried, or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP Basic credentials."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _mask_params(text: str) -> str:
    def mask(pair: str) -> str:
        name, sep, value = pair.partition("=")
        return f"{name}={MASK}" if sep and value and unquote(name).lower() in SECRET_PARAMS else pair

    return "&".join(mask(pair) for pair in text.split("&")) if text else text


def redact_url(url: str) -> str:
    """The URL with its user:password replaced by ``***@`` and secret query values by ``***``;
    a URL without secrets comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a broken IPv6 host: still mask what looks like credentials
        return _USERINFO.sub(rf"\1{MASK}@", url)
    netloc = f"{MASK}@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    redacted = parts._replace(netloc=netloc, query=_mask_params(parts.query), fragment=_mask_params(parts.fragment))
    return url if redacted == parts else urlunsplit(redacted)


def url_secrets(url: str) -> list[str]:
    """The secret strings a URL carries (password, secret query values, the Basic header they make),
    raw and percent-encoded, for :func:`redact_text` to find where the URL's structure is lost."""
    found: list[str] = []
    clean, credentials = split_credentials(url)
    if credentials is not None:
        user, password = credentials
        if password:
            found.append(password)
        found.append(basic_auth(user, password).removeprefix("Basic "))
    try:
        parts = urlsplit(clean)
    except ValueError:
        return found
    for section in (parts.query, parts.fragment):
        for pair in section.split("&") if section else ():
            name, sep, value = pair.partition("=")
            if sep and value and unquote(name).lower() in SECRET_PARAMS:
                found += [value, unquote(value)]
    return found


def key_secrets(api_key: str | None) -> list[str]:
    """An API key as a secret to mask; values under 8 characters are placeholders (``EMPTY``, ``none``)
    that servers without auth are given, and masking them would garble text."""
    return [api_key] if api_key and len(api_key) >= 8 else []


def _variants(secrets: Iterable[str | None]) -> list[str]:
    found = {form for secret in secrets if secret for form in (secret, quote(secret, safe=""))
             if len(form) >= MIN_SECRET}
    return sorted(found, key=len, reverse=True)  # longest first: one secret may contain another


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every URL in it redacted and every given secret (and its percent-encoding)
    of at least ``MIN_SECRET`` characters replaced by ``***``."""
    if not text:
        return text
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    for secret in _variants(secrets):
        text = text.replace(secret, MASK)
    return text


def redact_data(value: Any, secrets: Iterable[str | None] = ()) -> Any:
    """A copy of JSON-like data (dicts, lists, strings) with :func:`redact_text` applied to every string."""
    variants = _variants(secrets)

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return redact_text(item, variants)
        if isinstance(item, dict):
            return {key: walk(val) for key, val in item.items()}
        if isinstance(item, (list, tuple)):
            return [walk(val) for val in item]
        return item

    return walk(value)
