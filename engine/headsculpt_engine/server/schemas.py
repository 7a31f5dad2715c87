"""Request and answer bodies of API v1 (see api-contract.md), validated by pydantic."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..config import Preset

MAX_TEXT = 500
# Bounds that keep a request's numbers inside what SQLite and the engine's RNG accept.
MAX_SEED = 2**32 - 1

# Surrounding whitespace is dropped first, so a blank prompt is refused as empty.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT)]


class _Strict(BaseModel):
    # strict: JSON true is not the integer 1, "3" is not 3; a float field still takes a JSON integer.
    model_config = ConfigDict(extra="forbid", strict=True)


class RayCluster(BaseModel):
    """The Ray cluster a `serve --ray` server runs its jobs on."""

    address: str
    nodes: int  # live nodes
    gpus: int
    slots: int  # jobs it runs at once: its GPUs, or its headsculpt_slot resources on CPUs
    running: int  # jobs running there now
    dashboard_url: str  # Ray's own dashboard; empty when the cluster runs without it


class Health(BaseModel):
    status: Literal["ok"]
    engine_version: str
    api_version: int
    device: str
    models: str
    cluster: RayCluster | None = None  # only on a server started with --ray
    lora_max_bytes: int | None = None  # the largest LoRA file POST /v1/loras takes (--lora-max-mb)


class PriorUpload(_Strict):
    name: Annotated[str, Field(max_length=200)] = ""
    vertex_count: Annotated[int, Field(ge=4)]
    face_count: Annotated[int, Field(ge=4)]
    vertices_b64: str
    faces_b64: str
    landmark_indices: Annotated[list[Annotated[int, Field(ge=0)]] | None,
                                Field(min_length=478, max_length=478)] = None
    # Guided landmarks (prior/keypoints.py): {name: [x, y, z]} in the uploaded vertices' frame.
    keypoints: Annotated[dict[Annotated[str, Field(max_length=40)], list[float]] | None,
                         Field(max_length=16)] = None
    # False: no detection (a prior for jobs with "landmarks": "none").
    detect_landmarks: bool = True


class LandmarkStatus(BaseModel):
    status: Literal["found", "missing"]
    count: int
    message: str


class PriorInfo(BaseModel):
    prior_id: str
    name: str
    vertex_count: int
    face_count: int
    is_flame: bool
    landmarks: LandmarkStatus
    # False for a prior uploaded with "detect_landmarks": false (only jobs without landmark control).
    landmarks_requested: bool = True


# How a job names a LoRA: a Hugging Face id (owner/name), read from the engine's model cache, or the id of
# a file uploaded with POST /v1/loras (upload:<sha256>), read from the data folder; never a path.
LoraId = Annotated[str, StringConstraints(
    pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*|upload:[0-9a-f]{64})$", max_length=96)]
# An uploaded image (POST /v1/images): the sha256 of the PNG the engine stored.
ImageId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
MAX_LORAS = 4


class LoraChoice(_Strict):
    id: LoraId
    scale: Annotated[float, Field(ge=-2.0, le=2.0)] = 1.0


class ImageUpload(_Strict):
    data_b64: Annotated[str, Field(min_length=1)]  # the image file's bytes (PNG, JPEG, ...), base64


class ImageInfo(BaseModel):
    image_id: str
    width: int
    height: int


class LoraInfo(BaseModel):
    lora_id: str  # upload:<sha256>, what a job's loras entry names
    size: int  # bytes


class _Styles(_Strict):
    """StyleAvatar3D's styles and image prompt, on generate and edit jobs."""

    loras: Annotated[list[LoraChoice], Field(max_length=MAX_LORAS)] = []
    image_id: ImageId | None = None
    image_scale: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0


class GenerateRequest(_Styles):
    kind: Literal["generate"]
    prior_id: Annotated[str, Field(min_length=1, max_length=64)]
    prompt: Text
    negative_prompt: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    preset: Preset
    guidance: Literal["sds", "ssd"] = "sds"
    # "none": no landmark control (the plain diffusion model with view prompts).
    landmarks: Literal["prior", "none"] = "prior"


class EditRequest(_Styles):
    kind: Literal["edit"]
    parent_job_id: Annotated[str, Field(min_length=1, max_length=64)]
    instruction: Text
    edit_scale: Annotated[float, Field(ge=0.0, le=1.0)] = 0.6
    preset: Preset
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    # The parent's LoRAs and image prompt, where this edit names none of its own; False: only its own.
    parent_styles: bool = True


JobRequest = Annotated[Union[GenerateRequest, EditRequest], Field(discriminator="kind")]


class JobEvent(BaseModel):
    at: float
    message: str


class JobInfo(BaseModel):
    job_id: str
    kind: Literal["generate", "edit"]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: str
    iteration: int
    total: int
    eta_s: float | None
    loss: float | None
    message: str
    prompt: str
    instruction: str | None
    seed: int
    preset: str
    prior_id: str
    parent_job_id: str | None
    created_at: float
    updated_at: float
    has_preview: bool
    result_files: list[str]
    history: list[JobEvent]


class JobList(BaseModel):
    jobs: list[JobInfo]


class ErrorBody(BaseModel):
    detail: str


def validation_sentence(errors: list[dict[str, Any]]) -> str:
    """Pydantic's error list as one sentence: which field, what is wrong."""
    parts = []
    for item in errors[:3]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path"))
        if item.get("type") == "json_invalid":
            return ("The request body is not valid JSON (UTF-8 text, nested at most a few hundred "
                    f"levels deep): {item.get('ctx', {}).get('error', 'unreadable')}.")
        if item.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            return "The job needs \"kind\": \"generate\" or \"edit\"."
        parts.append(f"{where or 'body'}: {item.get('msg', 'invalid value')}")
    return "Invalid request: " + "; ".join(parts) + "."
