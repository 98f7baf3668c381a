"""The dreamsmith server's HTTP API over urllib (no bpy, no third-party packages)."""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT_S = 10.0


class ServerError(Exception):
    """A request that cannot be made, was refused or found no server; one line for a Blender report."""


class Client:
    """Calls one server: ``address`` like ``http://127.0.0.1:8642``, with an optional bearer token."""

    def __init__(self, address: str, token: str = "") -> None:
        address = address.strip().rstrip("/")
        if not address.startswith(("http://", "https://")):
            address = f"http://{address}"
        self.address, self.token = address, token.strip()

    def is_local(self) -> bool:
        """Whether the server is on this machine (a loopback address)."""
        host = urllib.parse.urlsplit(self.address).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/jobs", request)

    def status(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def edit(self, job_id: str, instruction: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/edit", {"instruction": instruction})

    def texture(self, glb: bytes, prompt: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"prompt": prompt})
        return json.loads(self._call("POST", f"/jobs/texture?{query}", glb, "model/gltf-binary"))

    def artifacts(self, job_id: str) -> list[str]:
        return [item["name"] for item in self._json("GET", f"/jobs/{job_id}/artifacts")["artifacts"]]

    def download(self, url_path: str, target: Path) -> Path:
        """Write the file at ``url_path`` (as the server names it: ``/jobs/ID/artifacts/asset.glb``) to ``target``."""
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self._call("GET", url_path))
        return target

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        return json.loads(self._call(method, path, data, "application/json" if data is not None else None))

    def _call(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None) -> bytes:
        request = urllib.request.Request(self.address + path, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            raise ServerError(f"server: {_detail(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerError(f"cannot reach the dreamsmith server at {self.address} ({reason}); "
                              "start it with: dreamsmith serve") from None


def _detail(error: urllib.error.HTTPError) -> str:
    """The server's one-line ``detail`` (FastAPI's validation errors are a list: name the first)."""
    try:
        detail = json.loads(error.read()).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list) and detail:
        first = detail[0]
        where = ".".join(str(part) for part in first.get("loc", [])[1:])
        return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
    return str(detail) if detail else f"HTTP {error.code} {error.reason}"
