"""The `--models` option every command that loads diffusion models shares (not a command itself)."""
from __future__ import annotations

import argparse

from ..config import ModelsConfig

HELP = ("diffusion models: 'default' (the papers' Hugging Face ids, from the local cache), 'tiny' (tiny "
        "random models for tests, made once in the engine cache), or a folder written by make-tiny-models")


def add_models_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--models", default=default, metavar="MODELS", help=HELP)


def models_config(value: str | None, base: ModelsConfig | None = None) -> ModelsConfig:
    """The ModelsConfig for a `--models` value (None keeps `base`, e.g. from a preset)."""
    from ..models.loading import models_config_from_cli

    if value is None:
        return base or ModelsConfig()
    return models_config_from_cli(value, base)
