"""Calibration and eval text is tokenized with the model's real tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from hubquant import synthetic
from hubquant.text import token_ids

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def keras_tokenizer():
    return synthetic.llama3_causal_lm(seed=0).preprocessor.tokenizer


def _word_level(folder):
    """A folder's own tokenizer.json that splits on whitespace, word by word."""
    words = ["[UNK]", "the", "sea", "is", "calm"]
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return tok


def test_the_folders_own_tokenizer_wins_where_keras_hub_splits_differently(
    keras_tokenizer, tmp_path
):
    _word_level(tmp_path)
    assert token_ids(keras_tokenizer, "the sea is calm", tmp_path).tolist() == [1, 2, 3, 4]


def test_keras_hubs_tokenizer_where_there_is_no_tokenizer_json(keras_tokenizer, tmp_path):
    want = np.asarray(keras_tokenizer("the sea is calm")).reshape(-1).tolist()
    assert token_ids(keras_tokenizer, "the sea is calm", tmp_path).tolist() == want
    assert token_ids(keras_tokenizer, "the sea is calm", None).tolist() == want
