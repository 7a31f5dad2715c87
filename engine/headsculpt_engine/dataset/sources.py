"""What a dataset's images come from: prompts sampled on one prior, or finished runs rendered.

Image i takes source i mod S (round robin), so every prompt or run gets views from cameras spread over
the whole range, and the dataset holds about N / S views of each.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras
    from ..prior import HeadPrior
    from .sampling import LandmarkSampler


@dataclass
class PromptSource:
    """One prompt on the shared prior; images sampled by the diffusion model (made on first use)."""

    prompt: str
    prior: "HeadPrior"
    sampler: Callable[[], "LandmarkSampler"] = field(repr=False)

    @property
    def identity(self) -> dict:
        return {"prompt": self.prompt}

    def image(self, cameras: "Cameras", maps: "torch.Tensor", seed: int) -> np.ndarray:
        return self.sampler().sample(self.prompt, cameras, maps, seed)[0]


@dataclass
class RunSource:
    """A finished run: its textured avatar rendered in its prior's normalised frame."""

    folder: Path
    prompt: str
    prior: "HeadPrior"

    @property
    def identity(self) -> dict:
        return {"run": str(self.folder), "prompt": self.prompt}

    @cached_property
    def mesh(self) -> tuple:
        """(points in the prior's normalised frame, faces, uv, texture), read once."""
        import torch

        from ..evaluation.render import load_textured_mesh

        vertices, faces, uv, texture = load_textured_mesh(self.folder / "result")
        # The avatar is exported in the prior's canonical frame: back into the frame the cameras live in.
        points = torch.from_numpy(self.prior.transform.to_normalised(vertices.astype(np.float64)))
        return points, faces, uv, texture

    def image(self, cameras: "Cameras", maps: "torch.Tensor", seed: int) -> np.ndarray:
        from ..evaluation.render import render_textured

        return render_textured(*self.mesh, cameras)[0]


def read_prompt_list(path: Path) -> list[str]:
    """Prompts from a text file (one a line; blank lines and # comments skipped) or a JSON list of strings."""
    from ..evaluation.runs import read_prompts
    from ..pipeline import validate_prompt

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"The prompts file {path} does not exist: pass a text file with one prompt a line.")
    if path.suffix.lower() == ".json":
        try:
            prompts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(f"The prompts file {path} is not readable JSON ({error}).") from None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"The prompts file {path} must hold a JSON list of strings.")
    else:
        prompts = read_prompts(path)
    if not prompts:
        raise InputError(f"The prompts file {path} has no prompts: write one prompt a line.")
    return [validate_prompt(p) for p in prompts]


def prompt_sources(prompts: list[str], prior: "HeadPrior", sampler: Callable[[], "LandmarkSampler"]) -> list[PromptSource]:
    return [PromptSource(prompt, prior, sampler) for prompt in prompts]


def run_sources(paths: list[Path]) -> list[RunSource]:
    """Finished runs (folders, or batch manifests), each with the prior it was made on."""
    from ..evaluation.runs import expand_manifests, read_run
    from ..prior import HeadPrior

    sources = []
    for folder in expand_manifests(paths):
        run = read_run(folder)
        sources.append(RunSource(run.folder, run.prompt, HeadPrior.load(run.folder / "prior")))
    return sources
