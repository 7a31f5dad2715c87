"""Score finished runs: render their views, embed them with CLIP, and compute the metrics."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import metrics
from .clip import Clip
from .render import render_views
from .runs import FinishedRun, read_run


def evaluate_runs(runs: list[FinishedRun], clip: Clip, views: int, distractors: list[str],
                  progress: Callable[[str], None] = lambda message: None) -> dict:
    """Every metric for `runs`: per run, and the summary. Edits are scored against their parent run (read
    from its folder when it was not given)."""
    from ..pipeline import edit_prompt

    embeddings: dict[Path, np.ndarray] = {}

    def view_embeddings(run: FinishedRun) -> np.ndarray:
        if run.folder not in embeddings:
            progress(f"rendering and embedding {views} views of {run.name}")
            embeddings[run.folder] = clip.embed_images(render_views(run.result, views))
        return embeddings[run.folder]

    pool = list(dict.fromkeys([run.prompt for run in runs] + list(distractors)))
    pool_embeddings = clip.embed_texts(pool)
    own = [pool.index(run.prompt) for run in runs]
    avatars = np.stack([metrics.avatar_embedding(view_embeddings(run)) for run in runs])
    ranks = metrics.prompt_ranks(avatars, pool_embeddings, own)

    rows = []
    for run, rank, prompt_index in zip(runs, ranks, own):
        row = {"run": str(run.folder), "name": run.name, "kind": run.kind, "prompt": run.prompt,
               "clip_score": metrics.clip_score(view_embeddings(run), pool_embeddings[prompt_index]),
               "prompt_rank": rank, "parent": None, "instruction": None, "edited_prompt": None,
               "directional_similarity": None, "identity": None}
        if run.kind == "edit" and run.parent is not None:
            parent = read_run(run.parent)
            edited = edit_prompt(run.prompt, run.instruction)
            texts = clip.embed_texts([parent.prompt, edited])
            parent_views, edit_views = view_embeddings(parent), view_embeddings(run)
            row.update(parent=str(parent.folder), instruction=run.instruction, edited_prompt=edited,
                       directional_similarity=metrics.directional_similarity(parent_views, edit_views, texts[0],
                                                                             texts[1]),
                       identity=metrics.identity_score(parent_views, edit_views))
        rows.append(row)

    def mean(key: str) -> float | None:
        values = [row[key] for row in rows if row[key] is not None]
        return float(np.mean(values)) if values else None

    summary = {"runs": len(rows), "edits": sum(row["kind"] == "edit" for row in rows),
               "prompts_ranked": len(pool), "clip_score": mean("clip_score"), "r_precision": metrics.r_precision(ranks),
               "directional_similarity": mean("directional_similarity"), "identity": mean("identity")}
    return {"clip": clip.name, "views": views, "summary": summary, "runs": rows}
