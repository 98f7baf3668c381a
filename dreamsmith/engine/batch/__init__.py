"""Batch pipelines: ``dreamsmith batch`` over a manifest of jobs, resumable and fault-isolated.

Public names (imported lazily, so the gallery needs no torch): ``run_batch`` (validate a manifest, run
its unfinished jobs, write the summary and the gallery), ``BatchOptions``, ``BatchResult``,
``BatchProgress`` (its callbacks), ``load_manifest`` and ``validate`` (parse and check a manifest
without running it), ``write_gallery`` (the gallery page of a folder of runs).

Modules: ``manifest`` (rows -> ``JobSpec``), ``validation`` (configs built before anything runs),
``ledger`` (SQLite job states), ``lock`` (one batch per output directory), ``job`` (one job inside a
worker), ``executor`` (the interface), ``local`` and ``ray_executor`` (the executors), ``runner`` (the
driver and its retry policy), ``progress`` and ``summary``.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "BatchOptions": "dreamsmith.engine.batch.runner",
    "BatchResult": "dreamsmith.engine.batch.runner",
    "run_batch": "dreamsmith.engine.batch.runner",
    "BatchProgress": "dreamsmith.engine.batch.progress",
    "JobSpec": "dreamsmith.engine.batch.manifest",
    "Manifest": "dreamsmith.engine.batch.manifest",
    "load_manifest": "dreamsmith.engine.batch.manifest",
    "validate": "dreamsmith.engine.batch.validation",
    "write_gallery": "dreamsmith.exporters.gallery",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dreamsmith.engine.batch' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
