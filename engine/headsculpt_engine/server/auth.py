"""Bearer-token auth: one random token per data folder, created at first start, readable only by
its owner (mode 0600), compared in constant time."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request

TOKEN_FILE = "token"


def ensure_token(data_dir: Path) -> Path:
    """Create `DATA/token` on first start (never overwriting one) and return its path."""
    path = Path(data_dir) / TOKEN_FILE
    try:
        # O_EXCL: two servers starting on the same folder cannot both write a token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)  # tighten a token file someone loosened
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path


def read_token(path: Path) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"The token file {path} is empty; delete it and start the engine again.")
    return token


class BearerAuth:
    """A FastAPI dependency that answers 401 unless `Authorization: Bearer <token>` matches."""

    def __init__(self, token: str):
        self._token = token.encode()

    def __call__(self, request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(401, "Missing token: send the engine's token as 'Authorization: Bearer "
                                     "<token>' (the token is in the token file of the engine's data folder).",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise HTTPException(401, "Wrong token: use the one in the token file of this engine's data folder.",
                                headers={"WWW-Authenticate": "Bearer"})
