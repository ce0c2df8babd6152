"""Predicted against measured: the tuned model's KL and top-1 agreement with
float on held-out calibration windows."""

from __future__ import annotations

import numpy as np


def kl_and_top1(model, windows: np.ndarray, reference: list[np.ndarray]) -> tuple[float, float]:
    """Mean KL(float || model) per token and top-1 agreement, on ``windows``."""
    kl, agree = [], []
    for window, logp_f in zip(windows, reference, strict=True):
        logp_q = _log_probs(model, window[None])
        kl.append(np.sum(np.exp(logp_f) * (logp_f - logp_q), axis=-1).ravel())
        agree.append((np.argmax(logp_f, -1) == np.argmax(logp_q, -1)).ravel())
    return float(max(np.concatenate(kl).mean(), 0.0)), float(np.concatenate(agree).mean())


def _log_probs(model, ids: np.ndarray) -> np.ndarray:
    return log_probs(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))


def log_probs(logits) -> np.ndarray:
    """Float32 log-probabilities from ``logits``, normalised in float64."""
    logits = np.asarray(logits, np.float64)
    logits -= logits.max(-1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
