"""Batch manifests: one job per row (JSONL, CSV or YAML) with manifest-level defaults, parsed into
``JobSpec``s and validated as a whole before anything runs.

Defaults are a ``defaults`` mapping: a YAML manifest's top-level key (beside ``jobs``), a JSONL
manifest's first line ``{"defaults": {...}}``, or a CSV manifest's leading ``#`` comment lines
(``# defaults:`` then ``#   preset: toy`` ...). A row's fields override the defaults; its
``overrides`` are appended to the defaults' ``overrides``, and its ``adapters`` to the defaults' ``adapters``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dreamsmith.configs import nearest
from dreamsmith.engine.image_prompts import style_reference_image
from dreamsmith.errors import BatchError, ConfigError, DreamsmithError
from dreamsmith.paths import safe_name

UNSUPPORTED = {
    "image": "image prompts",
    "mesh": "mesh inputs",
}
"""Row fields a manifest may name but the engine cannot run yet: each is refused by row."""


LATER_FIELDS = ("style_reference", "adapters")
"""Job fields added after the ledger's first version."""


CONDITIONERS_OVERRIDE = "guidance.conditioners="


@dataclass(frozen=True)
class JobSpec:
    """One job of a batch: what to make and how to export it (a manifest row merged with the defaults)."""

    id: str
    """The job's name and folder (up to 64 letters, digits, '.', '_', '-'); default: the prompt's slug
    (+ '-seed<N>')."""
    prompt: str
    """The text prompt."""
    line: int = 0
    """Line of the row in the manifest (for messages)."""
    preset: str | None = None
    """Preset (see `dreamsmith presets`); default as in `dreamsmith generate`."""
    model: str | None = None
    """Diffusion model: a local diffusers folder, a Hugging Face id or embedded:NAME."""
    seed: int | None = None
    """Random seed (same seed, same device: same asset)."""
    steps: int | None = None
    """Optimization steps of the last stage."""
    overrides: tuple[str, ...] = ()
    """KEY=VALUE config overrides (a list, a space-separated string or a KEY: VALUE mapping)."""
    formats: tuple[str, ...] | None = None
    """Export formats: glb, gltf, obj, usdz (a list or a string separated by spaces or commas)."""
    max_triangles: int | None = None
    """Triangle budget of the asset."""
    texture_size: int | None = None
    """Base-colour texture side in texels."""
    profile: str | None = None
    """QA profile: mobile, pc or hero."""
    lods: int | None = None
    """Further levels of detail."""
    style_reference: str | None = None
    """An image or a finished run directory whose style the asset shares (StyleAligned); relative paths are read
    from the manifest's folder. Give a whole manifest one style through its defaults."""
    adapters: tuple[dict[str, Any], ...] | None = None
    """Personalization adapter folders (`dreamsmith personalize`), each 'FOLDER', 'FOLDER:SCALE' or a mapping
    {path: FOLDER, scale: S, reward_scale: W}; relative folders are read from the manifest's folder. The row's
    come after the defaults' (and before `batch --adapter`'s)."""

    def config_overrides(self) -> list[str]:
        """The row's overrides followed by its export settings as ``export.*`` overrides; its adapters and style
        reference join the conditioners an earlier ``guidance.conditioners`` override (`batch --adapter`) sets."""
        export = {"formats": list(self.formats) if self.formats else None, "max_triangles": self.max_triangles,
                  "texture_size": self.texture_size, "profile": self.profile, "lods": self.lods}
        own = [{"name": "adapter", **adapter} for adapter in self.adapters or ()]
        if self.style_reference is not None:
            own.append({"name": "style_aligned", "image": self.style_reference})
        overrides = list(self.overrides)
        if own:
            given = [text for text in overrides if text.startswith(CONDITIONERS_OVERRIDE)]
            overrides = [text for text in overrides if not text.startswith(CONDITIONERS_OVERRIDE)]
            earlier = [spec for text in given for spec in yaml.safe_load(text[len(CONDITIONERS_OVERRIDE):]) or []]
            overrides.append(CONDITIONERS_OVERRIDE + json.dumps([*own, *earlier]))
        return [*overrides, *(f"export.{key}={json.dumps(value)}" for key, value in export.items()
                              if value is not None)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (what the ledger stores and workers receive)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        for name in ("overrides", "formats", "adapters"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)

    def fingerprint(self) -> str:
        """What the job makes: its spec without the line number (a moved row is the same job), and without
        the fields added since ledgers were first written while they are unset (an older ledger's jobs match)."""
        return json.dumps({k: v for k, v in self.to_dict().items()
                           if k != "line" and not (k in LATER_FIELDS and v is None)}, sort_keys=True)


@dataclass
class RowProblem:
    """A manifest row that cannot run."""

    line: int
    """Line of the row in the manifest."""
    message: str
    """What is wrong and what to do."""


@dataclass
class Manifest:
    """A parsed manifest: its valid jobs and its bad rows."""

    path: Path
    """The manifest file."""
    jobs: list[JobSpec] = field(default_factory=list)
    """The rows that parsed, in manifest order."""
    problems: list[RowProblem] = field(default_factory=list)
    """The rows that did not (validation adds more)."""

    def describe_problems(self) -> str:
        return "\n".join(f"{self.path}:{p.line}: {p.message}" for p in sorted(self.problems, key=lambda p: p.line))


FIELDS = [f.name for f in dataclasses.fields(JobSpec) if f.name != "line"]


def load_manifest(path: Path | str) -> Manifest:
    """Parse a manifest by its suffix (.jsonl, .csv, .yaml/.yml) into jobs and per-row problems.

    A file that cannot be read or parsed at all raises ``BatchError`` (one line).
    """
    path = Path(path)
    readers = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".yaml": _yaml_rows, ".yml": _yaml_rows}
    if path.suffix.lower() not in readers:
        raise BatchError(f"{path}: unknown manifest type '{path.suffix}'; use .jsonl, .csv or .yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BatchError(f"cannot read the manifest {path}: {getattr(error, 'strerror', None) or error}") from None
    defaults, rows = readers[path.suffix.lower()](text, path)
    default_problem = _field_problem(defaults, allow_id=False)
    if default_problem:
        raise BatchError(f"{path}: defaults: {default_problem}")
    manifest = Manifest(path)
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            spec = _job(line, defaults, row, path.parent)
        except BatchError as error:
            manifest.problems.append(RowProblem(line, str(error)))
            continue
        if spec.id in seen:
            manifest.problems.append(RowProblem(line, f"job id '{spec.id}' is already used by line {seen[spec.id]}; "
                                                      "give one of the rows its own 'id'"))
            continue
        seen[spec.id] = line
        manifest.jobs.append(spec)
    if not rows:
        raise BatchError(f"{path} has no jobs")
    return manifest


def _jsonl_rows(text: str, path: Path) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    defaults: dict[str, Any] = {}
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise BatchError(f"{path}:{number}: not JSON ({error.msg} at column {error.colno})") from None
        if isinstance(value, dict) and set(value) == {"defaults"} and not rows and not defaults:
            defaults = _mapping(value["defaults"], path, number)
        else:
            rows.append((number, value))
    return defaults, rows


def _csv_rows(text: str, path: Path) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    lines = text.splitlines(keepends=True)
    comments = 0
    while comments < len(lines) and lines[comments].lstrip().startswith("#"):
        comments += 1
    defaults: dict[str, Any] = {}
    if comments:
        header = "".join(line.lstrip()[1:] for line in lines[:comments])
        try:
            parsed = yaml.safe_load(header) or {}
        except yaml.YAMLError as error:
            raise BatchError(f"{path}: the leading # lines are not YAML ({_yaml_problem(error)})") from None
        if not isinstance(parsed, dict) or set(parsed) - {"defaults"}:
            raise BatchError(f"{path}: the leading # lines must hold one 'defaults:' mapping")
        defaults = _mapping(parsed.get("defaults") or {}, path, 1)
    reader = csv.reader(io.StringIO("".join(lines[comments:])))
    try:
        header_row = next(reader, None)
        if header_row is None:
            raise BatchError(f"{path} has no header row")
        columns = [name.strip() for name in header_row]
        rows = []
        start = reader.line_num
        for record in reader:
            number = comments + start + 1
            start = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(columns):
                rows.append((number, f"has {len(record)} cells but the header has {len(columns)} columns"))
                continue
            rows.append((number, {k: v.strip() for k, v in zip(columns, record, strict=True) if v.strip()}))
    except csv.Error as error:
        raise BatchError(f"{path}:{comments + reader.line_num}: not CSV ({error})") from None
    return defaults, rows


def _yaml_rows(text: str, path: Path) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    try:
        loader = yaml.SafeLoader(text)  # reads (and checks) the characters at once
    except yaml.YAMLError as error:
        raise BatchError(f"{path}: not YAML ({_yaml_problem(error)})") from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        raise BatchError(f"{path}: not YAML ({_yaml_problem(error)})") from None
    finally:
        loader.dispose()
    defaults: dict[str, Any] = {}
    jobs_node = node
    if isinstance(data, dict):
        unknown = set(data) - {"defaults", "jobs"}
        if unknown or "jobs" not in data:
            raise BatchError(f"{path}: a YAML manifest is a list of jobs or a mapping with 'jobs' (and 'defaults')"
                             + (f"; unknown key '{sorted(unknown)[0]}'" if unknown else ""))
        defaults = _mapping(data.get("defaults") or {}, path, node.start_mark.line + 1)
        jobs_node = next(value for key, value in node.value if key.value == "jobs")
        data = data["jobs"]
    if not isinstance(data, list):
        raise BatchError(f"{path}: a YAML manifest is a list of jobs or a mapping with 'jobs' (and 'defaults')")
    return defaults, [(item.start_mark.line + 1, row) for item, row in zip(jobs_node.value, data, strict=True)]


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    return f"{problem}{where}"


def _mapping(value: Any, path: Path, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BatchError(f"{path}:{line}: defaults must be a mapping of job fields")
    return value


def _field_problem(row: dict[str, Any], allow_id: bool = True) -> str | None:
    for name in row:
        if name in UNSUPPORTED:
            return (f"'{name}' is not supported yet: this engine makes assets from text prompts only, not from "
                    f"{UNSUPPORTED[name]}; remove the field (or the row)")
        if name not in FIELDS or (name == "id" and not allow_id):
            return f"unknown field '{name}'{nearest(str(name), FIELDS)}"
    return None


def _job(line: int, defaults: dict[str, Any], row: Any, folder: Path = Path()) -> JobSpec:
    """A row merged with the defaults, its values checked and converted (CSV cells are strings)."""
    if isinstance(row, str):
        raise BatchError(row)
    if not isinstance(row, dict):
        raise BatchError(f"a job is a mapping of fields (prompt, seed, ...), got {type(row).__name__}")
    problem = _field_problem(row)
    if problem:
        raise BatchError(problem)
    merged = {**defaults, **row}
    merged["overrides"] = [*_overrides(defaults.get("overrides")), *_overrides(row.get("overrides"))]
    adapters = [*_adapters(defaults.get("adapters"), folder), *_adapters(row.get("adapters"), folder)]
    prompt = merged.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BatchError("the row has no prompt; say what to make, e.g. \"a wooden barrel\"")
    values: dict[str, Any] = {"prompt": prompt, "line": line, "overrides": tuple(merged["overrides"])}
    for name in ("seed", "steps", "max_triangles", "texture_size", "lods"):
        if merged.get(name) is not None:
            values[name] = _integer(name, merged[name])
    for name in ("preset", "model", "profile"):
        if merged.get(name) is not None:
            values[name] = str(merged[name])
    if merged.get("style_reference") is not None:
        values["style_reference"] = _style_reference(merged["style_reference"], folder, values["overrides"])
    if adapters:
        if any(text.startswith(CONDITIONERS_OVERRIDE) for text in values["overrides"]):
            raise BatchError("'adapters' set guidance.conditioners; remove the row's guidance.conditioners override "
                             "or the adapters")
        values["adapters"] = tuple(adapters)
    if merged.get("formats") is not None:
        formats = merged["formats"]
        items = re.split(r"[\s,;|]+", formats) if isinstance(formats, str) else formats
        if not isinstance(items, list) or not all(isinstance(f, str) for f in items):
            raise BatchError("'formats' must be a list of format names (glb, gltf, obj, usdz)")
        values["formats"] = tuple(f.strip().lower() for f in items if f.strip())
    job_id = str(merged["id"]) if merged.get("id") is not None else _default_id(prompt, values.get("seed"))
    try:
        safe_name(job_id, "job id")
    except ConfigError as error:
        raise BatchError(str(error)) from None
    return JobSpec(id=job_id, **values)


def _style_reference(value: Any, folder: Path, overrides: tuple[str, ...]) -> str:
    """The style reference's image, checked (an image, or a run directory's exported poster), as an absolute path."""
    if any(text.startswith("guidance.conditioners=") for text in overrides):
        raise BatchError("'style_reference' sets guidance.conditioners; remove the row's guidance.conditioners "
                         "override or the style reference")
    try:
        return str(style_reference_image(folder / str(value), "'style_reference'"))
    except DreamsmithError as error:
        raise BatchError(str(error)) from None


def _adapters(value: Any, folder: Path) -> list[dict[str, Any]]:
    """``adapters`` entries as ``{path, scale, reward_scale}`` with absolute, existing folders (a string cell holds
    entries separated by spaces, commas or semicolons)."""
    if value is None:
        return []
    items = re.split(r"[\s,;]+", value.strip()) if isinstance(value, str) else value
    if not isinstance(items, list):
        raise BatchError("'adapters' must be a list of adapter folders ('FOLDER', 'FOLDER:SCALE' or "
                         "{path: FOLDER, scale: S})")
    return [_adapter(item, folder) for item in items if item != ""]


def _adapter(item: Any, folder: Path) -> dict[str, Any]:
    if isinstance(item, str):
        path, _, scale = item.rpartition(":") if re.search(r":[-+.\d]+$", item) else (item, "", None)
        item = {"path": path} if scale is None else {"path": path, "scale": scale}
    if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"]:
        raise BatchError(f"'adapters' entry {item!r} is not 'FOLDER', 'FOLDER:SCALE' or {{path: FOLDER, scale: S}}")
    unknown = sorted(set(item) - {"path", "scale", "reward_scale"})
    if unknown:
        raise BatchError(f"'adapters' entry {item['path']}: unknown key '{unknown[0]}'; use path, scale, "
                         "reward_scale")
    path = (folder / item["path"]).expanduser()
    if not path.is_dir():
        raise BatchError(f"'adapters' folder {path} does not exist; pass a folder written by `dreamsmith "
                         "personalize` (relative folders are read from the manifest's folder)")
    entry: dict[str, Any] = {"path": str(path.resolve())}
    for key, default in (("scale", 1.0), ("reward_scale", 0.0)):
        entry[key] = _number(f"'adapters' {key} of {item['path']}", item.get(key, default))
    return entry


def _number(what: str, value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number):
        raise BatchError(f"{what} must be a number, got {value!r}")
    return number


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise BatchError(f"'{name}' must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise BatchError(f"'{name}' must be a whole number, got {value!r}")


def _overrides(value: Any) -> list[str]:
    """Overrides as ``KEY=VALUE`` strings from a list, a shell-quoted string or a mapping."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as error:
            raise BatchError(f"'overrides' cannot be split into KEY=VALUE words ({error})") from None
    if isinstance(value, dict):
        return [f"{key}={json.dumps(item)}" for key, item in value.items()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BatchError("'overrides' must be a list of KEY=VALUE strings, a string of them or a mapping")


def _default_id(prompt: str, seed: int | None) -> str:
    slug = "-".join(filter(None, re.split(r"[^a-z0-9]+", prompt.lower())))[:48].strip("-") or "job"
    return slug if seed is None else f"{slug}-seed{seed}"
