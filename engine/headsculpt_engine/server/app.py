"""The FastAPI application of API v1 (see api-contract.md): routes, error bodies, size limit."""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from .. import API_VERSION, __version__
from ..errors import InputError
from .auth import BearerAuth
from .files import regular_file
from .hosts import HostCheck
from .images import BadImage, ImageStore
from .loras import UPLOAD_PREFIX, BadLora, LoraStore, lora_path
from .priors import BadPrior, BuildPrior, PriorStore, PriorTooLarge, build_engine_prior, write_landmark_preview
from .runner import PipelineJobs, ServerOptions, edit_request
from .schemas import (ErrorBody, Health, ImageInfo, ImageUpload, JobEvent, JobInfo, JobList, JobRequest, LoraInfo,
                      PriorInfo, PriorUpload, RayCluster, validation_sentence)
from .store import JobRecord, JobStore
from .uploads import UploadRunner
from .worker import RunJob, Worker

log = logging.getLogger("headsculpt.server")

MAX_BODY_BYTES = 64 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 120.0
RESULT_FILES = ("avatar.glb", "avatar_albedo.png", "avatar.json", "avatar.obj", "avatar.mtl", "turntable.gif")
_MEDIA_TYPES = {".glb": "model/gltf-binary", ".png": "image/png", ".json": "application/json",
                ".obj": "text/plain", ".mtl": "text/plain", ".gif": "image/gif"}
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 413, 421, 422)}
JOB_REQUEST = TypeAdapter(JobRequest)
PRIOR_UPLOAD = TypeAdapter(PriorUpload)
IMAGE_UPLOAD = TypeAdapter(ImageUpload)


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over its route's limit (`routes`: path -> (bytes, the
    sentence), else `limit`), whether declared up front (Content-Length) or found while streaming (chunked)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, routes: dict[str, tuple[int, str]] | None = None):
        self.app, self.routes = app, routes or {}
        self.default = (limit, f"The request is larger than {limit // (1024 * 1024)} MiB; send a smaller mesh.")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, detail = self.routes.get(scope["path"], self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                # An HTTPException passes through FastAPI's body parsing untouched and becomes the answer.
                raise HTTPException(413, detail)
            return message

        await self.app(scope, limited_receive, send)


@functools.cache
def device_label() -> str:
    """What the jobs run on, as the health answer shows it (imports torch once, on first ask)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return "cpu"


def create_app(options: ServerOptions, token: str, run_job: RunJob | None = None,
               build_prior: BuildPrior = build_engine_prior) -> FastAPI:
    """The app over `options.data_dir`. `run_job` defaults to the pipeline; tests inject their own."""
    store = JobStore(options.data_dir)
    uploads = UploadRunner(build_prior, options.upload_timeout_s, options.upload_memory_bytes)

    def priors_in_use() -> set[str]:
        return {job.request.get("prior_id", "") for job in store.list() if job.state in ("queued", "running")}

    priors = PriorStore(options.data_dir, uploads.run, options.prior_cache_bytes, in_use=priors_in_use)

    def loras_in_use() -> set[str]:
        return {lora["id"] for job in store.list() if job.state in ("queued", "running")
                for lora in job.request.get("loras") or []}

    if options.ray_address:  # jobs run on a Ray cluster; Ray is imported only then
        try:
            from .ray_workers import RayWorkers
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] != "ray":
                raise
            raise InputError("--ray needs Ray: install the engine's ray extra "
                             "(pip install 'headsculpt-engine[ray]').") from None

        worker: Worker | RayWorkers = RayWorkers.connect(store, priors.root, options)
    else:
        worker = Worker(store, run_job or PipelineJobs(store.jobs_dir, priors.root, options))
    images = ImageStore(options.data_dir)
    loras = LoraStore(options.data_dir, options.lora_cache_bytes, in_use=loras_in_use)
    for blobs in (images.blobs, loras.blobs):  # no upload runs before the app starts
        blobs.remove_leftovers()
    # One upload at a time (each in its own process); the next one's body is not read meanwhile,
    # so waiting uploads cost no memory.
    upload_lock = asyncio.Lock()
    # Rendering a landmark sheet is heavy: one at a time, each prior's sheet only once.
    preview_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        # Importing torch to name the device takes seconds: do it now, not in the first health check.
        threading.Thread(target=device_label, name="headsculpt-device-probe", daemon=True).start()
        try:
            yield
        finally:
            # The running job gets its checkpoint written and stays queued for the next start. A job
            # still loading models cannot stop before its first iteration: past the timeout it is
            # simply left `running`, and the next start queues it again all the same.
            log.info("stopping: the running job, if any, writes its checkpoint")
            uploads.cancel()
            worker.stop(timeout_s=SHUTDOWN_TIMEOUT_S)

    app = FastAPI(title="HeadSculpt engine", version=__version__, lifespan=lifespan,
                  description=f"API v{API_VERSION}. Every endpoint except /v1/health needs "
                              "'Authorization: Bearer <token>'.")
    lora_limit = (options.lora_max_bytes, f"The LoRA file is larger than {options.lora_max_bytes / 2**20:g} MiB, "
                                          "this engine's limit (--lora-max-mb); send a smaller LoRA.")
    app.add_middleware(BodySizeLimit, routes={"/v1/loras": lora_limit})
    app.add_middleware(BearerAuth, token=token)  # runs before any body is read
    if options.allowed_hosts:
        app.add_middleware(HostCheck, names=options.allowed_hosts)  # added last: runs first

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return JSONResponse({"detail": validation_sentence(list(error.errors()))}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"Internal engine error ({type(error).__name__}); "
                                       "the engine log has the details."}, status_code=500)

    @app.get("/v1/health", response_model=Health, tags=["public"])
    def health() -> Health:
        cluster = RayCluster(**worker.health()) if options.ray_address else None
        return Health(status="ok", engine_version=__version__, api_version=API_VERSION,
                      device=device_label(), models=options.models_label(), cluster=cluster,
                      lora_max_bytes=options.lora_max_bytes)


    def job_info(job: JobRecord) -> JobInfo:
        request = job.request
        run_dir = store.run_dir(job.job_id)
        results = [name for name in RESULT_FILES if regular_file(run_dir, f"result/{name}")] \
            if job.state == "done" else []
        return JobInfo(
            job_id=job.job_id, kind=job.kind, state=job.state, stage=job.stage, iteration=job.iteration,
            total=job.total, eta_s=job.eta_s, loss=job.loss, message=job.message,
            prompt=request.get("prompt", ""), instruction=request.get("instruction"),
            seed=request["seed"], preset=request["preset"], prior_id=request.get("prior_id", ""),
            parent_job_id=request.get("parent_job_id"), created_at=job.created_at,
            updated_at=job.updated_at, has_preview=bool(job.preview and regular_file(run_dir, job.preview)),
            result_files=results, history=[JobEvent(at=at, message=message) for at, message in job.history])

    def get_job(job_id: str) -> JobRecord:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job {job_id!r} on this engine; list jobs with GET /v1/jobs.")
        return job

    @app.post("/v1/priors", responses=_ERRORS, response_model=PriorInfo, status_code=201,
              openapi_extra=_json_body(PriorUpload.__name__))
    async def upload_prior(request: Request) -> PriorInfo:
        """The body goes unparsed to a child process (uploads.py); this process only waits."""
        async with upload_lock:
            body = await request.body()
            try:
                return await run_in_threadpool(priors.add, body)
            except PriorTooLarge as error:
                raise HTTPException(413, str(error)) from None
            except BadPrior as error:
                raise HTTPException(422, str(error)) from None

    @app.get("/v1/priors/{prior_id}", responses=_ERRORS, response_model=PriorInfo)
    def get_prior(prior_id: str) -> PriorInfo:
        info = priors.info(prior_id)
        if info is None:
            raise HTTPException(404, f"No prior {prior_id!r} on this engine; upload it with POST /v1/priors.")
        return info

    @app.delete("/v1/priors/{prior_id}", responses=_ERRORS, status_code=204, response_class=Response)
    def delete_prior(prior_id: str) -> Response:
        get_prior(prior_id)
        if not priors.delete(prior_id):
            raise HTTPException(409, "Queued or running jobs use this prior: let them finish or cancel them, "
                                     "then delete it.")
        return Response(status_code=204)

    @app.get("/v1/priors/{prior_id}/landmark-preview", response_class=FileResponse,
             responses={**_ERRORS, 200: {"content": {"image/png": {}}}})
    def prior_landmark_preview(prior_id: str) -> FileResponse:
        get_prior(prior_id)
        prior_dir = priors.prior_dir(prior_id)
        with preview_lock:
            write_landmark_preview(prior_dir, prior_dir.parent / "landmark_preview.png")
        path = regular_file(prior_dir.parent, "landmark_preview.png")
        if path is None:
            raise HTTPException(404, f"The landmark preview of prior {prior_id!r} is not available.")
        return FileResponse(path, media_type="image/png")

    @app.post("/v1/images", responses=_ERRORS, response_model=ImageInfo, status_code=201,
              openapi_extra=_json_body(ImageUpload.__name__))
    async def upload_image(request: Request) -> ImageInfo:
        """An image prompt: decoded and stored as PNG (images.py); jobs name it by image_id."""
        body = await request.body()
        try:
            upload = await run_in_threadpool(IMAGE_UPLOAD.validate_json, body)
            return ImageInfo(**await run_in_threadpool(images.add, upload.data_b64))
        except ValidationError as error:
            raise HTTPException(422, validation_sentence(error.errors())) from None
        except BadImage as error:
            raise HTTPException(422, str(error)) from None

    @app.post("/v1/loras", responses=_ERRORS, response_model=LoraInfo, status_code=201,
              openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                  "schema": {"type": "string", "format": "binary"}}}}})
    async def upload_lora(request: Request) -> LoraInfo:
        """A style LoRA: the .safetensors file's bytes as the body, checked and stored (loras.py); jobs
        name it by lora_id. The body limit is --lora-max-mb."""
        try:
            return LoraInfo(**await loras.add(request.stream()))
        except BadLora as error:
            raise HTTPException(422, str(error)) from None

    @app.post("/v1/jobs", responses=_ERRORS, response_model=JobInfo, status_code=202,
              openapi_extra=_json_body("JobRequest"))
    async def submit_job(http_request: Request) -> JobInfo:
        body = await http_request.body()
        try:
            # pydantic's own JSON parser: invalid UTF-8, deep nesting and huge numbers are 422s too.
            request = await run_in_threadpool(JOB_REQUEST.validate_json, body)
        except ValidationError as error:
            raise HTTPException(422, validation_sentence(error.errors())) from None
        return await run_in_threadpool(accept_job, request)

    def accept_job(request: JobRequest) -> JobInfo:
        if request.preset not in options.allowed_presets():
            raise HTTPException(422, f"This engine accepts the presets {', '.join(options.allowed_presets())} "
                                     f"only (started with --preset-limit {options.preset_limit}).")
        data = request.model_dump()
        if request.kind == "generate":
            check_styles(data)
            prior_info = priors.info(request.prior_id)
            if prior_info is None:
                raise HTTPException(422, f"Unknown prior_id {request.prior_id!r}: upload the prior first.")
            if request.landmarks == "prior" and not prior_info.landmarks_requested:
                raise HTTPException(422, "This prior has no face landmarks: upload it with keypoints marked on "
                                         "the face, or submit the job with \"landmarks\": \"none\".")
            priors.touch(request.prior_id)
        else:
            parent = store.get(request.parent_job_id)
            if parent is None:
                raise HTTPException(422, f"Unknown parent_job_id {request.parent_job_id!r}.")
            if parent.state != "done":
                raise HTTPException(409, f"The parent job is {parent.state}; an edit starts from a done job.")
            inherits_loras = request.parent_styles and not data.get("loras")
            data = edit_request(data, parent.request)
            check_styles(data, inherited=inherits_loras)  # the inherited styles too
        job = store.submit(request.kind, data)
        worker.wake()
        return job_info(job)

    def check_styles(data: dict[str, Any], inherited: bool = False) -> None:
        """A job's image must be uploaded, and each LoRA uploaded or in the engine's model cache (never
        downloaded); an edit's inherited ones too (`inherited`: its LoRAs are its parent's)."""
        from ..errors import HeadSculptError

        image_id = data.get("image_id")
        if image_id is not None and images.path(image_id) is None:
            raise HTTPException(422, f"Unknown image_id {image_id!r}: upload the image first (POST /v1/images).")
        for lora in data.get("loras") or []:
            if inherited and loras.path(lora["id"]) is None and lora["id"].startswith(UPLOAD_PREFIX):
                raise HTTPException(422, "The style LoRA the parent avatar was made with is no longer on this engine "
                                         "(it keeps the most recently used uploads, --lora-cache-mb); name the "
                                         "LoRA again, or edit without the parent's style.")
            try:
                lora_path(options.data_dir, lora["id"])
            except HeadSculptError as error:
                raise HTTPException(422, str(error)) from None
            loras.touch(lora["id"])

    @app.get("/v1/jobs", responses=_ERRORS, response_model=JobList)
    def list_jobs() -> JobList:
        return JobList(jobs=[job_info(job) for job in store.list()])

    @app.get("/v1/jobs/{job_id}", responses=_ERRORS, response_model=JobInfo)
    def read_job(job_id: str) -> JobInfo:
        return job_info(get_job(job_id))

    @app.get("/v1/jobs/{job_id}/preview", response_class=FileResponse,
            responses={**_ERRORS, 200: {"content": {"image/png": {}}}})
    def job_preview(job_id: str) -> FileResponse:
        job = get_job(job_id)
        path = regular_file(store.run_dir(job.job_id), job.preview) if job.preview else None
        if path is None:
            raise HTTPException(404, "This job has no preview yet; previews appear as training goes on.")
        return FileResponse(path, media_type="image/png")

    @app.get("/v1/jobs/{job_id}/result/{name}", response_class=FileResponse,
            responses={**_ERRORS, 200: {"content": {t: {} for t in sorted(set(_MEDIA_TYPES.values()))}}})
    def job_result(job_id: str, name: str) -> FileResponse:
        info = job_info(get_job(job_id))
        if name not in info.result_files:  # only the fixed names, never a client-chosen path
            raise HTTPException(404, f"This job has no result {name!r}; it has: "
                                     f"{', '.join(info.result_files) or 'none yet'}.")
        path = regular_file(store.run_dir(info.job_id), f"result/{name}")
        if path is None:  # removed since it was listed
            raise HTTPException(404, f"This job's result {name!r} is no longer there.")
        return FileResponse(path, media_type=_MEDIA_TYPES[Path(name).suffix], filename=name)

    @app.post("/v1/jobs/{job_id}/cancel", responses=_ERRORS, response_model=JobInfo)
    def cancel_job(job_id: str) -> JobInfo:
        store.request_cancel(get_job(job_id).job_id)
        return job_info(get_job(job_id))

    @app.delete("/v1/jobs/{job_id}", responses=_ERRORS, status_code=204, response_class=Response)
    def delete_job(job_id: str) -> Response:
        job = get_job(job_id)
        if not store.delete(job.job_id):
            raise HTTPException(409, "The job is running: cancel it first, then delete it.")
        return Response(status_code=204)

    _document_schema(app, public=("/v1/health",))
    return app


def _json_body(schema_name: str) -> dict[str, Any]:
    """The request body of a route that parses its own JSON (see `_document_schema`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}}


def _document_schema(app: FastAPI, public: tuple[str, ...]) -> None:
    """Complete the OpenAPI schema: the bodies the routes parse themselves, the bearer token (the
    BearerAuth middleware enforces it) and the Host check's 421 on every route."""
    build_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build_schema()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, adapter in (("PriorUpload", PRIOR_UPLOAD), ("JobRequest", JOB_REQUEST),
                                  ("ImageUpload", IMAGE_UPLOAD)):
                body = adapter.json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[name] = body
            components.setdefault("ErrorBody", ErrorBody.model_json_schema())
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation.setdefault("responses", {}).setdefault("421", {
                        "description": "Misdirected Request",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "The token in the engine's data folder (DATA/token)."}}
            for path, operations in schema["paths"].items():
                if path.startswith("/v1/") and path not in public:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi
