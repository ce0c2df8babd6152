"""The sampler of self-generated text draws from the model's own distribution."""

from __future__ import annotations

import keras
import numpy as np

from hubquant.calibrate.sampler import BLOCK, BlockSampler


def _draws(p: np.ndarray, n: int, seed: int) -> np.ndarray:
    rows = keras.ops.convert_to_tensor(np.tile(p.astype("float32"), (n, 1)))
    return np.asarray(BlockSampler(seed=seed).get_next_token(rows))


def test_draws_follow_the_distribution_and_never_an_impossible_id():
    rng = np.random.default_rng(0)
    vocab = BLOCK + 189  # a last block padded with ids that do not exist
    p = rng.random(vocab) ** 4  # skewed, as a language model's next-token probabilities
    p[rng.random(vocab) < 0.2] = 0.0
    p[[0, -1]] = 0.0  # the first and the last id impossible
    p /= p.sum()
    n = 20000
    ids = _draws(p, n, seed=3)
    counts = np.bincount(ids, minlength=vocab)
    assert len(counts) == vocab and counts[p == 0].sum() == 0
    expected = p * n
    kept = expected > 5
    chi2 = ((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum()
    dof = kept.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)  # 5 standard deviations
    np.testing.assert_array_equal(_draws(p, n, seed=3), ids)  # the seed decides


def test_a_certain_token_is_always_drawn():
    for token in (0, BLOCK - 1, BLOCK, 3 * BLOCK + 7):
        p = np.zeros(4 * BLOCK)
        p[token] = 1.0
        assert (_draws(p, 64, seed=0) == token).all()
