"""hubquant eval: the same windows through both models."""

import json

import pytest

import hubquant
from hubquant import cli
from hubquant.errors import HubquantError
from hubquant.evaluate import compare, token_windows

TEXT = (
    "Keras is a deep learning library. The quick brown fox jumps over the lazy dog. "
    "Quantization stores each weight with fewer bits, so a model takes less memory. "
) * 12


def windows_for(lm, seq_len=16, count=4):
    return token_windows(lm.preprocessor.tokenizer, TEXT, seq_len, count)


def test_model_against_itself_has_zero_kl_and_equal_perplexity(fresh):
    lm = fresh("gemma")
    result = compare(lm, lm, windows_for(lm))
    assert result.kl_divergence == pytest.approx(0.0, abs=1e-9)
    assert result.perplexity_float == result.perplexity_quantized
    assert result.top1_agreement == 1.0
    assert result.windows == 4 and result.tokens == 4 * 16


def test_int8_costs_little(fresh):
    ref, lm = fresh("llama3"), fresh("llama3")
    hubquant.quantize(lm, "int8")
    result = compare(ref, lm, windows_for(ref))
    assert result.kl_divergence < 1e-3
    assert abs(result.perplexity_quantized / result.perplexity_float - 1) < 0.01
    assert result.top1_agreement >= 0.95


def test_text_shorter_than_a_window_is_refused(fresh):
    lm = fresh("gemma")
    with pytest.raises(HubquantError, match="fewer than one window of 513"):
        token_windows(lm.preprocessor.tokenizer, "too short", 512, 1)


def test_cli_eval_prints_json(fresh, float_presets, tmp_path, capsys):
    lm = fresh("gemma")
    hubquant.quantize(lm, "int4")
    hubquant.save(lm, tmp_path / "q")
    (tmp_path / "t.txt").write_text(TEXT)
    code = cli.main(
        [
            "eval",
            "--preset",
            str(float_presets["gemma"]),
            "--quantized",
            str(tmp_path / "q"),
            "--text",
            str(tmp_path / "t.txt"),
            "--seq-len",
            "16",
            "--windows",
            "3",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["windows"] == 3 and result["kl_divergence"] > 0
