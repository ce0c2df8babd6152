"""Text to token ids with the model's real tokenizer.

KerasHub's tokenizer classes do not always reproduce a Hugging Face folder's own
``tokenizer.json``: KerasHub's Llama 3 tokenizer on a SmolLM2 vocabulary splits
text differently from the first few tokens on. Where a local folder holds a
``tokenizer.json`` and KerasHub's tokenizer disagrees with it on the text, the
folder's own tokenizer (the ``tokenizers`` package, which keras-hub installs) is
used instead.

Models trained with a start token (Gemma's ``<bos>``) see it before every text;
``start_ids`` says which ids those are, and ``windows`` puts them at the head
of every evaluation and calibration window, as the model is run in use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_PROBE_CHARS = 20_000  # enough text to see a disagreement, cheap to tokenize twice


def token_ids(tokenizer, text: str, source: str | Path | None = None) -> np.ndarray:
    """``text`` as int32 ids (no special tokens) with the source folder's own
    tokenizer where KerasHub's ``tokenizer`` does not reproduce it."""
    own = folder_tokenizer(source)
    if own is not None and _disagree(tokenizer, own, text[:_PROBE_CHARS]):
        return np.asarray(own.encode(text, add_special_tokens=False).ids, "int32")
    return _keras_ids(tokenizer, text)


def folder_tokenizer(source):
    """The ``tokenizers.Tokenizer`` of a local folder's ``tokenizer.json``, or None."""
    if source is None:
        return None
    path = Path(str(source)).expanduser() / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        import tokenizers

        return tokenizers.Tokenizer.from_file(str(path))
    except Exception:  # not a tokenizers file (a KerasHub preset's own): keep KerasHub's
        return None


def _disagree(tokenizer, own, text: str) -> bool:
    ours = _keras_ids(tokenizer, text)
    theirs = own.encode(text, add_special_tokens=False).ids
    return ours.tolist() != list(theirs)


def _keras_ids(tokenizer, text: str) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(tokenizer(text))).reshape(-1).astype("int32")


def start_ids(preprocessor, source: str | Path | None = None) -> list[int]:
    """The ids the model's tokenizer puts before every text: what the source
    folder's ``tokenizer.json`` adds (none for SmolLM2), else the KerasHub
    preprocessor's start token where it adds one (Gemma, Llama 3)."""
    own = folder_tokenizer(source)
    if own is not None:
        plain = own.encode("x", add_special_tokens=False).ids
        special = own.encode("x", add_special_tokens=True).ids
        at = next((i for i in range(len(special)) if special[i : i + len(plain)] == plain), 0)
        return list(special[:at])
    tokenizer = getattr(preprocessor, "tokenizer", None)
    start = getattr(tokenizer, "start_token_id", None)
    return (
        [int(start)]
        if getattr(preprocessor, "add_start_token", False) and start is not None
        else []
    )


def windows(ids: np.ndarray, length: int, offsets: np.ndarray, head=()) -> np.ndarray:
    """``[len(offsets), length]`` int32: ``head`` (the start ids), then the
    text from each offset of ``ids``."""
    head = np.asarray(head, "int32")[:length]
    body = length - len(head)
    out = np.empty((len(offsets), length), "int32")
    out[:, : len(head)] = head
    out[:, len(head) :] = ids[np.asarray(offsets)[:, None] + np.arange(body)]
    return out
