"""The panel's Variations: alternatives written into the prompt as {old|young}, drawn into distinct
prompts (the same for the same seed), each named by the alternatives it took; a prompt without
alternatives varies by seed instead.

`headsculpt batch` reads its attributes from a file; in the panel an artist types them where they go,
so "a {young|old} knight with {red|black} hair" and Variations 3 gives three of its four knights, and
"a knight" with Variations 3 gives three knights of seeds S, S + 1 and S + 2.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

ALTERNATIVES = re.compile(r"\{([^{}]*)\}")
MAX_NAME = 60  # Blender object names hold 63 bytes


@dataclass(frozen=True)
class PromptVariation:
    prompt: str
    name: str  # the chosen alternatives, e.g. "old, red hair"; "seed 5" for a seed variation; "" for one prompt
    seed: int


def _choices(prompt: str) -> list[list[str]]:
    choices = []
    for group in ALTERNATIVES.findall(prompt):
        options = [option.strip() for option in group.split("|")]
        if len(options) < 2 or not all(options) or len(set(options)) != len(options):
            raise ValueError(f"The prompt's {{{group}}} needs two or more different alternatives separated by |, "
                             "e.g. {young|old}.")
        choices.append(options)
    return choices


def prompt_variations(prompt: str, count: int, seed: int) -> list[PromptVariation]:
    """`count` distinct fillings of the prompt's alternatives, all with `seed`; ValueError (a sentence)
    when it has fewer. A prompt without alternatives gives itself with seeds seed, seed + 1, ..."""
    choices = _choices(prompt)
    if not choices:
        if count == 1:
            return [PromptVariation(prompt, "", seed)]
        return [PromptVariation(prompt, f"seed {seed + offset}", seed + offset) for offset in range(count)]
    total = math.prod(len(options) for options in choices)
    if count > total:
        raise ValueError(f"The prompt's alternatives make {total} different prompts, fewer than the {count} "
                         "variations asked for; add alternatives or lower Variations.")
    variations = []
    for number in random.Random(seed).sample(range(total), count):
        picked = []
        for options in reversed(choices):
            number, digit = divmod(number, len(options))
            picked.insert(0, options[digit])
        filled = iter(picked)
        variations.append(PromptVariation(ALTERNATIVES.sub(lambda _match: next(filled), prompt),
                                          ", ".join(picked)[:MAX_NAME], seed))
    return variations
