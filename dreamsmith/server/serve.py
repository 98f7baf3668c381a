"""``dreamsmith serve``: the API and its workers under uvicorn."""

from __future__ import annotations

import uvicorn

from dreamsmith.server.api import create_app
from dreamsmith.server.config import ServerConfig


def serve(config: ServerConfig) -> None:
    """Check ``config``, then serve until Ctrl-C; running jobs then checkpoint and resume on the next start."""
    config.check()
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning",
                timeout_graceful_shutdown=5)
