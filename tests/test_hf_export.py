"""Export to Hugging Face transformers in compressed-tensors format, checked by loading it."""

import json

import families
import keras_hub
import numpy as np
import pytest
from conftest import logits

import hubquant
from hubquant import cli
from hubquant.config import parse_config
from hubquant.errors import HubquantError
from hubquant.io.hf_export import export_hf, pack_int32
from hubquant.layers import native

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ct_helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")


def symmetric_int4(group_size):
    return parse_config(
        f"default: {{mode: int4, group_size: {group_size}, symmetric: true}}\n"
        "rules:\n  - match: {role: 'embed*'}\n    mode: int8\n"
        "  - match: {role: lm_head}\n    mode: int8\n",
        f"sym-g{group_size}",
    )


def _reimport_bound(ours) -> float:
    """How far a re-imported model's logits may be from the exported one's: float
    rounding, where its int8 token table came back float (dequantized) for a tied
    head; on AMX tiles the int8 head's product keeps about 15 bits of its input."""
    return (2e-5 if native.amx() else 1e-6) * float(np.abs(ours).max())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_packing_matches_compressed_tensors(bits, axis):
    rng = np.random.default_rng(bits + axis)
    values = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (13, 37)).astype(np.int8)
    theirs = ct_helpers.pack_to_int32(torch.from_numpy(values), bits, packed_dim=axis).numpy()
    np.testing.assert_array_equal(pack_int32(values, bits, axis), theirs)


def hf_logits(folder, token_ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(token_ids, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize(
    "family,config",
    [("gemma", symmetric_int4(32)), ("llama3", "int8")],
    ids=["gemma-int4", "llama3-int8"],
)
def test_transformers_loads_the_export_and_agrees(family, config, fresh, inputs, tmp_path):
    lm = fresh(family)
    plan = hubquant.quantize(lm, config)
    hubquant.save(lm, tmp_path / "out", formats=("hf",))
    folder = tmp_path / "out" / "hf"
    ours = logits(lm, inputs)
    np.testing.assert_allclose(hf_logits(folder, inputs["token_ids"]), ours, atol=1e-4, rtol=0)
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    targets = {t for g in qc["config_groups"].values() for t in g["targets"]}
    assert targets == {e.hf for e in plan.quantized if e.matrix != "embeddings"}
    assert "model.layers.0.self_attn.q_proj" in targets


def asymmetric_int4(group_size, lm_head="none"):
    return parse_config(
        f"default: {{mode: int4, group_size: {group_size}, symmetric: false}}\n"
        "rules:\n  - match: {role: 'embed*'}\n    mode: none\n"
        f"  - match: {{role: lm_head}}\n    mode: {lm_head}\n",
        f"asym-g{group_size}",
    )


@pytest.mark.parametrize(
    "family,config",
    [("gemma", asymmetric_int4(32)), ("llama3", asymmetric_int4(-1, lm_head="int8"))],
    ids=["gemma-g32", "llama3-channel-int8-head"],
)
def test_asymmetric_int4_export_loads_in_transformers_and_imports(
    family, config, fresh, inputs, tmp_path
):
    """Zero points packed along the output axis, zero-padded to [out, groups]
    rows: the shape transformers 5.24 gives the parameter before loading."""
    from safetensors.numpy import load_file

    lm = fresh(family)
    hubquant.quantize(lm, config)
    export_hf(lm, tmp_path)
    ours = logits(lm, inputs)
    theirs = hf_logits(tmp_path, inputs["token_ids"])
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.99
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()
    tensors = load_file(tmp_path / "model.safetensors")
    q_proj = "model.layers.0.self_attn.q_proj"
    zero = tensors[f"{q_proj}.weight_zero_point"]
    assert zero.dtype == np.int32 and zero.shape[0] == tensors[f"{q_proj}.weight_shape"][0]
    back = hubquant.load(tmp_path)
    np.testing.assert_allclose(logits(back, inputs), ours, rtol=0, atol=_reimport_bound(ours))


TASKS = {
    "mistral": keras_hub.models.MistralCausalLM,
    "qwen": keras_hub.models.QwenCausalLM,  # untied LM head, q/k/v biases
    "qwen3": keras_hub.models.Qwen3CausalLM,  # tied table, q/k norms: hubquant's own mapping
}


def family_lm(name):
    """A tiny float task of a family from ``tests/families.py`` (no tokenizer)."""
    return TASKS[name](backbone=families.fresh_backbone(name), preprocessor=None)


def assert_agrees(theirs, ours):
    """Top-1 agreement >= 99 % and max error under 1e-3 of the logits' range."""
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.99
    assert np.abs(theirs - ours).max() <= 1e-3 * np.abs(ours).max()


@pytest.mark.parametrize("family", sorted(TASKS))
def test_more_families_export_transformers_agrees_and_import_is_equal(family, inputs, tmp_path):
    lm = family_lm(family)
    plan = hubquant.quantize(lm, symmetric_int4(32))
    export_hf(lm, tmp_path)
    ours = logits(lm, inputs)
    assert_agrees(hf_logits(tmp_path, inputs["token_ids"]), ours)
    # Imported back: the same quantized Linears; an int8 token table comes back
    # float (dequantized), so a tied head differs by float rounding only.
    back = hubquant.load(tmp_path)
    assert type(back).__name__ == type(lm).__name__
    linears = {e.hf: e.mode for e in plan.quantized if e.matrix != "embeddings"}
    assert {e.hf: e.mode for e in back.backbone.hubquant_plan.quantized} == linears
    np.testing.assert_allclose(logits(back, inputs), ours, rtol=0, atol=_reimport_bound(ours))
    config = json.loads((tmp_path / "config.json").read_text())
    targets = {
        t for g in config["quantization_config"]["config_groups"].values() for t in g["targets"]
    }
    assert targets == {e.hf for e in plan.quantized if e.matrix != "embeddings"}


def test_family_without_mapping_is_named(tmp_path):
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=64,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=32,
        intermediate_dim=64,
    )
    hubquant.quantize(backbone, "int8")
    with pytest.raises(HubquantError, match="no Hugging Face export mapping for LlamaBackbone"):
        export_hf(backbone, tmp_path)


def test_cli_export_from_a_saved_preset(fresh, inputs, tmp_path, capsys):
    lm = fresh("gemma")
    hubquant.quantize(lm, "int8")
    hubquant.save(lm, tmp_path / "q")
    assert (
        cli.main(["export", str(tmp_path / "q"), "--to", "hf", "--output", str(tmp_path / "hf")])
        == 0
    )
    np.testing.assert_allclose(
        hf_logits(tmp_path / "hf", inputs["token_ids"]), logits(lm, inputs), atol=1e-4, rtol=0
    )
