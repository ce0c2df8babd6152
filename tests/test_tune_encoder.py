"""hubquant tune on a sentence encoder: the damage it minimises is the change
of the unit-length mean-pooled embedding, the config fits the budget and
applies, and the encoder's own bad input is one line."""

from __future__ import annotations

import json

import families
import keras_hub
import numpy as np
import pytest

import hubquant
from hubquant import cli
from hubquant.config import load_config
from hubquant.tune.objective import Embedding, encoder_windows, objective_for

WORDS = (
    "the a cat dog sat on mat ran to park quick brown fox jumps over lazy "
    "model weights are small when quantized and large when float"
).split()
TEXT = " ".join(WORDS[i % len(WORDS)] for i in range(0, 997, 7)) * 3


@pytest.fixture(scope="module")
def bert_preset(tmp_path_factory):
    """A tiny BERT with its WordPiece tokenizer, saved as a preset folder."""
    folder = tmp_path_factory.mktemp("bert") / "bert"
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    families.bert_backbone(seed=0).save_to_preset(str(folder))
    tokenizer.save_to_preset(str(folder))
    return folder


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_windows_are_framed_by_cls_and_sep(bert_preset):
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(bert_preset))
    ids = np.arange(10, 40, dtype="int32")
    windows = encoder_windows(tokenizer, ids, count=5, length=8)
    assert windows.shape == (5, 8)
    assert (windows[:, 0] == tokenizer.cls_token_id).all()
    assert (windows[:, -1] == tokenizer.sep_token_id).all()
    for row in windows:  # the body is a run of consecutive text ids
        assert (np.diff(row[1:-1]) == 1).all()


def test_an_encoder_is_tuned_for_its_embedding(bert_preset):
    backbone = keras_hub.models.Backbone.from_preset(str(bert_preset))
    objective = objective_for(backbone)
    assert isinstance(objective, Embedding)
    assert set(objective.input_names) == {"token_ids", "segment_ids", "padding_mask"}


def test_tune_writes_an_encoder_config_within_the_budget(bert_preset, text_file, tmp_path):
    config, report = tmp_path / "tuned.yaml", tmp_path / "tune.json"
    argv = ["tune", "--preset", str(bert_preset), "--target-size", "0.3"]
    argv += ["--calibration", str(text_file), "--samples", "12", "--seq-len", "12"]
    argv += ["--output-config", str(config), "--report", str(report), "--quiet"]
    assert cli.main(argv) == 0
    text = config.read_text()
    assert "Predicted 1 - cosine(float, tuned) per window: " in text
    assert "Measured on held-out calibration windows: mean cosine " in text
    data = json.loads(report.read_text())
    assert data["objective"] == "embedding"
    assert 0.0 < data["measured"]["min_cosine"] <= data["measured"]["cosine"] <= 1.0
    backbone = keras_hub.models.Backbone.from_preset(str(bert_preset))
    plan = hubquant.quantize(backbone, load_config(config))
    totals = plan.totals()
    assert totals["bytes_after"] == data["chosen_bytes"] <= data["budget_bytes"]


def test_an_encoder_without_calibration_text_is_one_line(bert_preset, capsys, tmp_path):
    out = tmp_path / "tuned.yaml"
    argv = ["tune", "--preset", str(bert_preset), "--target-size", "0.3"]
    assert cli.main([*argv, "--output-config", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "hubquant: error: tune on a text encoder needs calibration text: give --calibration "
        "FILE (an encoder cannot write its own, as a causal LM does).\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_encoder_without_its_tokenizer_is_one_line(capsys, tmp_path, text_file):
    folder = tmp_path / "bare"
    families.bert_backbone(seed=0).save_to_preset(str(folder))
    out = tmp_path / "tuned.yaml"
    argv = ["tune", "--preset", str(folder), "--target-size", "0.3"]
    code = cli.main([*argv, "--calibration", str(text_file), "--output-config", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert f"tune on a text encoder needs its tokenizer, and preset '{folder}' has none" in err
    assert not out.exists()
