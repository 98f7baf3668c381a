"""engine: wires representations, renderers, guidance and exporters into runs.

Public names (imported lazily, so ``import dreamsmith.engine`` and the CLI's ``--help`` do not load
torch): ``make_config`` (a validated ``RunConfig`` from what a user typed), ``generate`` (a run
directory with an asset), ``Progress`` (the run's progress callbacks) and ``export_run`` (re-export a
finished run).
"""

from dreamsmith.lazy import lazy_names

_PUBLIC = {
    "make_config": "dreamsmith.engine.overrides",
    "generate": "dreamsmith.engine.run",
    "Progress": "dreamsmith.engine.run",
    "export_run": "dreamsmith.engine.export",
}

__all__ = sorted(_PUBLIC)
__getattr__ = lazy_names(__name__, _PUBLIC)
