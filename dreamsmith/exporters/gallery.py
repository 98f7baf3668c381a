"""The web gallery: one static HTML page showing every asset under a folder (a batch's output directory
or any folder of run directories) in Google's <model-viewer>, with its poster, turntable, prompt, seed,
preset, triangle count, QA badge and file links, filterable by QA result.

The page opens from the file system with no network: model-viewer's bundle is copied beside it from the
package (``dreamsmith/exporters/web``, put there by ``tools/vendor_model_viewer.py``), and each GLB also
ships as a small classic script, because a ``file://`` page may not ``fetch()`` files.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from string import Template

from dreamsmith.errors import DreamsmithError

WEB = Path(__file__).parent / "web"
BUNDLE = WEB / "model-viewer.min.js"
QA_FILTERS = ("pass", "warn", "fail", "failed")
"""Filter buttons besides "all": the QA results, and jobs that produced no asset."""
RUN_SEARCH_DEPTH = 3


@dataclass
class Entry:
    """One card of the gallery."""

    key: str
    """A name unique in the gallery (the job id or the run folder's relative path)."""
    folder: str
    """The run folder, relative to the gallery page."""
    prompt: str
    """The text prompt."""
    qa: str
    """pass, warn or fail (QA of the asset), or failed (no asset)."""
    seed: int | None = None
    """The run's seed."""
    preset: str | None = None
    """The run's preset."""
    triangles: int | None = None
    """Triangles of the asset."""
    files: tuple[str, ...] = ()
    """Files of the asset in its folder."""
    error: str | None = None
    """Why a failed job has no asset."""


def write_gallery(root: Path | str, title: str | None = None) -> Path:
    """Write ``root/gallery.html`` (and ``root/gallery/``) for every asset under ``root``; returns the page.

    A batch's ``summary.json`` in ``root`` lists its jobs (failed ones get a card with their error);
    otherwise every run directory (a folder with report.json and qa.json) under ``root`` is shown.
    """
    root = Path(root)
    if not root.is_dir():
        raise DreamsmithError(f"{root} is not a directory; pass a batch output directory or a folder of runs")
    if not BUNDLE.is_file():
        raise DreamsmithError(f"model-viewer is not bundled in this installation ({BUNDLE} is missing); run "
                              "`npm ci --prefix tools/model-viewer && python tools/vendor_model_viewer.py`")
    entries = gallery_entries(root)
    if not entries:
        raise DreamsmithError(f"{root} holds no finished run (a folder with report.json and qa.json) and no batch "
                              "summary.json")
    assets = root / "gallery"
    models = assets / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUNDLE, assets / "model-viewer.min.js")
    wanted = set()
    for entry in entries:
        if "asset.glb" in entry.files:
            script = models / f"{entry.key}.js"
            wanted.add(script.name)
            glb = root / entry.folder / "asset.glb"
            if not script.is_file() or script.stat().st_mtime_ns < glb.stat().st_mtime_ns:
                data = base64.b64encode(glb.read_bytes()).decode("ascii")
                _write(script, f"window.dreamsmithModels[{json.dumps(entry.key)}] = \"{data}\";\n")
    for stale in models.glob("*.js"):
        if stale.name not in wanted:
            stale.unlink()
    page = root / "gallery.html"
    _write(page, render_page(entries, title or f"dreamsmith · {root.resolve().name}"))
    return page


def gallery_entries(root: Path) -> list[Entry]:
    """The cards for ``root``: a batch's jobs from its summary.json, else the run directories under it."""
    summary_file = root / "summary.json"
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise DreamsmithError(f"cannot read {summary_file}: {error}") from None
        entries = []
        for job in summary.get("jobs", []):
            if job.get("state") == "done":
                entry = run_entry(root, root / job["dir"], key=job["id"])
                if entry is not None:
                    entries.append(entry)
            elif job.get("state") == "failed":
                entries.append(Entry(key=job["id"], folder=job["dir"], prompt=job["prompt"], qa="failed",
                                     seed=job.get("seed"), preset=job.get("preset"), error=job.get("error")))
        return entries
    folders = [root] if (root / "report.json").is_file() else sorted(
        p.parent for depth in range(1, RUN_SEARCH_DEPTH + 1) for p in root.glob("/".join(["*"] * depth) +
                                                                                 "/report.json"))
    return [e for e in (run_entry(root, folder) for folder in folders) if e is not None]


def run_entry(root: Path, folder: Path, key: str | None = None) -> Entry | None:
    """The card of a finished run directory (None when it has no asset or no QA report)."""
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        qa = json.loads((folder / "qa.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    relative = folder.relative_to(root).as_posix() if folder != root else "."
    key = key or re.sub(r"[^A-Za-z0-9._-]+", "_", relative).strip("_.") or "run"
    files = tuple(sorted(name for name in qa.get("files", []) if (folder / name).is_file()))
    return Entry(key=key, folder=relative, prompt=str(report.get("prompt", "")), qa=qa["asset"]["status"],
                 seed=report.get("seed"), preset=report.get("preset"), triangles=qa["asset"]["metrics"]["triangles"],
                 files=files)


def render_page(entries: list[Entry], title: str) -> str:
    """The gallery's HTML."""
    counts = {name: sum(1 for e in entries if e.qa == name) for name in QA_FILTERS}
    filters = [f'<button data-filter="all" aria-pressed="true">all ({len(entries)})</button>']
    filters += [f'<button data-filter="{name}" aria-pressed="false">{_label(name)} ({counts[name]})</button>'
                for name in QA_FILTERS if counts[name]]
    summary = ", ".join(f"{counts[name]} {_label(name)}" for name in QA_FILTERS if counts[name])
    template = Template((WEB / "gallery.html").read_text(encoding="utf-8"))
    return template.substitute(title=html.escape(title), counts=html.escape(f"{len(entries)} assets: {summary}"),
                               filters="".join(filters), cards="\n".join(_card(e) for e in entries))


def _card(entry: Entry) -> str:
    esc = html.escape
    folder = "" if entry.folder == "." else f"{entry.folder}/"
    details = [f"seed {entry.seed}" if entry.seed is not None else None, entry.preset,
               f"{entry.triangles:,} triangles" if entry.triangles is not None else None]
    meta = " · ".join(esc(str(d)) for d in details if d)
    badge = f'<span class="badge {entry.qa}">{"no asset" if entry.qa == "failed" else "QA " + entry.qa}</span>'
    if entry.qa == "failed":
        return (f'<article class="card" data-qa="failed" data-key="{esc(entry.key)}"><div class="failed-view">✗</div>'
                f'<div class="meta"><h2>{esc(entry.prompt)}</h2><p>{meta}</p><div class="row">{badge}</div>'
                f'<p class="error">{esc(entry.error or "failed")}</p></div></article>')
    viewer = ""
    if "asset.glb" in entry.files:
        poster = f' poster="{esc(folder)}asset_poster.png"' if "asset_poster.png" in entry.files else ""
        viewer = (f'<model-viewer data-key="{esc(entry.key)}" data-src="{esc(folder)}asset.glb" '
                  f'data-script="gallery/models/{esc(entry.key)}.js"{poster} camera-controls '
                  f'interaction-prompt="none" shadow-intensity="0.6" alt="{esc(entry.prompt)}"></model-viewer>')
    turntable = (f'<img class="turntable" src="{esc(folder)}asset_turntable.gif" alt="turntable" loading="lazy">'
                 if "asset_turntable.gif" in entry.files else "")
    links = [(label, name) for label, name in (("GLB", "asset.glb"), ("OBJ", "asset.obj"), ("USDZ", "asset.usdz"),
                                               ("turntable", "asset_turntable.mp4"), ("QA", "qa.json"))
             if name in entry.files]
    nav = "".join(f'<a href="{esc(folder)}{name}" download>{label}</a>' for label, name in links)
    return (f'<article class="card" data-qa="{entry.qa}" data-key="{esc(entry.key)}">{viewer}<div class="meta">'
            f'<h2>{esc(entry.prompt)}</h2><p>{meta}</p><div class="row"><div>{badge}<nav>{nav}</nav></div>'
            f'{turntable}</div></div></article>')


def _label(name: str) -> str:
    return "no asset" if name == "failed" else name


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
