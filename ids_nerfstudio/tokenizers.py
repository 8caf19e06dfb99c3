"""CLIP tokenizers built offline: byte-level (any text, one token per byte) with optional whole-word tokens.

The tiny random models use the byte-level one; the demo prior adds its vocabulary as whole words. Both are
ordinary ``CLIPTokenizer`` folders (vocab.json + merges.txt), so the models that use them load through the
usual ``from_pretrained`` paths.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path


def byte_symbols() -> list[str]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_clip_tokenizer(folder: Path, words: Sequence[str] = (), max_length: int = 77) -> None:
    """Write a CLIP tokenizer folder over single bytes in which each of ``words`` is one token.

    The BPE merges are chosen so that each word merges into itself: a merge is only ever appended after all
    earlier ones, which never changes the result for a word handled before.
    """
    symbols = byte_symbols()
    vocab = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], merges)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.append(pieces[0] + pieces[1])
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    vocab = list(dict.fromkeys(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer", "pad_token": "<|endoftext|>"})
    )


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encoding of one word as CLIP's tokenizer does it: merge the best-ranked pair until none applies."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    while len(pieces) > 1:
        rank = min(ranks.get(pair, len(ranks)) for pair in zip(pieces, pieces[1:], strict=False))
        if rank == len(ranks):
            break
        best, merged, k = merges[rank], [], 0
        while k < len(pieces):  # merge every occurrence of the best pair, left to right
            if k < len(pieces) - 1 and (pieces[k], pieces[k + 1]) == best:
                merged.append(pieces[k] + pieces[k + 1])
                k += 2
            else:
                merged.append(pieces[k])
                k += 1
        pieces = merged
    return pieces


def clip_tokenizer(words: Sequence[str] = (), max_length: int = 77):
    """A ``CLIPTokenizer`` built by ``write_clip_tokenizer`` in a temporary folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder), words, max_length)
        return CLIPTokenizer.from_pretrained(folder)
