"""server: the local job server behind ``dreamsmith serve`` (and the Blender extension).

Public names: ``ServerConfig`` (where it listens, who may call it, where jobs live), ``create_app``
(the FastAPI application over a jobs directory) and ``serve`` (run it with uvicorn, workers included).
The HTTP layer never imports torch: jobs run in worker processes (``dreamsmith.server.worker``).
"""

from __future__ import annotations

from collections.abc import Callable

from dreamsmith.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app", "serve"]


def create_app(config: ServerConfig):  # noqa: ANN201 - FastAPI is imported lazily
    """The FastAPI application for ``config`` (see ``dreamsmith.server.api``)."""
    from dreamsmith.server.api import create_app as build

    return build(config)


def serve(config: ServerConfig, announce: Callable[[str], None] = print) -> None:
    """Listen on ``config.host:config.port`` until interrupted (see ``dreamsmith.server.serve``)."""
    from dreamsmith.server.serve import serve as run

    run(config, announce)
