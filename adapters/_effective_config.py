"""The effective configuration as YAML, every secret masked (``sansproxy check-config``).

Everything a validated ``ProxyConfig`` holds, defaults included, in the shape of
``config.example.yaml``; what could let someone in is replaced by ``***``: any
``SecretStr`` (``api_key``, ``limits.redis_url``), any option whose name says it
is a key, a hash, a secret, a password or a token (``key_sha256``,
``admin_key_sha256``, a custom middleware's ``api_key`` ...), and the values of
credential headers (``authorization``, ``x-api-key``, ``api-key`` ...). An unset
secret stays ``null``: knowing there is none gives nothing away.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from core import ProxyConfig

__all__ = ["MASK", "effective_config"]

#: What a secret is shown as.
MASK = "***"
#: Option names (or ``_``-separated endings) whose values are secrets.
_SECRET_WORDS = ("key", "api_key", "secret", "password", "token", "hash", "sha256", "credentials")
#: Header names whose values are credentials.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "x-goog-api-key"}
)


def effective_config(config: ProxyConfig) -> str:
    """The configuration ``config`` as YAML, every secret masked."""
    text: str = yaml.safe_dump(
        _plain(config), sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
    )
    return text


def _secret_name(name: str) -> bool:
    header = name.lower().replace("_", "-")
    option = header.replace("-", "_")
    return header in _SECRET_HEADERS or any(
        option == word or option.endswith(f"_{word}") for word in _SECRET_WORDS
    )


def _plain(value: Any) -> Any:
    """``value`` as plain YAML data (mappings, lists, scalars), secrets masked."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, BaseModel):
        value = {name: getattr(value, name) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {
            str(key): MASK if _secret_name(str(key)) and item is not None else _plain(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return value
