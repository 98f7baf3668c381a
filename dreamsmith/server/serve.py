"""``dreamsmith serve``: the API and its workers under uvicorn."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from dreamsmith.server.api import create_app
from dreamsmith.server.config import ServerConfig, ServerError


def serve(config: ServerConfig, announce: Callable[[str], None] = print) -> None:
    """Check ``config``, open the jobs folder and the port (each failure one ``ServerError``), then serve
    until Ctrl-C; running jobs then checkpoint and resume on the next start."""
    config.check()
    app = create_app(config)
    listener = _listen(config.host, config.port)
    announce(f"dreamsmith serving http://{config.host}:{config.port} (jobs in {config.jobs_dir}); "
             "Ctrl-C stops, running jobs checkpoint")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host.strip("[]"), port))
    except OSError as error:
        listener.close()
        raise ServerError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --port") from None
    listener.listen(128)
    return listener
