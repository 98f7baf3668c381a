"""What the API accepts and returns (its OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dreamsmith.server.store import Job

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Format = Literal["glb", "gltf", "obj", "usdz"]
TextureSize = Literal[512, 1024, 2048, 4096]
# Set by the server, never by a client: a remote client must not make the server unpickle files or
# pick another device than the one the job's queue runs on.
SERVER_ONLY_KEYS = ("allow_pickle", "device")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExportOptions(Strict):
    formats: list[Format] = Field(default=["glb"], min_length=1, max_length=4, description="Files to write.")
    texture_size: TextureSize | None = Field(default=None, description="Base-colour texture side in texels.")
    max_triangles: int | None = Field(default=None, ge=100, le=10_000_000, description="Triangle budget.")
    lods: int = Field(default=0, ge=0, le=4, description="Further levels of detail, each ~half the triangles.")


class GenerateRequest(ExportOptions):
    prompt: str = Field(min_length=1, max_length=500, description="What to make, e.g. 'a red cube'.")
    preset: str | None = Field(default=None, max_length=64, pattern=NAME_PATTERN, description="Preset name.")
    model: str | None = Field(default=None, min_length=1, max_length=500,
                              description="Diffusion model: a folder on the server, a Hugging Face id, embedded:NAME.")
    steps: int | None = Field(default=None, ge=0, le=1_000_000, description="Steps of the last stage.")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Random seed.")
    overrides: list[str] = Field(default=[], max_length=64, description="KEY=VALUE config overrides.")


def generate_overrides(request: dict[str, Any]) -> list[str]:
    """The config overrides a generate request stands for (its own, then its export options)."""
    overrides = list(request["overrides"])
    overrides.append(f"export.formats=[{','.join(request['formats'])}]")
    overrides.append(f"export.lods={request['lods']}")
    if request["texture_size"] is not None:
        overrides.append(f"export.texture_size={request['texture_size']}")
    if request["max_triangles"] is not None:
        overrides.append(f"export.max_triangles={request['max_triangles']}")
    return overrides


class ExportRequest(Strict):
    formats: list[Format] = Field(default=["glb"], min_length=1, max_length=4, description="Files to write.")
    texture_size: TextureSize = Field(default=1024, description="Base-colour texture side in texels.")
    max_triangles: int | None = Field(default=None, ge=100, le=10_000_000, description="Triangle budget.")
    lods: int = Field(default=0, ge=0, le=4, description="Further levels of detail.")
    origin: Literal["center", "base"] = Field(default="center", description="Where the origin sits.")
    scale: float | None = Field(default=None, gt=0, le=1000, description="Longest side in metres.")
    profile: Literal["mobile", "pc", "hero"] = Field(default="pc", description="QA budgets.")


class EditRequest(Strict):
    instruction: str = Field(min_length=1, max_length=500, description="What to change, e.g. 'make it blue'.")


class JobStatus(BaseModel):
    id: str
    kind: str
    state: str = Field(description="queued, running, cancelling, cancelled, succeeded or failed.")
    prompt: str | None
    source: str | None = Field(description="The job an export job exports.")
    created: float
    started: float | None
    finished: float | None
    device: str | None
    runs: int = Field(description="How many times a worker started on it (resumes count).")
    stage: str | None
    step: int = Field(description="Steps done in the current stage.")
    total: int = Field(description="Steps of the current stage.")
    done_steps: int = Field(description="Steps done over all stages.")
    all_steps: int
    eta_s: float | None = Field(description="Seconds of optimization left, from this run's step rate.")
    losses: dict[str, float]
    message: str | None
    error: str | None
    preview_url: str | None = Field(description="The latest preview grid (PNG).")
    artifacts_url: str

    @classmethod
    def of(cls, job: Job) -> JobStatus:
        return cls(
            id=job.id, kind=job.kind, state=job.state, prompt=job.request.get("prompt"), source=job.source,
            created=job.created, started=job.started, finished=job.finished, device=job.device, runs=job.runs,
            stage=job.stage, step=job.step, total=job.total, done_steps=job.done_steps, all_steps=job.all_steps,
            eta_s=job.eta_s, losses=job.losses, message=job.message, error=job.error,
            preview_url=f"/jobs/{job.id}/artifacts/{job.preview}" if job.preview else None,
            artifacts_url=f"/jobs/{job.id}/artifacts",
        )


class JobList(BaseModel):
    jobs: list[JobStatus]


class Artifact(BaseModel):
    name: str
    bytes: int
    url: str


class ArtifactList(BaseModel):
    artifacts: list[Artifact]


class ErrorBody(BaseModel):
    detail: str = Field(description="One line: what was wrong and what to do.")


class Health(BaseModel):
    version: str
    devices: list[str]
    queued: int
    running: int
