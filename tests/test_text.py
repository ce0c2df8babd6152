"""Calibration and eval text is tokenized with the model's real tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from hubquant import synthetic
from hubquant.evaluate import token_windows
from hubquant.text import start_ids, token_ids

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def keras_tokenizer():
    return synthetic.llama3_causal_lm(seed=0).preprocessor.tokenizer


def _word_level(folder, bos=False):
    """A folder's own tokenizer.json that splits on whitespace, word by word
    (with ``bos``, it puts ``<s>`` before every text, as Gemma's does)."""
    words = ["[UNK]", "the", "sea", "is", "calm", "<s>"]
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = tokenizers.processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 5)]
        )
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


def test_start_ids_are_what_the_folders_tokenizer_puts_first(tmp_path):
    preprocessor = synthetic.llama3_causal_lm(seed=0).preprocessor  # adds its own start
    (tmp_path / "plain").mkdir()
    (tmp_path / "bos").mkdir()
    _word_level(tmp_path / "plain")
    _word_level(tmp_path / "bos", bos=True)
    assert start_ids(preprocessor, tmp_path / "plain") == []
    assert start_ids(preprocessor, tmp_path / "bos") == [5]
    assert start_ids(preprocessor, None) == [preprocessor.tokenizer.start_token_id]


def test_every_eval_window_opens_with_the_start_ids_then_runs_on(keras_tokenizer, tmp_path):
    _word_level(tmp_path, bos=True)
    text = "the sea is calm " * 4
    windows = token_windows(keras_tokenizer, text, 4, 9, source=tmp_path, head=[5])
    assert windows.tolist() == [[5, 1, 2, 3, 4]] * 4  # 16 words: four bodies of four
