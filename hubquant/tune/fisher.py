"""How much each weight matters to the model's outputs: the diagonal of the
Fisher information, ``E[(d log p(y) / d w)^2]`` with ``y`` sampled from the
model's own next-token distribution on calibration text.

For a small change ``dw`` of the weights, the KL divergence between the float
and the changed model's next-token distributions is, to second order,
``0.5 * dw^T F dw`` per token; with the diagonal of ``F`` that is
``0.5 * sum(F * dw^2)``: the damage estimate ``tune`` minimises. One forward
and one backward pass per calibration window (labels drawn inside the pass,
so no second forward), summed over the windows' tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def fisher_diagonal(model, tokens: np.ndarray, variables: list, seed: int = 0, report=print):
    """Per-token Fisher diagonal (float32 NumPy, each variable's own shape) of
    ``variables`` (some of ``model.trainable_variables``), from ``tokens``
    ``[windows, seq_len]`` one window at a time."""
    trainable = list(model.trainable_variables)
    index = {id(v): i for i, v in enumerate(trainable)}
    wanted = [index[id(v)] for v in variables]
    others = [v.value for v in model.non_trainable_variables]
    values = [v.value for v in trainable]
    step = _gradient_step(model, others, tuple(wanted))
    sums = [jnp.zeros(v.shape, jnp.float32) for v in variables]
    key = jax.random.PRNGKey(seed)
    for i, window in enumerate(np.asarray(tokens, np.int32)):
        key, sub = jax.random.split(key)
        sums = step(values, sums, jnp.asarray(window[None]), sub)
        report(f"sensitivity: window {i + 1}/{len(tokens)}")
    count = tokens.shape[0] * tokens.shape[1]
    return [np.asarray(s) / count for s in sums]


def _gradient_step(model, others, wanted: tuple):
    def log_likelihood(values, ids, key):
        inputs = {"token_ids": ids, "padding_mask": jnp.ones_like(ids)}
        logits, _ = model.stateless_call(values, others, inputs)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        labels = jax.random.categorical(key, jax.lax.stop_gradient(logp), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, labels[..., None], axis=-1))

    grad = jax.grad(log_likelihood)

    @jax.jit
    def step(values, sums, ids, key):
        g = grad(values, ids, key)
        return [s + jnp.square(g[i].astype(jnp.float32)) for s, i in zip(sums, wanted, strict=True)]

    return step
