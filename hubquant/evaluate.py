"""What quantization cost: perplexity, KL divergence and top-1 agreement.

Both models see the same token windows, cut from a text file with the float
model's own tokenizer. KL is KL(float || quantized) of the next-token
distributions, averaged over every predicted position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from keras import ops

from hubquant.errors import HubquantError


@dataclass(frozen=True)
class Comparison:
    windows: int
    seq_len: int
    tokens: int
    perplexity_float: float
    perplexity_quantized: float
    kl_divergence: float
    top1_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        change = self.perplexity_quantized / self.perplexity_float - 1
        return "\n".join(
            [
                f"{'':24s} {'float':>12s} {'quantized':>12s}",
                f"{'perplexity':24s} {self.perplexity_float:12.4f} {self.perplexity_quantized:12.4f}  ({change:+.2%})",
                f"{'mean KL(float||quant)':24s} {'':12s} {self.kl_divergence:12.6f}",
                f"{'top-1 agreement':24s} {'':12s} {self.top1_agreement:12.2%}",
                f"{self.windows} windows of {self.seq_len} tokens ({self.tokens} predictions)",
            ]
        )


def token_windows(
    tokenizer, text: str, seq_len: int, windows: int, source=None, head=()
) -> np.ndarray:
    """``windows`` non-overlapping runs of ``seq_len + 1`` tokens from the start
    (tokenized as ``hubquant.text.token_ids`` does, with ``source``'s own tokenizer
    where KerasHub's does not reproduce it), each opening with ``head``, the
    model's start ids (``hubquant.text.start_ids``)."""
    from hubquant import text as text_mod

    ids = text_mod.token_ids(tokenizer, text, source)
    body = seq_len + 1 - len(head)
    available = len(ids) // body
    if available < 1:
        raise HubquantError(
            f"the text has {len(ids)} tokens, fewer than one window of {seq_len + 1}; "
            "give a longer text or a smaller --seq-len."
        )
    offsets = np.arange(min(windows, available)) * body
    return text_mod.windows(ids, seq_len + 1, offsets, head)


def compare(float_lm, quantized_lm, windows: np.ndarray, batch_size: int = 4) -> Comparison:
    """Perplexity of both, KL and top-1 agreement on the same windows."""
    nll_f, nll_q, kl, agree = [], [], [], []
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        inputs = {"token_ids": batch[:, :-1], "padding_mask": np.ones_like(batch[:, :-1])}
        targets = batch[:, 1:]
        logp_f = _log_softmax(float_lm(inputs))
        logp_q = _log_softmax(quantized_lm(inputs))
        nll_f.append(-np.take_along_axis(logp_f, targets[..., None], -1)[..., 0])
        nll_q.append(-np.take_along_axis(logp_q, targets[..., None], -1)[..., 0])
        kl.append(np.sum(np.exp(logp_f) * (logp_f - logp_q), axis=-1))
        agree.append(np.argmax(logp_f, -1) == np.argmax(logp_q, -1))
    nll_f, nll_q, kl, agree = (np.concatenate(x).reshape(-1) for x in (nll_f, nll_q, kl, agree))
    return Comparison(
        windows=len(windows),
        seq_len=windows.shape[1] - 1,
        tokens=nll_f.size,
        perplexity_float=float(np.exp(nll_f.mean())),
        perplexity_quantized=float(np.exp(nll_q.mean())),
        kl_divergence=float(max(kl.mean(), 0.0)),
        top1_agreement=float(agree.mean()),
    )


def evaluate(
    preset: str, quantized: str | Path, text_file: str | Path, seq_len: int = 128, windows: int = 16
) -> Comparison:
    """Load both models and compare them on windows of ``text_file``."""
    from hubquant.api import load
    from hubquant.float_preset import load_source
    from hubquant.text import start_ids

    if type(seq_len) is not int or seq_len < 2:
        raise HubquantError(f"--seq-len: expected an integer of at least 2. Received: {seq_len}")
    if type(windows) is not int or windows < 1:
        raise HubquantError(f"--windows: expected a positive integer. Received: {windows}")
    text = _read_text(Path(text_file))
    float_lm = load_source(preset)
    quantized_lm = load(quantized)
    tokenizer = getattr(getattr(float_lm, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise HubquantError(f"preset '{preset}' has no tokenizer; eval needs a causal LM preset.")
    _check_vocabularies(float_lm, quantized_lm, preset, quantized)
    head = start_ids(float_lm.preprocessor, preset)
    data = token_windows(tokenizer, text, seq_len, windows, source=preset, head=head)
    return compare(float_lm, quantized_lm, data)


def _read_text(path: Path) -> str:
    """A text file's contents; a binary or unreadable file is refused by name."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HubquantError(f"--text: '{path}' is not a readable UTF-8 text file ({e}).") from None
    if "\x00" in text:
        raise HubquantError(f"--text: '{path}' holds NUL bytes; give a plain text file.")
    return text


def _check_vocabularies(float_lm, quantized_lm, preset, quantized) -> None:
    ours, theirs = (m.backbone.vocabulary_size for m in (float_lm, quantized_lm))
    if ours != theirs:
        raise HubquantError(
            f"'{quantized}' has a vocabulary of {theirs} tokens; preset '{preset}' has "
            f"{ours}: it was not quantized from this preset."
        )


def _log_softmax(logits) -> np.ndarray:
    x = np.asarray(ops.convert_to_numpy(logits), np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
