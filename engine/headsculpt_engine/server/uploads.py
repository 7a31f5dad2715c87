"""A prior upload is checked and prepared in a child process, never in the server's own.

Parsing 48 MB of JSON, decoding two million faces and building the prior (signed distance, landmark
detection) takes minutes and gigabytes and holds the interpreter lock for long stretches: in the
server process it starved every other request. In a child the API keeps answering, the work is
bounded in time (killed after `timeout_s`) and in memory (a data-segment limit, RLIMIT_DATA, on Linux), and
a crash or an out-of-memory kill costs that upload only.

The parent writes the raw request body to `STAGING/upload.json`; the child writes
`STAGING/outcome.json` (an HTTP status and either a sentence or what the prior is) and, when it
built a prior, `STAGING/prior/`. Everything lives in the staging folder, inside the data folder.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from ..errors import HeadSculptError
from .priors import BadPrior, BuildPrior, PriorTooLarge, decode_mesh, prior_id_of
from .schemas import PriorUpload, validation_sentence

log = logging.getLogger("headsculpt.server")

UPLOAD_FILE, OUTCOME_FILE = "upload.json", "outcome.json"
# A limit-sized upload (2 million faces) peaks near 2 GB in the child (docs/server.md): three times that.
DEFAULT_MEMORY_BYTES = 6 * 1024**3

Outcome = dict[str, Any]


def _limit_memory(limit_bytes: int | None) -> None:
    """Cap the child's data segment (heap and private mappings: numpy and torch buffers). Linux
    enforces RLIMIT_DATA for mmap too; elsewhere the cap is best effort or absent."""
    try:
        import resource
    except ImportError:  # Windows: no resource limits
        return
    if limit_bytes:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        cap = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))


def _prepare(staging: Path, priors_root: Path, build: BuildPrior) -> Outcome:
    try:
        # pydantic's own JSON parser: invalid UTF-8, deep nesting and huge numbers are its errors too.
        upload = PriorUpload.model_validate_json((staging / UPLOAD_FILE).read_bytes())
    except ValidationError as error:
        return {"status": 422, "detail": validation_sentence(error.errors())}
    try:
        vertices, faces = decode_mesh(upload)
    except PriorTooLarge as error:
        return {"status": 413, "detail": str(error)}
    except BadPrior as error:
        return {"status": 422, "detail": str(error)}
    prior_id = prior_id_of(vertices, faces, upload.landmark_indices, upload.keypoints, upload.detect_landmarks)
    described = {"prior_id": prior_id, "name": upload.name, "vertex_count": len(vertices),
                 "face_count": len(faces)}
    if (priors_root / prior_id / "info.json").is_file():
        return {"status": 200, **described}
    landmark_file = keypoint_file = None
    if upload.keypoints is not None:
        # The engine's keypoint-file format (as `--keypoints`), checked by the builder.
        keypoint_file = staging / "keypoints.json"
        keypoint_file.write_text(json.dumps({"keypoints": upload.keypoints}))
    if upload.landmark_indices is not None:
        # The engine's landmark-file format (as `--landmark-file`): 478 vertex indices in .npy.
        landmark_file = staging / "landmark_indices.npy"
        np.save(landmark_file, np.asarray(upload.landmark_indices, dtype=np.int64))
    detect = upload.detect_landmarks
    del upload
    try:
        built = build(vertices, faces, landmark_file, staging / "prior", keypoint_file=keypoint_file,
                      detect_landmarks=detect)
    except HeadSculptError as error:
        return {"status": 422, "detail": str(error)}
    return {"status": 201, **described, "is_flame": built.is_flame, "landmark_count": built.landmark_count,
            "detect_landmarks": detect}


def prepare_upload(staging: Path, priors_root: Path, build: BuildPrior, memory_bytes: int | None) -> None:
    """The child process: check and build, then write the outcome (the parent reads only that)."""
    _limit_memory(memory_bytes)
    start = time.monotonic()
    try:
        outcome = _prepare(staging, priors_root, build)
    except MemoryError:
        outcome = {"status": 413, "detail": _OUT_OF_MEMORY}
    except Exception as error:  # noqa: BLE001 - a mesh the prior code cannot digest is refused
        log.exception("building an uploaded prior failed")
        outcome = {"status": 422, "detail": f"The mesh could not be turned into a head prior "
                                            f"({type(error).__name__}: {error}); upload a single "
                                            "connected head surface."}
    outcome.update(seconds=round(time.monotonic() - start, 1), peak_memory_mb=_peak_memory_mb())
    (staging / OUTCOME_FILE).write_text(json.dumps(outcome))


def _peak_memory_mb() -> int | None:
    """This process's peak resident memory (what docs/server.md states for a limit-sized upload)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux


_OUT_OF_MEMORY = ("Preparing this mesh needed more memory than the engine allows an upload; decimate "
                  "it (Blender's Decimate modifier) and upload it again.")


def _context() -> multiprocessing.context.BaseContext:
    # forkserver: children fork from a clean single-threaded process (fast, and safe beside the
    # server's threads); spawn where there is no fork (Windows).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class UploadRunner:
    """Runs `prepare_upload` in a child per upload; `cancel` kills a running one (server shutdown)."""

    def __init__(self, build: BuildPrior, timeout_s: float, memory_bytes: int | None = DEFAULT_MEMORY_BYTES):
        self.build, self.timeout_s, self.memory_bytes = build, timeout_s, memory_bytes
        self._running: multiprocessing.process.BaseProcess | None = None

    def run(self, staging: Path, priors_root: Path) -> Outcome:
        process = _context().Process(target=prepare_upload, name="headsculpt-upload", daemon=True,
                                     args=(staging, priors_root, self.build, self.memory_bytes))
        self._running = process
        try:
            process.start()
            process.join(self.timeout_s)
            if process.is_alive():
                process.kill()
                process.join()
                return {"status": 422, "detail": (
                    f"Checking and preparing this mesh took longer than {self.timeout_s:g} s, the limit "
                    "this engine was started with (--upload-timeout); decimate the mesh or raise the limit.")}
        finally:
            self._running = None
        try:
            outcome = json.loads((staging / OUTCOME_FILE).read_text())
            log.info("upload checked: status %s in %s s, peak memory %s MB", outcome["status"],
                     outcome.get("seconds"), outcome.get("peak_memory_mb"))
            return outcome
        except (OSError, ValueError, KeyError):
            # No outcome: the child was killed (out of memory, a signal) or crashed in native code.
            log.warning("the upload process ended with exit code %s and no outcome", process.exitcode)
            return {"status": 413, "detail": _OUT_OF_MEMORY} if process.exitcode in (-9, 137) else {
                "status": 422, "detail": "The engine stopped while preparing this mesh "
                                         f"(exit code {process.exitcode}); the server log may say why."}

    def cancel(self) -> None:
        process = self._running
        if process is not None and process.is_alive():
            process.kill()
