"""Who may call the server: loopback clients, or anyone with the token; and paths that stay inside."""

from __future__ import annotations

import hmac
import json
import re
from pathlib import Path

from dreamsmith.server.config import ServerConfig, is_loopback

ARTIFACT_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ARTIFACT_SUFFIXES = (".glb", ".gltf", ".bin", ".obj", ".mtl", ".usdz", ".png", ".jpg", ".gif", ".mp4", ".json", ".yaml")


class AccessGuard:
    """ASGI middleware. With a token, every request must carry ``Authorization: Bearer TOKEN``.
    Without one, only loopback clients are served, and only under a loopback Host name (a web page
    cannot reach the server by rebinding its own domain name to 127.0.0.1)."""

    def __init__(self, app, config: ServerConfig) -> None:  # noqa: ANN001 - any ASGI app
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - the ASGI signature
        if scope["type"] == "websocket":  # the API has none; refuse rather than pass one unchecked
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                status, detail = refusal
                body = json.dumps({"detail": detail}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                if status == 401:
                    headers.append((b"www-authenticate", b"Bearer"))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict) -> tuple[int, str] | None:
        """(status, reason) when the request must be refused, else None."""
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        if self.config.token is not None:
            sent = headers.get(b"authorization", b"").decode("latin-1")
            expected = f"Bearer {self.config.token}"
            if not hmac.compare_digest(sent.encode(), expected.encode()):
                return 401, "this server needs its token: send 'Authorization: Bearer TOKEN'"
            return None
        client = scope.get("client")
        if client is None or not is_loopback(client[0]):
            return 403, "this server serves only this machine; start it with --token to accept other clients"
        host = headers.get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not (is_loopback(name) or name in self.config.allowed_hosts or name == self.config.host):
            return 403, f"Host '{host}' is not this server's loopback name; use http://127.0.0.1:PORT"
        return None


def artifact_path(run_dir: Path, name: str) -> Path | None:
    """The file ``name`` (``asset.glb``, ``previews/final.png``) inside ``run_dir``, or None when the name
    is not an artifact's: other characters, other suffixes, checkpoints, or anything outside ``run_dir``."""
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or not all(ARTIFACT_PART.match(part) for part in parts):
        return None
    if not name.lower().endswith(ARTIFACT_SUFFIXES) or parts[0] == "checkpoints":
        return None
    root = run_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def artifact_names(run_dir: Path) -> list[str]:
    """Every downloadable file of a run, as names ``artifact_path`` accepts."""
    if not run_dir.is_dir():
        return []
    names = [path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file()]
    return sorted(name for name in names if artifact_path(run_dir, name) is not None)
