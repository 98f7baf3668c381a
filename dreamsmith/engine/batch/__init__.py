"""Batch pipelines: ``dreamsmith batch`` over a manifest of jobs, resumable and fault-isolated.

Public names: ``run_batch`` (validate a manifest, run its unfinished jobs, write the summary and the
gallery), ``BatchOptions``, ``BatchResult``, ``BatchProgress`` (its callbacks), ``load_manifest`` and
``validate`` (parse and check a manifest without running it).

Modules: ``manifest`` (rows -> ``JobSpec``), ``validate`` (configs built before anything runs),
``ledger`` (SQLite job states), ``lock`` (one batch per output directory), ``job`` (one job inside a
worker), ``executor`` (the interface), ``local`` and ``ray_executor`` (the executors), ``runner`` (the
driver and its retry policy), ``progress`` and ``summary``.
"""

from dreamsmith.engine.batch.manifest import JobSpec, Manifest, load_manifest
from dreamsmith.engine.batch.progress import BatchProgress
from dreamsmith.engine.batch.runner import BatchOptions, BatchResult, run_batch
from dreamsmith.engine.batch.validate import validate

__all__ = ["BatchOptions", "BatchProgress", "BatchResult", "JobSpec", "Manifest", "load_manifest", "run_batch",
           "validate"]
