"""What ``tune`` protects: a causal LM's next-token distribution, or a sentence
encoder's embedding.

Each objective gives the inputs of a window of token ids, the log-likelihood
of a sample drawn from the model's own output (whose squared gradient is the
Fisher diagonal, fisher.py), and the exact measure ``tune`` reports after
choosing:

- ``NextToken`` (a CausalLM): labels drawn from the next-token distribution;
  ``0.5 * sum(F * dw^2)`` estimates the KL(float || quantized) per token.
  Measured: KL and top-1 agreement.
- ``Embedding`` (an encoder backbone): the unit-length mean of the last hidden
  states, as sentence-transformers embeds; the sample is that embedding plus
  unit Gaussian noise, so the score is ``u . e`` with ``u ~ N(0, I)`` and
  ``E[(d(u . e)/dw)^2]`` is the diagonal of ``J^T J``. Then
  ``0.5 * sum(F * dw^2)`` estimates ``0.5 * |e - e'|^2 = 1 - cos(e, e')`` per
  window. Measured: mean and least cosine to float.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hubquant.errors import HubquantError


class NextToken:
    """A causal LM's next-token distribution (KL per token)."""

    name = "next_token"
    predicted = "KL(float || tuned) per token"
    # 16 windows of 256 tokens, 4 held out to measure (each many tokens), so 12 for the
    # Fisher pass: on SmolLM2-135M the choice measured as well as with 28 (KL 0.2002
    # against 0.1998 on held-out text) in 94 s instead of 125 s.
    held_out = 4
    samples, seq_len = 16, 256

    def inputs(self, ids):
        return {"token_ids": ids, "padding_mask": jnp.ones_like(ids)}

    def log_likelihood(self, outputs, key):
        logp = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
        labels = jax.random.categorical(key, jax.lax.stop_gradient(logp), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, labels[..., None], axis=-1))

    def count(self, tokens: np.ndarray) -> int:
        return tokens.shape[0] * tokens.shape[1]

    def reference_of(self, outputs: list):
        """What ``measure`` compares against, from the float model's logits per window."""
        from hubquant.tune.measure import log_probs

        return [log_probs(o) for o in outputs]

    def measure(self, model, windows: np.ndarray, reference) -> dict:
        from hubquant.tune.measure import kl_and_top1

        kl, top1 = kl_and_top1(model, windows, reference)
        return {"kl": kl, "top1": top1}

    def describe(self, measured: dict) -> str:
        return f"KL {measured['kl']:.4g}, top-1 agreement {measured['top1']:.1%}"


class Embedding:
    """A sentence encoder's unit-length mean-pooled embedding (1 - cosine)."""

    name = "embedding"
    predicted = "1 - cosine(float, tuned) per window"
    held_out = 32  # one embedding per window: more of them to measure
    samples, seq_len = 128, 64

    def __init__(self, input_names):
        self.input_names = tuple(input_names)

    def inputs(self, ids):
        given = {
            "token_ids": ids,
            "padding_mask": jnp.ones_like(ids),
            "segment_ids": jnp.zeros_like(ids),
        }
        return {name: given[name] for name in self.input_names}

    def log_likelihood(self, outputs, key):
        e = _unit_embedding(outputs)
        noise = jax.random.normal(key, e.shape, e.dtype)
        return jnp.sum(jax.lax.stop_gradient(noise) * e)

    def count(self, tokens: np.ndarray) -> int:
        return tokens.shape[0]

    def reference_of(self, outputs: list):
        """What ``measure`` compares against, from the float model's outputs per window."""
        return np.concatenate([np.asarray(_unit_embedding(o), np.float64) for o in outputs])

    def measure(self, model, windows: np.ndarray, reference) -> dict:
        cosine = np.sum(self._embed(model, windows) * reference, axis=-1)
        return {"cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}

    def describe(self, measured: dict) -> str:
        return f"mean cosine {measured['cosine']:.5f}, least {measured['min_cosine']:.5f}"

    def _embed(self, model, windows: np.ndarray) -> np.ndarray:
        return self.reference_of([model(self.inputs(jnp.asarray(w[None]))) for w in windows])


def _unit_embedding(outputs):
    hidden = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    e = jnp.mean(hidden.astype(jnp.float32), axis=1)  # every token of a window is real
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def objective_for(model):
    """``NextToken`` for a task with an LM head, ``Embedding`` for an encoder
    backbone (dict inputs with token ids, a ``sequence_output``)."""
    import keras_hub

    if isinstance(model, keras_hub.models.CausalLM):
        return NextToken()
    names = list(model.input) if isinstance(model.input, dict) else []
    outputs = model.output if isinstance(model.output, dict) else {}
    if "token_ids" in names and "sequence_output" in outputs:
        return Embedding(names)
    raise HubquantError(
        f"tune needs a causal LM or a text encoder; this model is a {type(model).__name__} "
        f"with inputs {names or model.input}."
    )


def encoder_windows(tokenizer, ids: np.ndarray, count: int, length: int, seed: int = 0):
    """``count`` seeded windows of ``ids``, each framed by the tokenizer's start
    and end tokens ([CLS] ... [SEP]), as an encoder sees a text."""
    from hubquant.text import windows

    body = length - 2
    if length < 3 or len(ids) < body:
        raise HubquantError(
            f"calibration text has {len(ids)} tokens, fewer than one window of "
            f"seq_len={length} (its [CLS] and [SEP] included); give more text or a smaller seq_len."
        )
    starts = np.random.default_rng(seed).integers(0, len(ids) - body + 1, count)
    framed = windows(ids, length - 1, starts, [tokenizer.start_token_id])
    end = np.full((count, 1), tokenizer.end_token_id, framed.dtype)
    return np.concatenate([framed, end], axis=1)
