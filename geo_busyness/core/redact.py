"""Credentials out of URLs, and out of the messages and exceptions that carry URLs.

Everything that shows a URL to a person or stores it (Dagster metadata, run logs, step failure
messages, the CLI's output) passes it through :func:`redact_url` or, for a message that may
contain URLs, :func:`redact_text`. Both mask

* the password of a URL's userinfo, of any scheme (``http://alice:***@mlflow:5000``,
  ``postgresql://mlflow:***@db/mlflow``); a user name alone is kept: it is not a secret;
* the values of query (and fragment) parameters whose names look like secrets: ``token``,
  ``password``, ``secret``, ``sig``, ``signature``, ``key``, ``X-Amz-Credential``,
  ``X-Amz-Signature``, ``X-Amz-Security-Token``, ``access_token``, ``api_key``… (presigned S3
  and Azure SAS URLs, API keys), whatever their case.

The rest of the text is left exactly as it was, and redacting twice changes nothing.
:func:`redact_data` redacts every string of a JSON-like value; :func:`redact_exception` rewrites an exception's message (and those of its causes) in place,
so an error re-raised through Dagster or printed by Python keeps its type and its attributes
but loses the secrets; :func:`redacted_errors` does that for whatever a block raises.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote_plus

MASK = "***"

# A parameter is a secret when its name, lowercased with "-" as "_", is one of these...
SECRET_PARAMETERS = frozenset(
    {"sig", "key", "pwd", "pass", "auth", "authorization", "jwt", "session", "sas", "code"}
)
# ... or contains one of these.
SECRET_PARAMETER_PARTS = (
    "token",
    "password",
    "passwd",
    "secret",
    "signature",
    "credential",
    "api_key",
    "apikey",
    "accesskey",
    "access_key",
    "private_key",
)

# scheme://user:password@host — the password runs to the last "@" before the host, as
# urllib.parse splits it; characters that end a URL in running text end it here too.
_USERINFO = re.compile(
    r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"<>]*:)"
    r"(?P<password>[^\s/?#'\"<>]*)"
    r"(?P<host>@[^\s/?#@'\"<>]*)"
)
# ?name=value, &name=value or ;name=value (a path-only URL such as urllib3's "url: /a?b=c"
# counts too).
_PARAMETER = re.compile(r"(?P<lead>[?&;](?P<name>[^=&#?;\s'\"<>]+)=)(?P<value>[^&#;\s'\"<>)]*)")


def is_secret_parameter(name: str) -> bool:
    """Whether a query parameter called ``name`` carries a secret."""
    key = unquote_plus(name).strip().lower().replace("-", "_")
    return key in SECRET_PARAMETERS or any(part in key for part in SECRET_PARAMETER_PARTS)


def _mask_password(match: re.Match) -> str:
    password = match["password"]
    return match["prefix"] + (MASK if password else "") + match["host"]


def _mask_parameter(match: re.Match) -> str:
    if not match["value"] or not is_secret_parameter(match["name"]):
        return match[0]
    return match["lead"] + MASK


def redact_text(text: str) -> str:
    """``text`` with the password of every URL in it and every secret-looking query
    parameter value replaced by ``***``."""
    if not text or ("@" not in text and "=" not in text):
        return text
    return _PARAMETER.sub(_mask_parameter, _USERINFO.sub(_mask_password, text))


def redact_url(url: str) -> str:
    """``url`` without its password and secret query parameters (see the module doc)."""
    return redact_text(url)


def redact_data(value: Any) -> Any:
    """``value`` (JSON-like: mappings, lists, strings, numbers) with every string in it
    redacted (:func:`redact_text`), for metadata built from structured details."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


def redact_exception(error: BaseException) -> BaseException:
    """``error`` with secrets masked in its message (``args`` and a ``message`` attribute, as
    MLflow's exceptions have), and in those of the exceptions it was raised from or during.
    Changed in place; returned for ``raise redact_exception(error)``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        with contextlib.suppress(AttributeError, TypeError):
            current.args = tuple(
                redact_text(arg) if isinstance(arg, str) else arg for arg in current.args
            )
        message = getattr(current, "message", None)
        if isinstance(message, str):
            with contextlib.suppress(AttributeError, TypeError):
                current.message = redact_text(message)
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [redact_text(note) if isinstance(note, str) else note for note in notes]
        current = current.__cause__ or current.__context__
    return error


@contextlib.contextmanager
def redacted_errors() -> Iterator[None]:
    """Whatever the block raises leaves it with its secrets masked (:func:`redact_exception`)."""
    try:
        yield
    except BaseException as error:
        redact_exception(error)
        raise
