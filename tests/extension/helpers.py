"""Helpers for the extension tests that drive the add-on like the timer does."""
from __future__ import annotations

import time


def poll_until(scene, predicate, timeout: float = 60.0, interval: float = 0.05) -> None:
    """Call the add-on's polling step (what the timer does in interactive Blender) until `predicate()`."""
    from headsculpt_blender import jobs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs.poll_step(scene)
        if predicate():
            return
        time.sleep(interval)
    state = scene.headsculpt
    raise AssertionError(f"timed out: state={state.job_state!r} error={state.last_error!r} status={state.status!r}")


def use_engine(url: str, token: str = "secret") -> None:
    from headsculpt_blender import preferences

    prefs = preferences.preferences()
    prefs.engine_mode, prefs.remote_url, prefs.remote_token = "remote", url, token
