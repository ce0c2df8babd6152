"""How much each weight matters to the model's outputs: the diagonal of the
Fisher information, ``E[(d log p(y) / d w)^2]`` with ``y`` sampled from the
model's own output distribution on calibration text (objective.py: the
next-token distribution of an LM, a noisy embedding of an encoder).

For a small change ``dw`` of the weights, the KL divergence between the float
and the changed model's next-token distributions is, to second order,
``0.5 * dw^T F dw`` per token; with the diagonal of ``F`` that is
``0.5 * sum(F * dw^2)``: the damage estimate ``tune`` minimises. One forward
and one backward pass per calibration window (labels drawn inside the pass,
so no second forward), summed over the windows' tokens (an LM) or the
windows (an encoder).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def fisher_diagonal(
    model, tokens: np.ndarray, variables: list, objective, seed: int = 0, report=print
):
    """Fisher diagonal per token or window (``objective.count``; float32 NumPy,
    each variable's own shape) of ``variables`` (some of
    ``model.trainable_variables``), from ``tokens`` ``[windows, seq_len]`` one
    window at a time."""
    trainable = list(model.trainable_variables)
    index = {id(v): i for i, v in enumerate(trainable)}
    wanted = [index[id(v)] for v in variables]
    others = [v.value for v in model.non_trainable_variables]
    values = [v.value for v in trainable]
    step = _gradient_step(model, others, tuple(wanted), objective)
    sums = [jnp.zeros(v.shape, jnp.float32) for v in variables]
    key = jax.random.PRNGKey(seed)
    for i, window in enumerate(np.asarray(tokens, np.int32)):
        key, sub = jax.random.split(key)
        sums = step(values, sums, jnp.asarray(window[None]), sub)
        report(f"sensitivity: window {i + 1}/{len(tokens)}")
    count = objective.count(tokens)
    return [np.asarray(s) / count for s in sums]


def _gradient_step(model, others, wanted: tuple, objective):
    def log_likelihood(values, ids, key):
        outputs, _ = model.stateless_call(values, others, objective.inputs(ids))
        return objective.log_likelihood(outputs, key)

    grad = jax.grad(log_likelihood)

    @jax.jit
    def step(values, sums, ids, key):
        g = grad(values, ids, key)
        return [s + jnp.square(g[i].astype(jnp.float32)) for s, i in zip(sums, wanted, strict=True)]

    return step
