"""The HTTP API: submit, list, status, progress stream, cancel, resume, export, artifacts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Annotated

from fastapi import Body, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from dreamsmith.errors import DreamsmithError
from dreamsmith.server.access import AccessGuard, artifact_names, artifact_path
from dreamsmith.server.config import ServerConfig
from dreamsmith.server.scheduler import Scheduler
from dreamsmith.server.schemas import (
    SERVER_ONLY_KEYS,
    Artifact,
    ArtifactList,
    EditRequest,
    ErrorBody,
    ExportRequest,
    GenerateRequest,
    Health,
    JobList,
    JobStatus,
)
from dreamsmith.server.store import FINISHED_STATES, JOB_ID, Job, JobStore
from dreamsmith.server.uploads import GLB_TYPES, UploadError, check_glb

JobId = Annotated[str, Path(pattern=JOB_ID.pattern, description="A job id (32 hex digits).")]
STATE_PATTERN = "^(queued|running|cancelling|cancelled|succeeded|failed)$"
KEEPALIVE_SECONDS = 15.0


def _errors(*codes: int) -> dict[int | str, dict]:
    return {code: {"model": ErrorBody} for code in codes}


def create_app(config: ServerConfig, run_jobs: bool = True) -> FastAPI:
    """The API over ``config.jobs_dir``. run_jobs: start the scheduler with the app (False: the HTTP
    layer alone, jobs wait in the queue; for tests of the API itself)."""
    store = JobStore(config.jobs_dir)
    scheduler = Scheduler(store, config.devices)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_jobs:  # in a thread: recovery may wait for a previous server's orphaned workers to stop
            await asyncio.to_thread(scheduler.start)
        yield
        if run_jobs:
            await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="dreamsmith", version=_version(), lifespan=lifespan,
                  description="Local job server: text to game-ready 3D assets. Jobs run one at a time per device.")
    app.add_middleware(AccessGuard, config=config)

    @app.exception_handler(DreamsmithError)
    async def user_error(request: Request, error: DreamsmithError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=getattr(error, "status", 400))

    def existing(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/health", response_model=Health, summary="Version, devices and queue length")
    def health() -> Health:
        return Health(version=_version(), devices=list(config.devices), queued=len(store.list("queued", 10_000)),
                      running=len(store.list("running", 10_000)))

    @app.post("/jobs", status_code=201, response_model=JobStatus, responses=_errors(400),
              summary="Queue a generate job")
    def submit(request: GenerateRequest) -> JobStatus:
        for override in request.overrides:
            key = override.split("=", 1)[0].strip()
            if key in SERVER_ONLY_KEYS:
                raise HTTPException(400, f"'{key}' is set by the server, not by a request; remove that override")
        return JobStatus.of(store.add("generate", request.model_dump()))

    @app.post("/jobs/texture", status_code=201, response_model=JobStatus, responses=_errors(400, 413, 415, 422),
              summary="Texture an uploaded mesh (GLB body)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  kind: {"schema": {"type": "string", "format": "binary"}} for kind in GLB_TYPES}}})
    async def texture(request: Request, prompt: Annotated[str, Query(min_length=1, max_length=500)]) -> JobStatus:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in GLB_TYPES:
            raise UploadError(f"send the mesh as a GLB body with Content-Type model/gltf-binary, not '{kind}'", 415)
        counts = check_glb(await _read_limited(request, config.max_upload_bytes))
        raise UploadError(f"the mesh is a valid GLB ({counts['meshes']} meshes, {counts['bytes']} bytes), but "
                          "dreamsmith has no texture stage yet: texture jobs cannot run; generate an asset instead",
                          422)

    @app.get("/jobs", response_model=JobList, summary="Jobs, newest first")
    def list_jobs(state: Annotated[str | None, Query(pattern=STATE_PATTERN)] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JobList:
        return JobList(jobs=[JobStatus.of(job) for job in store.list(state, limit)])

    @app.get("/jobs/{job_id}", response_model=JobStatus, responses=_errors(404), summary="A job's state and progress")
    def status(job_id: JobId) -> JobStatus:
        return JobStatus.of(existing(job_id))

    @app.get("/jobs/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}, **_errors(404)},
             summary="Server-sent events: the job's status whenever it changes, until it finishes")
    async def events(job_id: JobId) -> StreamingResponse:
        existing(job_id)
        return StreamingResponse(_status_stream(store, job_id, config.stream_seconds), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobStatus, responses=_errors(404, 409),
              summary="Stop a job at the next step boundary, with a checkpoint")
    def cancel(job_id: JobId) -> JobStatus:
        job = existing(job_id)
        moved = (store.transition(job_id, ("queued",), "cancelled")
                 or store.transition(job_id, ("running",), "cancelling", message="cancelling at the next step"))
        if not moved and job.state not in ("cancelling", "cancelled"):
            raise HTTPException(409, f"job {job_id} is {job.state}; only queued or running jobs can be cancelled")
        return JobStatus.of(existing(job_id))

    @app.post("/jobs/{job_id}/resume", status_code=202, response_model=JobStatus, responses=_errors(404, 409),
              summary="Queue a cancelled or failed job again; it continues from its last checkpoint")
    def resume(job_id: JobId) -> JobStatus:
        job = existing(job_id)
        if not store.transition(job_id, ("cancelled", "failed"), "queued", resume=1, error=None, finished=None,
                                message="queued to resume"):
            raise HTTPException(409, f"job {job_id} is {job.state}; only cancelled or failed jobs can be resumed")
        return JobStatus.of(existing(job_id))

    @app.post("/jobs/{job_id}/export", status_code=201, response_model=JobStatus, responses=_errors(404, 409),
              summary="Queue a re-export of a finished job with other options")
    def export(job_id: JobId, request: ExportRequest) -> JobStatus:
        job = existing(job_id)
        if job.state != "succeeded" or job.kind != "generate":
            raise HTTPException(409, f"job {job_id} is {job.state} ({job.kind}); only finished generate jobs export")
        payload = {"prompt": job.request.get("prompt"), **request.model_dump()}
        return JobStatus.of(store.add("export", payload, source=job_id))

    @app.post("/jobs/{job_id}/edit", status_code=201, response_model=JobStatus, responses=_errors(404, 409, 422),
              summary="Edit a finished asset by instruction")
    def edit(job_id: JobId, request: Annotated[EditRequest, Body()]) -> JobStatus:
        job = existing(job_id)
        if job.state != "succeeded":
            raise HTTPException(409, f"job {job_id} is {job.state}; only a finished asset can be edited")
        raise HTTPException(422, "dreamsmith has no edit stage yet: edit jobs cannot run; generate a new asset instead")

    @app.get("/jobs/{job_id}/artifacts", response_model=ArtifactList, responses=_errors(404),
             summary="The job's downloadable files")
    def artifacts(job_id: JobId) -> ArtifactList:
        existing(job_id)
        run_dir = store.job_dir(job_id) / "run"
        return ArtifactList(artifacts=[Artifact(name=name, bytes=(run_dir / name).stat().st_size,
                                                url=f"/jobs/{job_id}/artifacts/{name}")
                                       for name in artifact_names(run_dir)])

    @app.get("/jobs/{job_id}/artifacts/{name:path}", response_class=FileResponse, responses=_errors(404),
             summary="Download one file: asset.glb, qa.json, report.json, previews/final.png, ...")
    def artifact(job_id: JobId, name: str) -> FileResponse:
        existing(job_id)
        path = artifact_path(store.job_dir(job_id) / "run", name)
        if path is None:
            raise HTTPException(404, f"job {job_id} has no artifact '{name}'")
        return FileResponse(path, filename=path.name)

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(f"the upload is {int(declared)} bytes; the limit is {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(f"the upload exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _status_stream(store: JobStore, job_id: str, seconds: float) -> AsyncIterator[str]:
    """``event: status`` with the job's JSON whenever it changes, ``event: end`` once it is finished."""
    deadline, quiet_since, last = time.monotonic() + seconds, time.monotonic(), None
    while True:
        job = store.get(job_id)
        current = JobStatus.of(job).model_dump_json()
        if current != last:
            yield f"event: status\ndata: {current}\n\n"
            last, quiet_since = current, time.monotonic()
        if job.state in FINISHED_STATES:
            yield f"event: end\ndata: {current}\n\n"
            return
        if time.monotonic() > deadline:
            return
        if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(0.25)


def _version() -> str:
    try:
        return metadata.version("dreamsmith")
    except metadata.PackageNotFoundError:
        return "unknown"
