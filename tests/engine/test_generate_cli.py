"""The README's main command, end to end on the tiny preset: first the coarse stage alone, then the
same command without --stage, which resumes the finished coarse stage and runs fine and export."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a DSLR portrait of Saul Goodman"
# What the command itself prints: its sentences and the stages' progress bars (tqdm, redrawn with \r).
PROJECT_LINES = re.compile(r"^(Loading the head prior \(.*\)\.\.\.|Generating \".*\" \(preset \w+, seed \d+\) into .*"
                           r"|Done: .*|\s*(coarse|fine|export): +\d+%\|.*)$")


def foreign_lines(completed: subprocess.CompletedProcess) -> list[str]:
    """Lines of stdout and stderr that are not the project's own (library logs, bars, warnings)."""
    lines = re.split(r"[\r\n]+", completed.stdout + "\n" + completed.stderr)
    return [line for line in lines if line.strip() and not PROJECT_LINES.match(line)]


def build_generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "build.py"), "generate", "--prompt", PROMPT,
                           "--models", "tiny", "--preset", "tiny", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_readme_main_command_runs_every_stage_and_writes_every_output(tmp_path):
    run = tmp_path / "run"
    coarse_only = build_generate("--stage", "coarse", "--out", str(run))
    assert coarse_only.returncode == 0, coarse_only.stderr[-3000:]
    assert "coarse:" in coarse_only.stderr and foreign_lines(coarse_only) == []  # a quiet console
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "partial" and record["seed"] == 0 and record["prompt"] == PROMPT
    assert record["config"]["preset"] == "tiny" and record["config"]["coarse"]["iterations"] == 6
    assert {"torch", "diffusers", "headsculpt_engine"} <= set(record["versions"])
    assert record["timings"]["coarse"] > 0
    assert (run / "coarse" / "checkpoint.pt").is_file() and (run / "coarse" / "coarse_mesh.obj").is_file()
    assert sorted(p.name for p in (run / "coarse" / "previews").glob("*.png"))
    assert not (run / "fine").exists() and not (run / "result").exists()
    coarse_checkpoint = (run / "coarse" / "checkpoint.pt").read_bytes()

    full = build_generate("--out", str(run))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "avatar.glb" in full.stdout and foreign_lines(full) == []
    # The finished coarse stage was resumed, not trained again.
    assert (run / "coarse" / "checkpoint.pt").read_bytes() == coarse_checkpoint
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and {"coarse", "fine", "export"} <= set(record["timings"])
    assert (run / "fine" / "checkpoint.pt").is_file() and list((run / "fine" / "previews").glob("*.png"))
    result = run / "result"
    for name in ("avatar.glb", "avatar.obj", "avatar.mtl", "avatar_albedo.png", "avatar.json", "turntable.gif"):
        assert (result / name).is_file(), name
    assert len(list(result.glob("turntable_*.png"))) == record["config"]["export"]["turntable_frames"]
    description = json.loads((result / "avatar.json").read_text())
    assert description["prompt"] == PROMPT and description["prior"]["hash"] == record["prior"]["hash"]

    import trimesh

    mesh = trimesh.load(result / "avatar.glb", force="mesh")
    assert len(mesh.faces) > 100 and mesh.visual.uv is not None
    assert mesh.visual.material.baseColorTexture.size == (256, 256)
