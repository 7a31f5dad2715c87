"""`Host` header check for a loopback server: a web page the user visits can point its own domain
name at 127.0.0.1 (DNS rebinding) and so reach the engine from the browser; the browser still sends
that domain as `Host`, which this middleware refuses."""
from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def split_host(header: str) -> tuple[str, int | None]:
    """("name", port or None) from a Host header value such as `localhost:8765` or `[::1]:8765`."""
    header = header.strip().lower()
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = header.partition(":")
    return name, int(port) if port.isdigit() else None


class HostCheck:
    """ASGI middleware: 421 for a request whose Host is not one of `names` on the listening port."""

    def __init__(self, app, names: tuple[str, ...]):
        self.app, self.names = app, tuple(name.lower().strip("[]") for name in names)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            name, port = split_host(Headers(scope=scope).get("host", ""))
            listening = (scope.get("server") or (None, None))[1]
            if name not in self.names or (port or 80) != listening:
                response = JSONResponse({"detail": (
                    "This engine answers only requests addressed to it by its loopback address "
                    f"({', '.join(self.names)}) and port; the Host header named something else.")},
                    status_code=421)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
