"""Runtime settings read from environment variables: pydantic-settings, and one line per wrong variable.

Each settings class is a `pydantic_settings.BaseSettings` with its `env_prefix` (or an alias for a
variable another contract names, such as Vertex AI's `AIP_*`); `read` builds one from the process
environment, or from a mapping a test or a subprocess passes, and turns a validation error into
`NAME='value' is not valid: what is allowed`, one line per variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

from pydantic import AliasChoices, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

S = TypeVar("S", bound=BaseSettings)

# pydantic's bound errors, said as the comparison the value must meet.
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


class SettingsError(ValueError):
    """An environment variable holds a value its setting does not allow; the message names it."""


def read(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: object) -> S:
    """Build `cls` from `environ` (default: the process environment); overrides that are not None win."""
    source = EnvSettingsSource(cls)
    source.env_vars = parse_env_vars(
        os.environ if environ is None else environ,
        source.case_sensitive,
        source.env_ignore_empty,
        source.env_parse_none_str,
    )
    aliases = {variables(cls, name)[0].lower(): name for name in cls.model_fields}
    values = {aliases.get(key.lower(), key): value for key, value in source().items()}
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(describe(exc, cls, environ)) from None


def variables(cls: type[BaseSettings], field: str) -> list[str]:
    """The environment variables that set `field`, first wins."""
    alias = cls.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"{cls.model_config.get('env_prefix', '')}{field}".upper()]


def describe(exc: ValidationError, cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> str:
    """One line per wrong variable: `NAME='value' is not valid: what is allowed`."""
    given = {key.upper() for key in (os.environ if environ is None else environ)}
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        names = variables(cls, field) if field in cls.model_fields else [field.upper()]
        name = next((n for n in names if n.upper() in given), names[0])
        lines.append(f"{name}={error['input']!r} is not valid: {allowed(error)}")
    return "\n".join(lines)


def allowed(error: ErrorDetails) -> str:
    """What the value must be, from a pydantic error (params.yaml's errors are said the same way)."""
    context = error.get("ctx") or {}
    if error["type"] in _BOUNDS:
        (limit,) = context.values()
        return f"must be {_BOUNDS[error['type']]} {limit:g}"
    if error["type"] == "too_short":
        return f"must have at least {context['min_length']} item(s)"
    if error["type"] == "bool_parsing":
        return "must be true or false"
    message = str(error["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    return message[:1].lower() + message[1:]
