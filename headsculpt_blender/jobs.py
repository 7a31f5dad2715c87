"""Talking to the engine without blocking Blender: network work runs in worker threads, and the plain
function `poll_step(scene)` (called by a timer in interactive Blender, directly by tests) applies the
finished work to the scene on the main thread and asks for a status refresh while a job is active.
"""
from __future__ import annotations

import functools
import json
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import bpy

from . import importer
from .client import EngineError
from .engine import EngineSettings, connect
from .properties import (ACTIVE_STATES, PROP_INSTRUCTION, PROP_JOB, PROP_KIND, PROP_PARENT, PROP_PRIOR,
                         PROP_PROMPT, PROP_SEED, state)

UNREACHABLE_BACKOFF_S = 5.0
# The engine's sentence for a model missing from the cache (models/loading.py); the engine server never
# downloads, so the panel points at the add-on's own Download models.
MISSING_MODEL = "is not in the local Hugging Face cache"
DOWNLOAD_HINT = (" In Blender, a local engine gets the models with Download models in the HeadSculpt add-on "
                 "preferences.")


@dataclass
class Pending:
    future: Future
    apply: Callable  # (scene, result) -> None, main thread only
    what: str


_executor: ThreadPoolExecutor | None = None
_pending: dict[tuple[str, str], Pending] = {}  # (scene name, slot)
_timers: dict[str, Callable] = {}
_failed_at: dict[str, float] = {}


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="headsculpt")
    return _executor


def busy(scene) -> bool:
    return (scene.name, "main") in _pending


def start(scene, what: str, work: Callable, apply: Callable, slot: str = "main") -> None:
    """Run `work()` in a worker thread; `apply(scene, result)` later runs in `poll_step`. One piece of
    work per slot: "main" for submissions and refreshes, "cancel" so that cancelling never waits."""
    key = (scene.name, slot)
    if key in _pending:
        raise EngineError(f"HeadSculpt is still busy ({_pending[key].what}); wait a moment.")
    _pending[key] = Pending(_pool().submit(work), apply, what)
    ensure_polling(scene)


def job_active(scene) -> bool:
    st = state(scene)
    return bool(st.job_id) and (st.job_state in ACTIVE_STATES or (st.job_state == "done" and not st.result_object))


def _apply_finished(scene) -> None:
    st = state(scene)
    for key in [key for key in _pending if key[0] == scene.name]:
        pending = _pending[key]
        if not pending.future.done():
            continue
        del _pending[key]
        try:
            pending.apply(scene, pending.future.result())
            _failed_at.pop(scene.name, None)
        except EngineError as error:
            st.last_error, st.status = str(error), ""  # the status named the work that failed
            _failed_at[scene.name] = time.monotonic()
            if st.job_state == "submitting":
                st.job_state = ""
        except Exception as error:  # an import or file problem: report it, keep Blender running
            st.last_error, st.status = f"{pending.what.capitalize()} failed: {error}", ""
            _failed_at[scene.name] = time.monotonic()
            if st.job_state == "submitting":
                st.job_state = ""
            elif st.job_state == "done":
                st.job_state = "not imported"  # stop polling; the result stays in the user folder


def poll_step(scene, settings: EngineSettings | None = None) -> bool:
    """Apply finished background work, and start a refresh while a job is active. Never blocks.
    Returns whether anything is still going on (the timer keeps running while it is)."""
    st = state(scene)
    _apply_finished(scene)
    if job_active(scene) and st.job_state != "submitting" and not busy(scene):
        if time.monotonic() - _failed_at.get(scene.name, -1e9) < UNREACHABLE_BACKOFF_S:
            return True
        if settings is None:
            from .preferences import engine_settings, preferences
            try:
                settings = engine_settings(preferences())
            except EngineError as error:
                st.last_error = str(error)
                return True
        start_refresh(scene, settings)
    return any(key[0] == scene.name for key in _pending) or job_active(scene)


# -- worker functions (no bpy) ------------------------------------------------------------------------

def work_prior(settings: EngineSettings, name: str, vertices, faces, landmarks: dict | None = None) -> tuple:
    """Upload the prior; `landmarks`: the upload's landmark options (landmark_indices, keypoints,
    detect_landmarks: see EngineClient.upload_prior)."""
    client = connect(settings)
    return client, client.upload_prior(name, vertices, faces, **(landmarks or {}))


def landmark_refusal(info: dict, name: str) -> str:
    """Why the uploaded prior cannot guide generation ("" when it can)."""
    landmarks = info.get("landmarks") or {}
    if info.get("is_flame") or landmarks.get("status") == "found":
        return ""
    return f"{name} cannot serve as a head prior: {landmarks.get('message') or 'no face was found on it'}"


def work_generate(settings: EngineSettings, name: str, vertices, faces, landmarks: dict | None,
                  job_list: list[dict], image: bytes | None = None) -> dict:
    """Upload the prior once (and the image prompt) and submit the jobs (one, or one per variation); a
    prior without landmarks is not submitted unless the jobs ask for no landmark control (the PriorInfo
    still comes back, so that the badge can say why)."""
    client, info = work_prior(settings, name, vertices, faces, landmarks)
    no_control = all(job.get("landmarks") == "none" for job in job_list)
    refusal = "" if no_control else landmark_refusal(info, name)
    if refusal:
        return {"prior": info, "jobs": [], "refusal": refusal}
    uploaded: dict[str, str] = {}
    submitted = [client.submit(with_uploads(client, dict(job, prior_id=info["prior_id"]), image, uploaded))
                 for job in job_list]
    return {"prior": info, "jobs": submitted, "refusal": ""}


def with_uploads(client, job: dict, image: bytes | None, uploaded: dict[str, str]) -> dict:
    """The job with its image prompt and LoRA files uploaded first and named by the engine's ids
    (image_id, upload:<sha256>). `uploaded` holds the ids this submission got so far: the variations of
    one Generate share each upload."""
    def once(key: str, upload) -> str:
        if key not in uploaded:
            uploaded[key] = upload()
        return uploaded[key]

    named = dict(job)
    if image is not None:
        named["image_id"] = once("image", lambda: client.upload_image(image)["image_id"])
    if job.get("loras"):
        named["loras"] = [
            {"id": once(lora["file"], lambda: client.upload_lora(Path(lora["file"]))["lora_id"]),
             "scale": lora["scale"]} if "file" in lora else lora for lora in job["loras"]]
    return named


def work_landmarks(settings: EngineSettings, name: str, vertices, faces, landmarks: dict | None) -> dict:
    client, info = work_prior(settings, name, vertices, faces, landmarks)
    return {"prior": info, "png": client.landmark_preview(info["prior_id"])}


def work_submit(settings: EngineSettings, job: dict, image: bytes | None = None) -> dict:
    client = connect(settings)
    return {"job": client.submit(with_uploads(client, job, image, {}))}


def work_cancel(settings: EngineSettings, job_id: str, *queued_ids: str) -> dict:
    """Cancel the job, and the variations queued after it."""
    client = connect(settings)
    job = client.cancel(job_id)
    for queued in queued_ids:
        client.cancel(queued)
    return {"job": job}


def work_refresh(settings: EngineSettings, job_id: str, seen_update: float, results_dir: Path) -> dict:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", job_id) or job_id.strip(".") == "":
        # The id names the results folder: never let an engine's answer point outside it.
        raise EngineError(f"The engine gave the job an id this add-on cannot use as a folder name: {job_id!r}.")
    client = connect(settings)
    job = client.job(job_id)
    preview = None
    if job.get("has_preview") and job.get("updated_at", 0.0) != seen_update:
        try:
            preview = client.preview(job_id)
        except EngineError:
            preview = None  # a preview replaced while we asked for it; the next refresh gets it
    glb = None
    if job.get("state") == "done":
        if "avatar.glb" not in job.get("result_files", []):
            raise EngineError("The engine finished the job but it has no avatar.glb to import.")
        folder = results_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        glb = folder / "avatar.glb"
        partial = glb.with_suffix(".part")
        partial.write_bytes(client.result_file(job_id, "avatar.glb"))
        partial.replace(glb)
    return {"job": job, "preview": preview, "glb": glb}


# -- main-thread side ---------------------------------------------------------------------------------

def begin_job(scene, kind: str, *, prompt: str, seed: int, instruction: str, parent_id: str, prior, source,
              status: str, name: str = "") -> None:
    """Reset the scene's job fields for a submission on its way (it has no engine id yet)."""
    st = state(scene)
    st.job_id, st.job_kind, st.job_state, st.job_stage = "", kind, "submitting", ""
    st.job_iteration = st.job_total = 0
    st.job_eta_s, st.job_updated_at = -1.0, 0.0
    st.job_prompt, st.job_seed, st.job_instruction, st.job_parent_id = prompt, seed, instruction, parent_id
    st.job_prior, st.job_source, st.result_object = prior, source, None
    st.job_name, st.job_place, st.variation_queue = name, 0, ""
    st.last_error, st.status = "", status


def queue_variations(scene, submitted: list[dict], names: list[str]) -> None:
    """After a submission: the first job is the current one, the others wait in the queue, each with
    its avatar's name and its place in the row (0 sits on the prior)."""
    st = state(scene)
    set_job(scene, submitted[0])
    waiting = [{"job_id": job["job_id"], "prompt": job.get("prompt", ""), "seed": int(job.get("seed", 0)),
                "name": name, "place": place}
               for place, (job, name) in enumerate(zip(submitted, names)) if place > 0]
    st.variation_queue = json.dumps(waiting) if waiting else ""


def queued_job_ids(scene) -> list[str]:
    return [item["job_id"] for item in json.loads(state(scene).variation_queue or "[]")]


def next_variation(scene) -> None:
    """Make the next queued variation, if any, the current job (polling then follows it)."""
    st = state(scene)
    queue = json.loads(st.variation_queue or "[]")
    if not queue:
        return
    item, st.variation_queue = queue[0], json.dumps(queue[1:]) if queue[1:] else ""
    st.job_id, st.job_state, st.job_stage, st.job_prompt = item["job_id"], "queued", "", item["prompt"]
    st.job_seed = item["seed"]
    st.job_name, st.job_place = item["name"], int(item["place"])
    st.job_iteration = st.job_total = 0
    st.job_eta_s, st.job_updated_at, st.result_object = -1.0, 0.0, None


def set_job(scene, job: dict) -> None:
    st = state(scene)
    st.job_id = job["job_id"]
    st.job_kind = job.get("kind", "")
    st.job_state = job.get("state", "")
    st.job_stage = job.get("stage") or ""
    st.job_iteration = int(job.get("iteration") or 0)
    st.job_total = int(job.get("total") or 0)
    eta = job.get("eta_s")
    st.job_eta_s = -1.0 if eta is None else float(eta)
    if job.get("state") == "failed":
        reason = job.get("message") or "the engine gave no reason"
        st.last_error = reason if reason.lower().startswith("the job failed") else f"The job failed: {reason}"
        if MISSING_MODEL in reason:
            st.last_error += DOWNLOAD_HINT
    elif job.get("state") == "cancelled":
        st.status = "Cancelled; the last checkpoint is kept on the engine"


def remember_prior(scene, prior_key: str, info: dict) -> None:
    st = state(scene)
    st.prior_id = info["prior_id"]
    st.prior_key = prior_key
    st.prior_info_json = json.dumps(info)


def load_png(name: str, data: bytes, folder: Path) -> bpy.types.Image:
    """Write `data` to `folder/name.png` and (re)load it as a Blender image of that name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bpy.path.clean_name(name)}.png"
    path.write_bytes(data)
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(str(path))
        image.name = name
    else:
        image.filepath = str(path)
        image.reload()
    image.preview_ensure()
    if image.preview is not None:
        image.preview.reload()
    return image


def start_refresh(scene, settings: EngineSettings) -> None:
    from .preferences import user_dir

    st = state(scene)
    work = functools.partial(work_refresh, settings, st.job_id, st.job_updated_at, user_dir() / "results")
    start(scene, "refreshing the job", work, apply_refresh)


def apply_refresh(scene, result: dict) -> None:
    from .preferences import user_dir

    st = state(scene)
    job = result["job"]
    if job["job_id"] != st.job_id:
        return  # a refresh of a job that has since been replaced
    set_job(scene, job)
    st.last_error = "" if job["state"] != "failed" else st.last_error
    if result["preview"] is not None:
        st.preview_image = load_png("HeadSculpt preview", result["preview"], user_dir() / "previews")
        st.job_updated_at = float(job.get("updated_at", 0.0))
    if result["glb"] is not None and st.result_object is None:
        st.result_object = import_result(scene, Path(result["glb"]))
        st.status = f"Imported {st.result_object.name}"
    if job["state"] == "failed" or st.result_object is not None:
        next_variation(scene)  # a failed variation keeps its reason in the panel; the others go on


def import_result(scene, glb: Path):
    st = state(scene)
    if st.job_kind == "edit":
        source = st.job_source
        if source is None:
            raise RuntimeError("the avatar that was edited is gone from the scene, so the edit cannot be placed")
        width = max(source.dimensions.x, 0.1)
        placement = source.matrix_world
        offset = (width * 1.25, 0.0, 0.0)  # beside the original, along world X
        name = f"{source.name} edited"
        prior_name = source.get(PROP_PRIOR, "")
    else:
        prior = st.job_prior
        if prior is None:
            raise RuntimeError("the prior object is gone from the scene, so the avatar cannot be placed on it")
        # Variations stand in a row along world X, one prior width apart; the first sits on the prior.
        offset = (st.job_place * max(prior.dimensions.x, 0.1), 0.0, 0.0)
        placement, name, prior_name = prior.matrix_world, st.job_name or "HeadSculpt avatar", prior.name
    properties = {PROP_JOB: st.job_id, PROP_KIND: st.job_kind, PROP_PROMPT: st.job_prompt, PROP_SEED: st.job_seed,
                  PROP_PARENT: st.job_parent_id, PROP_INSTRUCTION: st.job_instruction, PROP_PRIOR: prior_name}
    return importer.import_avatar(bpy.context, glb, placement.copy(), name, properties, offset)


# -- the timer ------------------------------------------------------------------------------------------

def _timer(scene_name: str) -> float | None:
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        _timers.pop(scene_name, None)
        return None
    still = poll_step(scene)
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
    if not still:
        _timers.pop(scene_name, None)
        return None
    from .preferences import preferences
    return preferences().poll_interval


def ensure_polling(scene) -> None:
    """Register the refresh timer for `scene` (it fires only in interactive Blender)."""
    if scene.name in _timers and bpy.app.timers.is_registered(_timers[scene.name]):
        return
    timer = functools.partial(_timer, scene.name)
    _timers[scene.name] = timer
    bpy.app.timers.register(timer, first_interval=0.2)


def resume_all() -> None:
    """After loading a file: resume polling for every scene with an unfinished job."""
    for scene in bpy.data.scenes:
        st = state(scene)
        if st.job_state == "submitting" and not busy(scene):
            st.job_state = ""  # saved while a submission was on its way: it never got a job id
            st.status = "The last submission was interrupted; press Generate again"
        if job_active(scene):
            ensure_polling(scene)


def shutdown() -> None:
    for timer in _timers.values():
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
    _timers.clear()
    _pending.clear()
    _failed_at.clear()
    global _executor
    if _executor is not None:
        _executor.shutdown(wait=False, cancel_futures=True)
        _executor = None
