"""The CLIP metrics of HeadSculpt's Table 1, on embeddings (no model here: plain numpy, easy to check).

All embeddings are L2-normalised rows. Scores are on the papers' scale: 100 x cosine.
"""
from __future__ import annotations

import numpy as np


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True).clip(min=1e-12)


def clip_score(view_embeddings: np.ndarray, prompt_embedding: np.ndarray) -> float:
    """CLIP-Score: 100 x the cosine of each view's image embedding with the prompt's, averaged over views."""
    views, prompt = normalise(view_embeddings), normalise(prompt_embedding)
    return float(100.0 * (views @ prompt).mean())


def avatar_embedding(view_embeddings: np.ndarray) -> np.ndarray:
    """One embedding for an avatar: the normalised mean of its views' embeddings."""
    return normalise(normalise(view_embeddings).mean(axis=0))


def prompt_ranks(avatar_embeddings: np.ndarray, prompt_embeddings: np.ndarray, own: list[int]) -> list[int]:
    """For each avatar (rows of `avatar_embeddings`), the rank (1 = best) of its own prompt `own[i]` among
    all prompts by cosine similarity; ties count against it."""
    similarity = normalise(avatar_embeddings) @ normalise(prompt_embeddings).T  # (avatars, prompts)
    return [int((row > row[mine]).sum() + (row == row[mine]).sum()) for row, mine in zip(similarity, own)]


def r_precision(ranks: list[int]) -> float:
    """CLIP R-Precision (R = 1): the share of avatars whose own prompt ranks first, in percent."""
    return float(100.0 * np.mean([rank == 1 for rank in ranks])) if ranks else float("nan")


def directional_similarity(parent_views: np.ndarray, edit_views: np.ndarray, parent_prompt: np.ndarray,
                           edited_prompt: np.ndarray) -> float:
    """CLIP Directional Similarity: 100 x the cosine between the image change (edit render minus parent
    render, view by view from the same camera) and the text change (edited prompt minus parent prompt),
    averaged over views."""
    image_change = normalise(edit_views) - normalise(parent_views)
    text_change = normalise(edited_prompt) - normalise(parent_prompt)
    return float(100.0 * (normalise(image_change) @ normalise(text_change)).mean())


def identity_score(parent_views: np.ndarray, edit_views: np.ndarray) -> float:
    """How much of the parent an edit keeps: 100 x the cosine of parent and edit image embeddings from the
    same camera, averaged over views."""
    return float(100.0 * (normalise(parent_views) * normalise(edit_views)).sum(axis=-1).mean())
