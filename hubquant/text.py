"""Text to token ids with the model's real tokenizer.

KerasHub's tokenizer classes do not always reproduce a Hugging Face folder's own
``tokenizer.json``: KerasHub's Llama 3 tokenizer on a SmolLM2 vocabulary splits
text differently from the first few tokens on. Where a local folder holds a
``tokenizer.json`` and KerasHub's tokenizer disagrees with it on the text, the
folder's own tokenizer (the ``tokenizers`` package, which keras-hub installs) is
used instead.
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
