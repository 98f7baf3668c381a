"""Where the server listens, who may call it, and where its jobs live."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from dreamsmith.errors import DreamsmithError


class ServerError(DreamsmithError):
    """A server setting that cannot be used (an exposed address without a token, a bad jobs folder)."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback needs a token."""
    port: int = 8642
    """TCP port."""
    token: str | None = None
    """Shared secret clients send as ``Authorization: Bearer TOKEN``; required from every client when set."""
    jobs_dir: Path = Path("jobs")
    """Folder holding jobs.sqlite and one folder per job."""
    devices: tuple[str, ...] = ("auto",)
    """Devices jobs run on, one job at a time on each (auto, cpu, cuda, cuda:N)."""
    max_upload_bytes: int = 64 * 2**20
    """Largest accepted upload (a mesh to texture)."""
    stream_seconds: float = 600.0
    """Longest one progress stream stays open before the client reconnects."""
    allowed_hosts: tuple[str, ...] = field(default=())
    """Extra Host header names accepted besides loopback names and ``host`` (DNS-rebinding guard)."""

    def check(self) -> None:
        """Refuse settings that would expose the server without a token."""
        if not is_loopback(self.host) and not self.token:
            raise ServerError(f"refusing to listen on {self.host} without a token: pass --token, "
                              "or keep the default --host 127.0.0.1")
        if self.token is not None and len(self.token) < 16:
            raise ServerError("--token must be at least 16 characters")
        if not 0 < self.port < 65536:
            raise ServerError(f"--port must be between 1 and 65535, got {self.port}")
        if not self.devices:
            raise ServerError("at least one --device is needed")
        if len(set(self.devices)) != len(self.devices):
            raise ServerError(f"each --device runs one job at a time; name each once, got {', '.join(self.devices)}")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) can only be reached from this machine."""
    if host is None:
        return False
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
