"""The measurement behind docs/benchmarks.md "Scale-out on Ray": 4 tiny jobs through `serve --ray` on a
local cluster of 1, then 2 job slots; wall time from submission to the last one done.

Run from the repository root: `python -m tests.server.ray_throughput` (minutes; not part of the suite).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .engine_server import EngineServer, wait_for
from .ray_cluster import RayCluster
from .test_jobs_e2e import JOB_TIMEOUT_S, submit, upload

JOBS = 4


def seconds_for_jobs(slots: int, data_dir: Path) -> float:
    cluster = RayCluster(gpus=slots).start()
    try:
        with EngineServer(data_dir, extra_args=("--ray", cluster.address)) as server, server.client() as client:
            prior_id = upload(client)
            start = time.monotonic()
            jobs = [submit(client, prior_id, f"a portrait of person {i}")["job_id"] for i in range(JOBS)]
            for job_id in jobs:
                assert wait_for(client, job_id, ("done", "failed"), 4 * JOB_TIMEOUT_S)["state"] == "done"
            return time.monotonic() - start
    finally:
        cluster.stop()


def main() -> None:
    engine = Path(__file__).resolve().parents[2] / "engine"
    os.environ["PYTHONPATH"] = str(engine)  # the servers and Ray workers run this checkout's engine
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("HEADSCULPT_CACHE_DIR", str(Path(folder) / "cache"))
        times = {slots: seconds_for_jobs(slots, Path(folder) / f"data{slots}") for slots in (1, 2)}
    for slots, seconds in times.items():
        print(f"{JOBS} tiny jobs on {slots} slot(s): {seconds:.0f} s ({JOBS * 3600 / seconds:.0f} jobs/hour)")
    print(f"speed-up: {times[1] / times[2]:.2f}x; load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
