"""The bearer token of a rayalign service (reward or policy), read the same way by the service and by a client that
calls it: the token file when one is configured (<section>.auth_token_file), else the environment variable
<section>.auth_token_env names. None means no authentication."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import ConfigError
from common.paths import resolve_path

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def resolve_token(env_name: str, token_file: str | None, setting: str = "serve.auth_token_file") -> str | None:
    """setting: the config key that named token_file, for the error."""
    if token_file:
        path = Path(resolve_path(token_file))
        if not path.is_file():
            raise ConfigError(f"{setting} {path} does not exist")
        token = path.read_text().strip()
        if not token:
            raise ConfigError(f"{setting} {path} is empty")
        return token
    return os.environ.get(env_name) or None
