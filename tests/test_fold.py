"""AWQ scales folded into the norm before q/k/v and gate/up (recipe ``input_norm``)
and into the up projection's rows before down (``input_from``)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import logits
from keras_hub.src.models.gemma.rms_normalization import RMSNormalization
from keras_hub.src.models.llama.llama_layernorm import LlamaLayerNorm
from test_hf_export import hf_logits

import hubquant
from hubquant import synthetic
from hubquant.calibrate import fold
from hubquant.config import parse_config

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 16)).astype("float32")
S = np.exp(RNG.uniform(-1.5, 1.5, 16)).astype("float32")


def _built(norm, dtype="float32"):
    norm.build((None, 16))
    for v in norm.weights:
        v.assign(RNG.uniform(-0.8, 0.8, v.shape).astype(dtype))
    return norm


@pytest.mark.parametrize(
    "norm, alpha",
    [
        (LlamaLayerNorm(), 0.0),  # x * scale
        (RMSNormalization(), 1.0),  # Gemma: x * (1 + scale)
        (keras.layers.LayerNormalization(), 0.0),  # x * gamma + beta
    ],
    ids=["llama", "gemma", "layer_norm"],
)
def test_folding_divides_the_norm_output_by_the_scale(norm, alpha):
    norm = _built(norm)
    want = np.asarray(norm(X)) / S
    form = fold.norm_form(norm, "n")
    assert isinstance(form, fold.NormForm) and form.alpha == alpha
    form.divide_by(S)
    np.testing.assert_allclose(np.asarray(norm(X)), want, rtol=1e-5, atol=1e-6)


def test_a_one_plus_scale_norm_in_bfloat16_is_not_folded():
    norm = _built(RMSNormalization(dtype="bfloat16"))
    reason = fold.norm_form(norm, "decoder_block_0/pre_attention_norm")
    assert reason == (
        "decoder_block_0/pre_attention_norm computes n(x) * (1 + w) with w in bfloat16: "
        "folding would lose precision"
    )


CONFIG = (
    "default: {mode: int4, group_size: 8, symmetric: true, algorithm: gptq}\n"
    "rules:\n  - match: {role: 'embed*'}\n    mode: none\n"
    "  - match: {role: lm_head}\n    mode: none\n"
    "  - match: {role: 'attn.[qkv]'}\n    algorithm: awq\n"
    "  - match: {role: 'mlp.*'}\n    algorithm: awq\n"
)


def test_folded_awq_beats_rtn_and_exports_to_hugging_face(fresh, tmp_path):
    """AWQ on q/k/v and the MLP, GPTQ on attn.o: nothing holds an input scale,
    so the export that refuses in-layer AWQ scales accepts it."""
    calibration = RNG.integers(4, 200, (8, 32)).astype("int32")
    held = RNG.integers(4, 200, (4, 32)).astype("int32")
    inputs = {"token_ids": held, "padding_mask": np.ones_like(held)}
    errors = {}
    for name, text in {
        "rtn": CONFIG.replace("gptq", "rtn").replace("awq", "rtn"),
        "awq": CONFIG,
    }.items():
        lm = fresh("llama3")
        synthetic.add_activation_outliers(lm.backbone, 0)
        want = np.asarray(lm.backbone(inputs))
        plan = hubquant.apply_plan(
            lm, hubquant.plan_for(lm, parse_config(text, "c.yaml")), calibration=calibration
        )
        got = np.asarray(lm.backbone(inputs))
        errors[name] = float(np.mean((got - want) ** 2) / np.mean(want**2))
    assert errors["awq"] < 0.8 * errors["rtn"]
    awq = [e for e in plan.quantized if e.algorithm == "awq"]
    assert len(awq) == 6 * 2 and all(e.folded_into for e in awq)
    down = [e for e in awq if e.role == "mlp.down"]
    assert all(e.folded_into.endswith("_feedforward_intermediate_dense") for e in down)
    assert not [w.path for w in lm.backbone.weights if "input_scale" in w.path]
    hubquant.save(lm, tmp_path / "q", formats=("preset", "hf"))
    back = hubquant.load(tmp_path / "q")
    np.testing.assert_array_equal(np.asarray(back.backbone(inputs)), got)
    np.testing.assert_allclose(
        hf_logits(tmp_path / "q" / "hf", held), logits(lm, inputs), atol=1e-4, rtol=0
    )


def test_cli_exports_folded_awq_to_hugging_face(float_presets, tmp_path):
    """The check before quantizing lets AWQ layers that may fold through; the
    one at export refuses what did not (here attn.o, with no norm to fold into)."""
    from hubquant import cli

    (tmp_path / "cal.txt").write_text(synthetic._CORPUS * 4)
    calibration = f"calibration: {{files: ['{tmp_path}/cal.txt'], num_samples: 4, seq_len: 16}}\n"
    (tmp_path / "c.yaml").write_text(CONFIG + calibration)
    (tmp_path / "all.yaml").write_text(CONFIG.replace("gptq", "awq") + calibration)
    preset = str(float_presets["llama3"])
    args = ["apply", "--preset", preset, "--format", "preset,hf", "--quiet"]
    assert (
        cli.main([*args, "--config", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "a")])
        == 0
    )
    assert (tmp_path / "a" / "hf" / "config.json").exists()
    code = cli.main(
        [*args, "--config", str(tmp_path / "all.yaml"), "--output", str(tmp_path / "b")]
    )
    assert code == 2 and not (tmp_path / "b").exists()
