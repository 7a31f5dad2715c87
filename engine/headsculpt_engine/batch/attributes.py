"""Attribute files and the prompts they make.

An attribute file is JSON mapping each placeholder of the prompt template to the values it takes:
`{"age": ["young", "old"], "hair": ["curly hair", "a shaved head"]}` for the template
"a DSLR portrait of a {age} person with {hair}". StyleAvatar3D composes attribute-related prompts the
same way to get diverse avatars from one description.
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_COUNT = 1000  # rejection draws stay fast up to this many distinct combinations
MAX_VALUE_CHARS = 200


@dataclass(frozen=True)
class Variation:
    """One drawn combination: its attribute values, and the prompt they fill in."""

    attributes: dict[str, str]
    prompt: str


def template_names(template: str) -> list[str]:
    """The placeholders of `template`, in order of first appearance; InputError for malformed ones."""
    names: list[str] = []
    for name in PLACEHOLDER.findall(template):
        if not NAME.fullmatch(name):
            raise InputError(f"The prompt has the placeholder {{{name}}}; placeholder names are letters, digits "
                             "and underscores, such as {age} or {hair_colour}.")
        if name not in names:
            names.append(name)
    rest = PLACEHOLDER.sub("", template)
    if "{" in rest or "}" in rest:
        raise InputError("The prompt has an unmatched { or }; write each placeholder as {name}.")
    if not names:
        raise InputError("The prompt has no placeholders: write the attributes to vary as {name}, e.g. "
                         "\"a DSLR portrait of a {age} {person} with {hair}\".")
    return names


def load_attribute_file(path: Path) -> dict[str, list[str]]:
    """The file's placeholder -> values mapping, checked: each a non-empty list of distinct texts."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"The attribute file {path} cannot be read ({error.strerror or error}).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"The attribute file {path} is not valid JSON ({error}).") from None
    return check_attributes(data, str(path))


def check_attributes(data: object, where: str) -> dict[str, list[str]]:
    """The mapping of a parsed attribute file, or InputError saying what is wrong with it."""
    if not isinstance(data, dict) or not data:
        raise InputError(f"The attribute file {where} must be a JSON object mapping each placeholder to a list "
                         "of values, e.g. {\"age\": [\"young\", \"old\"]}.")
    attributes: dict[str, list[str]] = {}
    for name, values in data.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"In {where}, \"{name}\" must map to a non-empty list of values.")
        if not all(isinstance(value, str) and value.strip() for value in values):
            raise InputError(f"In {where}, every value of \"{name}\" must be a non-empty text.")
        cleaned = [value.strip() for value in values]
        if len(set(cleaned)) != len(cleaned):
            raise InputError(f"In {where}, \"{name}\" lists a value twice; each value must be distinct.")
        if any(len(value) > MAX_VALUE_CHARS or PLACEHOLDER.search(value) for value in cleaned):
            raise InputError(f"In {where}, a value of \"{name}\" is longer than {MAX_VALUE_CHARS} characters "
                             "or holds a {placeholder}.")
        attributes[str(name)] = cleaned
    return attributes


def match_template(template: str, attributes: dict[str, list[str]], where: str) -> list[str]:
    """The template's placeholder names, once each of them and only they are defined in the file."""
    names = template_names(template)
    unknown = [name for name in names if name not in attributes]
    if unknown:
        raise InputError(f"The prompt uses {', '.join('{' + n + '}' for n in unknown)}, which {where} does not "
                         f"define; it defines {', '.join(attributes)}.")
    unused = [name for name in attributes if name not in names]
    if unused:
        raise InputError(f"{where} defines {', '.join(unused)}, which the prompt does not use; add "
                         f"{', '.join('{' + n + '}' for n in unused)} to the prompt or remove them from the file.")
    return names


def combination_count(attributes: dict[str, list[str]]) -> int:
    return math.prod(len(values) for values in attributes.values())


def draw(template: str, attributes: dict[str, list[str]], count: int, seed: int) -> list[Variation]:
    """`count` distinct combinations, the same for the same seed. Draws are made one after another, so
    the first N of a larger count are the N of a smaller one: raising --count only adds variations."""
    names = template_names(template)
    total = combination_count(attributes)
    if not 1 <= count <= MAX_COUNT:
        raise InputError(f"--count is {count}; choose from 1 to {MAX_COUNT}.")
    if count > total:
        raise InputError(f"--count is {count} but the attribute file allows only {total} distinct "
                         f"combination{'s' * (total != 1)}; lower --count or add values.")
    rng = random.Random(seed)
    chosen: list[int] = []
    seen: set[int] = set()
    while len(chosen) < count:
        index = rng.randrange(total)
        if index not in seen:
            seen.add(index)
            chosen.append(index)
    return [_variation(template, names, attributes, index) for index in chosen]


def _variation(template: str, names: list[str], attributes: dict[str, list[str]], index: int) -> Variation:
    """Combination number `index` in mixed radix over the placeholders' value lists."""
    values: dict[str, str] = {}
    for name in reversed(names):
        index, digit = divmod(index, len(attributes[name]))
        values[name] = attributes[name][digit]
    values = {name: values[name] for name in names}
    return Variation(values, PLACEHOLDER.sub(lambda match: values[match.group(1)], template))
