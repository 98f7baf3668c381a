"""The asset an edit starts from, loaded: a frozen representation of it, and the record that names it.

A finished run directory gives its final stage's representation with the last checkpoint's parameters
(as ``dreamsmith export`` rebuilds it); a mesh file gives a texture representation of that mesh whose
texels start from the file's own colours. The edit's first stage starts as a copy of it, and guidances
that need it (InstructPix2Pix) see renders of the frozen original from each step's cameras. The source
itself is only read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dreamsmith.engine.config import RunConfig
from dreamsmith.engine.device import resolve_device
from dreamsmith.engine.edit_config import SourceKind
from dreamsmith.engine.export import final_representation, load_run
from dreamsmith.engine.mesh_input import read_user_mesh
from dreamsmith.engine.run import Progress, generate
from dreamsmith.engine.run_dir import RunDir, write_json
from dreamsmith.engine.stages import TextureRepresentation
from dreamsmith.errors import RunDirError


@dataclass
class EditSource:
    """The frozen source ``representation`` and ``record``: what ``edit.json`` says the edit started from."""

    representation: Any
    record: dict[str, Any]

    def start(self, representation: Any) -> None:
        """Make the edit's first representation (same kind and config) a copy of the source's."""
        representation.load_state_dict(self.representation.state_dict())

    def check_or_write_record(self, path: Path, resumed: bool) -> None:
        """Write the record for a new edit; a resumed one must have started from the same source."""
        if not resumed:
            write_json(path, self.record)
            return
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved != self.record:
            detail = "no edit.json" if saved is None else f"it edits {saved.get('source')} ({saved.get('kind')})"
            raise RunDirError(
                f"cannot resume: the run in {path.parent} does not edit {self.record['source']} "
                f"({detail}); pass the same SOURCE, or --overwrite to start over"
            )


def load_edit_source(path: Path, kind: SourceKind, config: RunConfig, device: torch.device) -> EditSource:
    """The source at ``path`` (``kind`` as :func:`~dreamsmith.engine.edit_config.source_kind` found it), built
    on ``device`` for the edit ``config``; a one-line error for an unfinished run or a damaged checkpoint."""
    path = path.resolve()
    if kind == "run":
        source_config, state = load_run(RunDir(path))
        representation = final_representation(source_config, state, device)
        record = {
            "source": str(path),
            "kind": kind,
            "prompt": source_config.prompt,
            "seed": source_config.seed,
            "model": source_config.model,
        }
    else:
        stage = config.stages[0]
        representation = TextureRepresentation(stage, device)
        representation.paint_from(read_user_mesh(path, stage.uv_texture.max_faces).mesh)
        record = {"source": str(path), "kind": kind, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return EditSource(representation, record)


def run_edit(
    config: RunConfig,
    source: Path,
    kind: SourceKind,
    out: Path | str,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Edit ``source`` into the new run directory ``out`` (see :func:`~dreamsmith.engine.run.generate`)."""
    edit_source = load_edit_source(source, kind, config, resolve_device(config.device))
    return generate(config, out, resume=resume, progress=progress, overwrite=overwrite, source=edit_source)
