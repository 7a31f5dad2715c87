"""`Host` header check for a loopback server: a web page the user visits can point its own domain
name at 127.0.0.1 (DNS rebinding) and so reach the engine from the browser; the browser still sends
that domain as `Host`, which this middleware refuses. The port is not checked: it is the same in such
an attack, and an SSH tunnel may forward another local port to the server's."""
from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def host_name(header: str) -> str:
    """The name in a Host header value such as `localhost:8765` or `[::1]:8765`, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.partition(":")[0]


class HostCheck:
    """ASGI middleware: 421 for a request whose Host does not name one of `names`."""

    def __init__(self, app, names: tuple[str, ...]):
        self.app, self.names = app, tuple(name.lower().strip("[]") for name in names)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and host_name(Headers(scope=scope).get("host", "")) not in self.names:
            response = JSONResponse({"detail": (
                "This engine answers only requests addressed to it by its loopback address "
                f"({', '.join(self.names)}); the Host header named something else.")}, status_code=421)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
