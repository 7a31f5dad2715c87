"""`headsculpt eval`: each metric against an independent computation with the tiny CLIP (transformers'
CLIPModel called directly), then the command on two tiny runs and a tiny edit: the JSON's fields and the
HTML page as headless Chromium shows it; and the sentences for an unfinished run and a missing model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headsculpt_engine.evaluation import metrics
from headsculpt_engine.evaluation.clip import load_clip, resolve_clip_source

TINY = ["--preset", "tiny", "--models", "tiny", "--device", "cpu", "--set", "coarse.iterations=2",
        "--set", "fine.iterations=2"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny")


def reference_features(folder: str, texts: list[str], images: list[np.ndarray]):
    """Text and image features straight from transformers, normalised by hand."""
    from transformers import CLIPModel, CLIPTokenizer

    from headsculpt_engine.evaluation.clip import _image_processor_class

    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    pixels = _image_processor_class().from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    text = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    image = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    return text.double().numpy(), image.double().numpy()


def test_metrics_match_an_independent_clip_computation(clip):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(6)]
    texts = ["a head of an old man", "a head of a young woman", "a portrait of the man with hair", "a head"]
    text_ref, image_ref = reference_features(resolve_clip_source("tiny"), texts, images)
    text_ours, image_ours = clip.embed_texts(texts), clip.embed_images(images)
    np.testing.assert_allclose(text_ours, text_ref, atol=1e-5)
    np.testing.assert_allclose(image_ours, image_ref, atol=1e-5)

    # CLIP-Score: 100 x mean cosine over the views.
    views = image_ref[:3]
    assert metrics.clip_score(image_ours[:3], text_ours[0]) == pytest.approx(100 * np.mean(views @ text_ref[0]),
                                                                           abs=1e-3)
    # R-Precision with distractors: two avatars (views 0-2 and 3-5), own prompts 0 and 1, pool of four.
    avatars = np.stack([image_ref[:3].mean(0), image_ref[3:].mean(0)])
    avatars /= np.linalg.norm(avatars, axis=1, keepdims=True)
    similarity = avatars @ text_ref.T
    expected_ranks = [int(1 + (similarity[i] > similarity[i, own]).sum()) for i, own in enumerate((0, 1))]
    ours = np.stack([metrics.avatar_embedding(image_ours[:3]), metrics.avatar_embedding(image_ours[3:])])
    ranks = metrics.prompt_ranks(ours, text_ours, [0, 1])
    assert ranks == expected_ranks
    assert metrics.r_precision(ranks) == 100.0 * np.mean([rank == 1 for rank in expected_ranks])
    assert metrics.prompt_ranks(np.eye(3), np.eye(3)[[2, 0, 1]], [1, 2, 0]) == [1, 1, 1]  # a known ranking
    # Own prompt orthogonal, one wrong prompt better and one tied: ties count against, so rank 3.
    assert metrics.prompt_ranks(np.eye(3), np.eye(3), [1, 2, 0]) == [3, 3, 3]

    # Directional similarity: by hand, and its sign flips when either pair is swapped.
    parent, edit = image_ref[:3], image_ref[3:]
    change = edit - parent
    change /= np.linalg.norm(change, axis=1, keepdims=True)
    text_change = text_ref[1] - text_ref[0]
    text_change /= np.linalg.norm(text_change)
    direction = metrics.directional_similarity(image_ours[:3], image_ours[3:], text_ours[0], text_ours[1])
    assert direction == pytest.approx(100 * np.mean(change @ text_change), abs=1e-3)
    assert metrics.directional_similarity(image_ours[3:], image_ours[:3], text_ours[0], text_ours[1]) == \
        pytest.approx(-direction, abs=1e-9)
    assert metrics.directional_similarity(image_ours[:3], image_ours[3:], text_ours[1], text_ours[0]) == \
        pytest.approx(-direction, abs=1e-9)
    # Identity: 100 x mean same-camera cosine; an edit identical to its parent scores 100.
    assert metrics.identity_score(parent, edit) == pytest.approx(100 * np.mean((parent * edit).sum(1)), abs=1e-4)
    assert metrics.identity_score(parent, parent) == pytest.approx(100.0)


def headsculpt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "headsculpt_engine", *args], capture_output=True, text=True,
                            timeout=900)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-runs")
    folders = {"man": root / "man", "woman": root / "woman"}
    headsculpt("generate", "--prompt", "a head of an old man", *TINY, "--out", str(folders["man"]))
    headsculpt("generate", "--prompt", "a head of a young woman", "--seed", "1", *TINY, "--out",
               str(folders["woman"]))
    folders["edit"] = root / "man-older"
    headsculpt("edit", "--from", str(folders["man"]), "--instruction", "make him older", "--models", "tiny",
               "--device", "cpu", "--set", "fine.iterations=2", "--out", str(folders["edit"]))
    return folders


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        if os.environ.get("CI"):  # CI must show the page, not skip it
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.slow
def test_eval_writes_every_score_and_a_page_chromium_shows(runs, tmp_path):
    prompts = tmp_path / "distractors.txt"
    prompts.write_text("# more prompts to rank against\na head of a knight\n\na head of a robot\n")
    out_json, out_html = tmp_path / "scores.json", tmp_path / "report" / "index.html"
    manifest = runs["man"].parent / "batch.json"  # the two generations as a batch's manifest lists them
    manifest.write_text(json.dumps({"runs": [{"run_folder": "man", "state": "done", "seed": 0},
                                             {"run_folder": str(runs["woman"]), "state": "done", "seed": 1}]}))
    result = headsculpt("eval", str(manifest), str(runs["edit"]), "--clip", "tiny",
                        "--views", "4", "--prompts", str(prompts), "--json", str(out_json), "--html", str(out_html))
    assert "R-Precision" in result.stdout and result.stderr == ""
    report = json.loads(out_json.read_text())
    assert report["clip"] == "tiny" and report["views"] == 4
    summary = report["summary"]
    assert summary["runs"] == 3 and summary["edits"] == 1 and summary["prompts_ranked"] == 4  # 2 own + 2 more
    assert 0.0 <= summary["r_precision"] <= 100.0 and summary["directional_similarity"] is not None
    rows = {Path(row["run"]).name: row for row in report["runs"]}
    for row in rows.values():
        assert set(row) == {"run", "name", "kind", "prompt", "clip_score", "prompt_rank", "parent", "instruction",
                            "edited_prompt", "directional_similarity", "identity"}
        assert -100.0 <= row["clip_score"] <= 100.0 and 1 <= row["prompt_rank"] <= 4
    edit = rows["man-older"]
    assert edit["kind"] == "edit" and Path(edit["parent"]).name == "man" and edit["instruction"] == "make him older"
    assert edit["edited_prompt"] == "a head of an old man, make him older"
    assert -100.0 <= edit["directional_similarity"] <= 100.0 and 0.0 < edit["identity"] <= 100.0
    assert rows["man"]["directional_similarity"] is None and rows["woman"]["identity"] is None

    page = out_html.read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched at view time
    assert page.count("data:image/gif;base64,") == 3 and 'id="scores"' in page
    shot = tmp_path / "page.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1000,900",
                    f"--screenshot={shot}", out_html.as_uri()], capture_output=True, timeout=120, check=True)
    from PIL import Image

    picture = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The turntables are grey heads on white: many mid-grey pixels that text and table borders do not make.
    grey = (np.abs(picture - picture.mean(-1, keepdims=True)).max(-1) < 12) & (picture.mean(-1) > 60) & \
        (picture.mean(-1) < 200)
    assert grey.sum() > 3 * 2000, f"the turntable images do not show ({grey.sum()} grey pixels)"


def test_manifests_name_their_runs_and_unfinished_entries_are_refused(tmp_path):
    from headsculpt_engine.errors import InputError
    from headsculpt_engine.evaluation.runs import expand_manifests

    manifest = tmp_path / "batch" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"runs": [{"run_folder": "a", "state": "done"},
                                             {"run_folder": "/abs/b", "state": "done"}]}))
    assert expand_manifests([tmp_path / "x", manifest]) == [tmp_path / "x", manifest.parent / "a", Path("/abs/b")]
    manifest.write_text(json.dumps({"runs": [{"run_folder": "a", "state": "running"}]}))
    with pytest.raises(InputError, match="lists a as running: finish the batch"):
        expand_manifests([manifest])
    manifest.write_text('{"runs": [{"folder": "a"}]}')
    with pytest.raises(InputError, match="not a readable manifest"):
        expand_manifests([manifest])


def test_eval_refuses_an_unfinished_run_and_a_missing_model(runs, tmp_path):
    unfinished = tmp_path / "unfinished"
    headsculpt("generate", "--prompt", "a head of a man", *TINY, "--stage", "coarse", "--out", str(unfinished))
    result = headsculpt("eval", str(unfinished), "--clip", "tiny", check=False)
    assert result.returncode == 2 and "is not finished" in result.stderr and "Traceback" not in result.stderr
    result = headsculpt("eval", str(runs["man"]), "--clip", "someone/no-such-clip", check=False)
    assert result.returncode == 2 and "someone/no-such-clip" in result.stderr and "Traceback" not in result.stderr
    assert "not in the local Hugging Face cache" in result.stderr
