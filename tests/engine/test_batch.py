"""`headsculpt batch` (issue 18, item 1): attribute draws, refusals of bad attribute files, and a batch
of three tiny runs that is interrupted during its second run and resumed."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from headsculpt_engine.batch.attributes import draw
from headsculpt_engine.cli import main

TEMPLATE = "a DSLR portrait of a {age} {person} with {hair}"
ATTRIBUTES = {"age": ["young", "old", "middle-aged"], "person": ["man", "woman"],
              "hair": ["curly hair", "a shaved head"]}


def write_json(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_draws_are_distinct_deterministic_and_grow_by_appending():
    five = draw(TEMPLATE, ATTRIBUTES, 5, seed=3)
    assert [v.prompt for v in five] == [v.prompt for v in draw(TEMPLATE, ATTRIBUTES, 5, seed=3)]
    assert len({v.prompt for v in five}) == 5
    # Raising the count keeps the variations drawn before it.
    assert [v.prompt for v in draw(TEMPLATE, ATTRIBUTES, 8, seed=3)[:5]] == [v.prompt for v in five]
    assert [v.prompt for v in draw(TEMPLATE, ATTRIBUTES, 5, seed=4)] != [v.prompt for v in five]
    every = draw(TEMPLATE, ATTRIBUTES, 12, seed=0)  # all 3 * 2 * 2 combinations
    assert len({tuple(v.attributes.values()) for v in every}) == 12
    for variation in every:
        a = variation.attributes
        assert variation.prompt == f"a DSLR portrait of a {a['age']} {a['person']} with {a['hair']}"


BAD_FILES = {
    "unknown placeholder": ({"age": ["young"], "person": ["man"]}, "{hair}, which the attribute file"),
    "unused attribute": (dict(ATTRIBUTES, mood=["happy"]), "defines mood, which the prompt does not use"),
    "not JSON": ("{age: young", "is not valid JSON"),
    "not an object": (["young", "old"], "must be a JSON object"),
    "empty list": (dict(ATTRIBUTES, hair=[]), "\"hair\" must map to a non-empty list"),
    "a value twice": (dict(ATTRIBUTES, age=["old", "old"]), "lists a value twice"),
    "a number": (dict(ATTRIBUTES, age=[30, 40]), "must be a non-empty text"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_attribute_files_get_a_sentence_and_write_nothing(case, tmp_path, capsys):
    content, expected = BAD_FILES[case]
    attributes = write_json(tmp_path / "attributes.json", content)
    out = tmp_path / "batch"
    code = main(["batch", "--prompt", TEMPLATE, "--attributes", str(attributes), "--count", "2",
                 "--preset", "tiny", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("headsculpt: error: ") and expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--count", "13"], "allows only 12 distinct combinations"),
    (["--prompt", "a DSLR portrait of a man"], "The prompt has no placeholders"),
    (["--prompt", "a portrait of a {age person"], "unmatched { or }"),
    (["--attributes", "missing.json"], "cannot be read"),
])
def test_bad_counts_and_prompts_get_a_sentence_and_write_nothing(args, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "attributes.json", ATTRIBUTES)
    code = main(["batch", "--prompt", TEMPLATE, "--attributes", "attributes.json", "--preset", "tiny",
                 "--out", "batch", *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert not (tmp_path / "batch").exists()


# Shorter runs than the tiny preset's (a shared 2-core machine): a checkpoint at every coarse iteration.
FEW_ITERATIONS = [item for setting in ("coarse.iterations=3", "coarse.checkpoint_every=1", "coarse.mesh_resolution=64",
                                       "fine.iterations=2", "export.turntable_frames=1", "export.texture_size=64")
                  for item in ("--set", setting)]


def interrupt_during_run(manifest: Path, index: int, checkpoint: str, stop: threading.Event) -> None:
    """Press Ctrl-C (SIGINT to this process) once run `index` has written a checkpoint."""
    while not stop.is_set():
        try:
            runs = json.loads(manifest.read_text())["runs"]
        except (OSError, ValueError, KeyError):
            runs = []
        if len(runs) >= index and runs[index - 1]["state"] == "running" \
                and (manifest.parent / runs[index - 1]["run_folder"] / checkpoint).is_file():
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_batch_of_three_finishes_and_resumes_after_an_interrupt(tmp_path, capsys):
    attributes = write_json(tmp_path / "attributes.json", ATTRIBUTES)
    out = tmp_path / "batch"
    command = ["batch", "--prompt", TEMPLATE, "--attributes", str(attributes), "--count", "3", "--seed", "5",
               "--preset", "tiny", "--models", "tiny", "--out", str(out), *FEW_ITERATIONS]
    stop = threading.Event()
    watcher = threading.Thread(target=interrupt_during_run,
                               args=(out / "batch.json", 2, "coarse/checkpoint.pt", stop), daemon=True)
    watcher.start()
    try:
        assert main(command) == 2  # stopped on request
    finally:
        stop.set()
    first = capsys.readouterr()
    assert "[1/3] Generating" in first.out and "[2/3] Generating" in first.out and "[3/3]" not in first.out
    manifest = json.loads((out / "batch.json").read_text())
    assert [run["state"] for run in manifest["runs"]] == ["done", "interrupted", "pending"]
    first_glb = out / manifest["runs"][0]["run_folder"] / "result" / "avatar.glb"
    first_stamp = first_glb.stat().st_mtime_ns

    assert main(command) == 0
    second = capsys.readouterr().out
    assert "[1/3] already done" in second and "[2/3] Resuming" in second and "[3/3] Generating" in second
    resumed = [line for line in second.splitlines() if "resumes at iteration" in line]
    assert resumed and int(resumed[0].split("iteration ")[1].split("/")[0]) > 0, second
    assert first_glb.stat().st_mtime_ns == first_stamp  # the finished run was not run again

    manifest = json.loads((out / "batch.json").read_text())
    runs = manifest["runs"]
    assert manifest["template"] == TEMPLATE and manifest["attributes"] == ATTRIBUTES and manifest["seed"] == 5
    assert [run["state"] for run in runs] == ["done"] * 3
    assert [run["prompt"] for run in runs] == [v.prompt for v in draw(TEMPLATE, ATTRIBUTES, 3, seed=5)]
    assert len({run["prompt"] for run in runs}) == 3 and len({run["run_folder"] for run in runs}) == 3
    for run in runs:
        record = json.loads((out / run["run_folder"] / "run.json").read_text())
        assert record["status"] == "done" and record["prompt"] == run["prompt"] and record["seed"] == 5
        assert (out / run["run_folder"] / "result" / "avatar.glb").is_file()
        assert all(value in run["prompt"] for value in run["attributes"].values())


def test_a_folder_holding_another_batch_is_refused(tmp_path, capsys):
    from headsculpt_engine.batch.manifest import open_manifest

    out = tmp_path / "batch"
    open_manifest(out, TEMPLATE, ATTRIBUTES, 1, None, draw(TEMPLATE, ATTRIBUTES, 2, seed=1)).save()
    before = (out / "batch.json").read_text()
    attributes = write_json(tmp_path / "attributes.json", ATTRIBUTES)
    code = main(["batch", "--prompt", TEMPLATE, "--attributes", str(attributes), "--count", "2", "--seed", "2",
                 "--preset", "tiny", "--out", str(out)])
    assert code == 2 and "holds a batch of another prompt, attribute file, seed or server" in capsys.readouterr().err
    assert (out / "batch.json").read_text() == before and sorted(p.name for p in out.iterdir()) == ["batch.json"]
    (out / "batch.json").write_text("{not json")
    assert main(["batch", "--prompt", TEMPLATE, "--attributes", str(attributes), "--count", "2", "--seed", "1",
                 "--preset", "tiny", "--out", str(out)]) == 2
    assert "is not a batch manifest" in capsys.readouterr().err


def test_eval_reads_a_batch_manifest_as_its_run_folders(tmp_path):
    """`headsculpt eval OUT/batch.json`: the batch's manifest is the one `eval` reads; a batch not yet
    done is refused with a sentence."""
    from headsculpt_engine.batch.manifest import open_manifest
    from headsculpt_engine.errors import InputError
    from headsculpt_engine.evaluation.runs import expand_manifests

    out = tmp_path / "batch"
    manifest = open_manifest(out, TEMPLATE, ATTRIBUTES, 1, None, draw(TEMPLATE, ATTRIBUTES, 2, seed=1))
    manifest.save()
    with pytest.raises(InputError, match="finish the batch"):
        expand_manifests([out / "batch.json"])
    for entry in manifest.entries:
        entry.state = "done"
    manifest.save()
    assert expand_manifests([out / "batch.json"]) == [out / entry.run_folder for entry in manifest.entries]
