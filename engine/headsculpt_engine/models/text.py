"""Text embeddings: view-dependent prompts, a per-prompt cache, and the learned `<back-view>` token."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import InputError

if TYPE_CHECKING:
    import torch


def view_prompt(prompt: str, view: str, back_view_token: str | None = None) -> str:
    """`"{prompt}, {view} view"`; a back view says `back_view_token` instead of "back view" when a
    learned token is loaded (HeadSculpt Sec. 3.2)."""
    if view == "back" and back_view_token:
        return f"{prompt}, {back_view_token}"
    return f"{prompt}, {view} view"


class PromptEncoder:
    """CLIP text embeddings of prompts, each computed once (the same few prompts recur every step).

    `cache = False` encodes every prompt at every call: only `headsculpt bench --ablate` sets it, to
    measure what the cache saves.
    """

    def __init__(self, tokenizer, text_encoder, device: "torch.device"):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.cache = True
        self.back_view_token: str | None = None
        self._cache: dict[str, "torch.Tensor"] = {}

    def load_back_view_token(self, path: Path, token: str) -> None:
        """Add `token` with its embedding from a textual-inversion file (diffusers' format)."""
        from diffusers.loaders import TextualInversionLoaderMixin

        if not path.is_file():
            raise InputError(f"The back-view token file {path} does not exist: train one with "
                             f"`headsculpt learn-token` or leave models.back_view_token_file empty.")

        class _TextModels(TextualInversionLoaderMixin):
            """The two parts of a pipeline that diffusers' textual-inversion loader touches."""

            hf_device_map = None

            def __init__(self, tokenizer, text_encoder):
                self.tokenizer, self.text_encoder = tokenizer, text_encoder

            @property
            def components(self) -> dict:
                return {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder}

        try:
            _TextModels(self.tokenizer, self.text_encoder).load_textual_inversion(str(path), token=token)
        except (ValueError, OSError, KeyError) as error:
            raise InputError(f"Could not load the back-view token from {path} ({error}): pass a "
                             f"textual-inversion file made by `headsculpt learn-token`.") from error
        self.back_view_token = token
        self._cache.clear()

    def view_prompts(self, prompt: str, views: Sequence[str]) -> list[str]:
        return [view_prompt(prompt, view, self.back_view_token) for view in views]

    def embed(self, prompts: Sequence[str]) -> "torch.Tensor":
        """(len(prompts), 77, D) last hidden states of the text encoder, as Stable Diffusion uses."""
        import torch

        if not self.cache:
            self._cache.clear()
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids
            with torch.no_grad():
                hidden = self.text_encoder(tokens.to(self.device))[0]
            for prompt, row in zip(missing, hidden):
                self._cache[prompt] = row
        return torch.stack([self._cache[p] for p in prompts])
