"""Running a batch as jobs on an engine server (`--server URL`), through its HTTP API v1: upload the
prior once, submit every variation, poll, and download each result into the batch folder.

The manifest keeps each variation's job id as soon as the server gives it, so a rerun (after Ctrl-C,
or a lost connection) collects the same jobs instead of submitting them again.
"""
from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import API_VERSION
from ..errors import HeadSculptError, InputError
from .local import tag
from .manifest import Entry, Manifest

FINAL = ("done", "failed", "cancelled")
RESULT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class EngineUnavailable(HeadSculptError):
    """The server cannot be reached (status 0), or refused a request (its HTTP status)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class EngineApi:
    """The few API v1 calls a batch needs; every failure is one sentence."""

    def __init__(self, url: str, token: str, timeout_s: float = 300.0):
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout_s)

    def call(self, method: str, path: str, raw: bool = False, **kwargs: Any) -> Any:
        """The answer's JSON, or its bytes with `raw`."""
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise EngineUnavailable(f"The engine server at {self.url} cannot be reached ({error}); start it with "
                                    "`headsculpt serve`, or check --server.") from None
        if response.status_code == 401:
            raise EngineUnavailable(f"The engine server at {self.url} refused the token; pass the token of its "
                                    "data folder (DATA/token) with --token-file or HEADSCULPT_TOKEN.", 401)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", "")
            except ValueError:
                detail = ""
            raise EngineUnavailable(f"The engine server refused the request ({response.status_code}): "
                                    f"{detail or response.reason_phrase}", response.status_code)
        if raw:
            return response.content
        try:
            return response.json()
        except ValueError:
            raise EngineUnavailable(f"The server at {self.url} did not answer like a HeadSculpt engine.") from None

    def check(self) -> None:
        health = self.call("GET", "/v1/health")
        if not isinstance(health, dict) or health.get("api_version") != API_VERSION:
            raise EngineUnavailable(f"The server at {self.url} is not a HeadSculpt engine speaking API "
                                    f"version {API_VERSION}.")

    def upload_prior(self, name: str, vertices: np.ndarray, faces: np.ndarray,
                     landmark_indices: list[int] | None, keypoints: dict[str, list[float]] | None = None,
                     detect_landmarks: bool = True) -> dict:
        vertices = np.ascontiguousarray(vertices, dtype="<f4")
        faces = np.ascontiguousarray(faces, dtype="<i4")
        body: dict[str, Any] = {
            "name": name, "vertex_count": len(vertices), "face_count": len(faces),
            "vertices_b64": base64.b64encode(vertices.tobytes()).decode("ascii"),
            "faces_b64": base64.b64encode(faces.tobytes()).decode("ascii")}
        if landmark_indices is not None:
            body["landmark_indices"] = landmark_indices
        if keypoints is not None:
            body["keypoints"] = keypoints
        if not detect_landmarks:
            body["detect_landmarks"] = False
        info = self.call("POST", "/v1/priors", json=body)
        if detect_landmarks and not info.get("is_flame") and info.get("landmarks", {}).get("status") != "found":
            raise InputError(f"The engine server found no face on the prior {name}: "
                             f"{info.get('landmarks', {}).get('message', '')}")
        return info

    def upload_image(self, path: Path) -> str:
        """The image prompt's id on the server (which stores it as PNG, named by its sha256)."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise InputError(f"The image prompt {path} cannot be read ({error.strerror or error}).") from None
        return self.call("POST", "/v1/images", json={"data_b64": base64.b64encode(data).decode("ascii")})["image_id"]

    def upload_lora(self, path: Path) -> str:
        """A LoRA file's id on the server (upload:<sha256>); the file is streamed as the request body."""
        try:
            with path.open("rb") as handle:
                answer = self.call("POST", "/v1/loras", content=handle,
                                   headers={"Content-Type": "application/octet-stream"})
        except OSError as error:
            raise InputError(f"The LoRA {path} cannot be read ({error.strerror or error}).") from None
        return answer["lora_id"]


# A batch's style LoRA: a Hub id (str, read from the server's cache) or a file here (Path, uploaded), and its scale.
LoraOption = tuple[str | Path, float]


def run_remote(manifest: Manifest, api: EngineApi, prior_upload: dict, job_fields: dict,
               image: Path | None = None, loras: Sequence[LoraOption] = (), poll_s: float = 1.0) -> list[Entry]:
    """Submit the variations not done yet (re-attaching to jobs the manifest names), wait for all of
    them, download each result; returns the entries that did not finish. The prior, the image prompt
    (`image`) and the LoRA files among `loras` are uploaded once, when the first job is submitted."""
    api.check()
    manifest.save()
    todo = [entry for entry in manifest.entries if not _collected(manifest, entry)]
    for entry in manifest.entries:
        if entry not in todo:
            print(f"{tag(manifest, entry)} already done: {entry.prompt}", flush=True)
    uploaded: dict[str, str] = {}
    for entry in todo:
        job = _existing_job(api, entry)
        if job is None:
            if not uploaded:
                uploaded = _upload(api, prior_upload, image, loras)
            job = api.call("POST", "/v1/jobs", json=dict(job_fields, **uploaded, kind="generate",
                                                         prompt=entry.prompt, seed=entry.seed))
            entry.job_id = job["job_id"]
            print(f"{tag(manifest, entry)} submitted as job {entry.job_id}: {entry.prompt}", flush=True)
        else:
            print(f"{tag(manifest, entry)} collecting job {entry.job_id} ({job['state']}): {entry.prompt}", flush=True)
        manifest.set_state(entry, "running")
    _wait(manifest, api, todo, poll_s)
    return [entry for entry in manifest.entries if entry.state != "done"]


def _upload(api: EngineApi, prior_upload: dict, image: Path | None, loras: Sequence[LoraOption]) -> dict[str, Any]:
    """The uploads every job of the batch names: the prior, the image prompt when there is one, and
    the LoRA files (Hub ids go as they are)."""
    print(f"Uploading the prior to {api.url}...", flush=True)
    uploaded: dict[str, Any] = {"prior_id": api.upload_prior(**prior_upload)["prior_id"]}
    if image is not None:
        print(f"Uploading the image prompt {image}...", flush=True)
        uploaded["image_id"] = api.upload_image(image)
    uploaded["loras"] = []
    for source, scale in loras:
        if isinstance(source, Path):
            print(f"Uploading the LoRA {source}...", flush=True)
            source = api.upload_lora(source)
        uploaded["loras"].append({"id": source, "scale": float(scale)})
    return uploaded


def _collected(manifest: Manifest, entry: Entry) -> bool:
    return entry.state == "done" and (manifest.folder / entry.run_folder / "result" / "avatar.glb").is_file()


def _existing_job(api: EngineApi, entry: Entry) -> dict | None:
    """The job a previous run submitted for `entry`, unless it is gone, failed or was cancelled (then
    a new job is submitted: a rerun is the retry)."""
    if not entry.job_id:
        return None
    try:
        job = api.call("GET", f"/v1/jobs/{entry.job_id}")
    except EngineUnavailable as error:
        if error.status == 404:  # deleted on the server
            return None
        raise
    return None if job["state"] in ("failed", "cancelled") else job


def _wait(manifest: Manifest, api: EngineApi, entries: list[Entry], poll_s: float) -> None:
    seen: dict[int, tuple] = {}
    active = list(entries)
    try:
        while active:
            for entry in list(active):
                job = api.call("GET", f"/v1/jobs/{entry.job_id}")
                step = (job["state"], job["stage"], job["iteration"])
                if seen.get(entry.index) != step:
                    seen[entry.index] = step
                    where = f" {job['stage']} {job['iteration']}/{job['total']}" if job["stage"] else ""
                    print(f"{tag(manifest, entry)} job {entry.job_id}: {job['state']}{where}", flush=True)
                if job["state"] not in FINAL:
                    continue
                active.remove(entry)
                if job["state"] == "done":
                    _download(api, entry, job, manifest.folder / entry.run_folder / "result")
                    manifest.set_state(entry, "done")
                else:
                    manifest.set_state(entry, "failed", job.get("message") or f"The job was {job['state']}.")
            if active:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        print("Stopped waiting; the jobs go on on the server. Run the same command to collect them.", flush=True)
        raise


def _download(api: EngineApi, entry: Entry, job: dict, result_dir: Path) -> None:
    """The job's result files, by the fixed names the server lists (never a path it could choose)."""
    result_dir.mkdir(parents=True, exist_ok=True)
    for name in job["result_files"]:
        if not RESULT_NAME.fullmatch(name):
            raise EngineUnavailable(f"The engine server listed a result named {name!r}, which is not a file name.")
        partial = result_dir / f".{name}.part"
        partial.write_bytes(api.call("GET", f"/v1/jobs/{entry.job_id}/result/{name}", raw=True))
        partial.replace(result_dir / name)
