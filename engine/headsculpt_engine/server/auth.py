"""Bearer-token auth: one random token per data folder, created at first start, readable only by
its owner (mode 0600), compared in constant time."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

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
    """ASGI middleware: 401 for any request under `/v1/` but the public paths unless it carries
    `Authorization: Bearer <token>`. Checked before the body is read or validated, so an unauthorised
    client learns nothing about the API and cannot make the server parse large bodies."""

    def __init__(self, app, token: str, prefix: str = "/v1/", public: tuple[str, ...] = ("/v1/health",)):
        self.app, self._token, self.prefix, self.public = app, token.encode(), prefix, public

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefix) and scope["path"] not in self.public:
            problem = self._problem(Headers(scope=scope).get("authorization", ""))
            if problem:
                response = JSONResponse({"detail": problem}, status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def _problem(self, header: str) -> str:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return ("Missing token: send the engine's token as 'Authorization: Bearer <token>' "
                    "(the token is in the token file of the engine's data folder).")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return "Wrong token: use the one in the token file of this engine's data folder."
        return ""
