"""Errors of the cloud path, each a message that says what went wrong and what to do about it.

Imports no Google SDK: the CLI catches `CloudError` without loading the clients.
"""

from __future__ import annotations

from typing import Any


class CloudError(Exception):
    """A Google Cloud call failed in a way the user can act on; the message says how."""


def explain(exc: BaseException, doing: str) -> CloudError:
    """Turn an api_core error (403, 429, 404...) into a CloudError that says what to do."""
    code = getattr(exc, "code", None)
    message = _message(exc)
    hint = {
        401: "the credentials were refused: run `gcloud auth application-default login` again",
        403: "permission denied: check that the APIs are enabled (`edge setup`), that billing is on, "
        "and that your account has the role this call needs",
        404: "not found: check the project, region and names in edge.yaml (`edge config show`), "
        "or run `edge setup`",
        409: "it already exists, or another change is in flight: run the command again",
        429: "quota exceeded or too many requests: wait a minute and retry, or ask for more quota "
        "in the console (IAM & Admin > Quotas)",
    }.get(int(code) if isinstance(code, int) else 0, "")
    text = f"{doing} failed: {message}"
    return CloudError(f"{text} ({hint})" if hint else text)


def _message(exc: BaseException) -> str:
    message: Any = getattr(exc, "message", None) or str(exc)
    # api_core prefixes "<METHOD> <url>: "; the URL says nothing the user needs.
    text = str(message)
    if text.split(" ", 1)[0] in {"GET", "POST", "PATCH", "PUT", "DELETE"} and ": " in text:
        text = text.split(": ", 1)[1]
    return text.strip()
