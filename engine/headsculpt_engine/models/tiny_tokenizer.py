"""The tiny models' CLIP tokenizer: real vocab.json and merges.txt files with a small vocabulary, shared
by the tiny text encoder (models/tiny.py) and the tiny CLIP (models/tiny_clip.py)."""
from __future__ import annotations

import json
from pathlib import Path

MAX_TOKENS = 77  # as CLIP: prompts are padded to 77 tokens

# Words whose byte-pair merges the tiny tokenizer knows, so common prompts tokenise to few tokens.
_WORDS = ("a", "head", "of", "portrait", "dslr", "man", "woman", "old", "young", "front", "side", "back",
          "view", "make", "him", "her", "the", "with", "hair", "worst", "low", "quality", "semi", "realistic")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map of bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tokenizer(folder: Path) -> dict[str, int]:
    """A CLIP byte-level BPE tokenizer with a small vocabulary: every byte alone and word-final, the
    merges that spell `_WORDS` left to right, and CLIP's two special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                vocab_list.append(pair[0] + pair[1])
            parts = [pair[0] + pair[1]] + parts[2:]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # As in the Stable Diffusion repositories: vocab.json + merges.txt and a small config.
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS, "do_lower_case": True,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return vocab
