"""The batch's summary: ``summary.json`` (everything) and ``summary.csv`` (a row per job, for a spreadsheet)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from dreamsmith.engine.batch.ledger import STATES, JobRow
from dreamsmith.engine.batch.manifest import RowProblem
from dreamsmith.engine.run_dir import write_json, write_text

CSV_COLUMNS = ["id", "line", "prompt", "seed", "state", "attempts", "qa", "triangles", "wall_time_s", "device",
               "asset", "error"]


def job_entry(row: JobRow) -> dict[str, Any]:
    """A job as the summary (and the gallery) shows it."""
    glb = next((path for path in row.outputs if path.endswith(".glb") and "_lod" not in path), None)
    return {"id": row.id, "line": row.line, "prompt": row.spec.prompt, "seed": row.spec.seed,
            "preset": row.spec.preset, "model": row.spec.model, "state": row.state, "attempts": row.attempts,
            "qa": row.qa, "triangles": row.triangles, "wall_time_s": row.wall_time_s, "device": row.device,
            "dir": f"jobs/{row.id}", "asset": glb, "outputs": row.outputs, "error": row.error}


def write_summary(out: Path, manifest: Path, rows: list[JobRow], invalid: list[RowProblem],
                  batch: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.csv`` into ``out``; returns the JSON document."""
    counts = {state: sum(1 for r in rows if r.state == state) for state in STATES}
    qa = {status: sum(1 for r in rows if r.state == "done" and r.qa == status) for status in ("pass", "warn", "fail")}
    summary = {
        "manifest": str(manifest),
        "batch": batch,
        "counts": {**counts, "invalid": len(invalid)},
        "qa": qa,
        "jobs": [job_entry(r) for r in rows],
        "invalid_rows": [{"line": p.line, "error": p.message} for p in sorted(invalid, key=lambda p: p.line)],
    }
    write_json(out / "summary.json", summary)
    table = io.StringIO()
    writer = csv.DictWriter(table, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for entry in summary["jobs"]:
        writer.writerow({**entry, "asset": f"{entry['dir']}/{entry['asset']}" if entry["asset"] else ""})
    for problem in summary["invalid_rows"]:
        writer.writerow({"line": problem["line"], "state": "invalid", "error": problem["error"]})
    write_text(out / "summary.csv", table.getvalue())
    return summary
