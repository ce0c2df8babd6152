"""``hubquant recipes validate`` and ``hubquant recipes new``, offline."""

import json

import families
import pytest
import yaml

import hubquant
from hubquant import cli
from hubquant.recipe import parse_recipe, shipped_recipes
from hubquant.recipe_draft import draft_for, tiny_config

# Llama 3.2 1B's Hugging Face config: a real size, built tiny by `recipes new`.
LLAMA_HF = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "tie_word_embeddings": True,
    "rope_theta": 500000.0,
}


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def entries(plan) -> set:
    return {(e.path, e.matrix, e.mode, e.group_size) for e in plan.entries}


def test_validate_every_shipped_recipe(capsys):
    for recipe in shipped_recipes().values():
        code, out, err = run(capsys, "recipes", "validate", recipe.source)
        assert (code, err) == (0, "") and len(out.splitlines()) == 1
        assert out.startswith(f"OK {recipe.source}: recipe '{recipe.name}' for ")


@pytest.mark.parametrize(
    "role, fragment",
    [
        ("attn.q: {path: a, layer: QuantConv}", "key 'layer': expected one of QuantDense,"),
        ("attn.query: {path: a}", "unknown role: expected one of attn.q,"),
        ("attn.q: {path: a, bits: 4}", "bits"),
    ],
)
def test_validate_refuses_a_bad_recipe_with_one_line(capsys, tmp_path, role, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nbackbones: [BadBackbone]\nblocks: layers\nroles:\n  {role}\n")
    code, out, err = run(capsys, "recipes", "validate", path)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"hubquant: error: {path}: ") and fragment in err


def test_new_from_a_saved_preset_validates_and_resolves_the_shipped_plan(
    capsys, tmp_path, float_presets, fresh
):
    preset = float_presets["llama3"]
    for source in (preset, preset / "config.json"):
        code, out, err = run(capsys, "recipes", "new", source)
        assert (code, err) == (0, "")
        assert "backbones: [Llama3Backbone]\nblocks: transformer_layers\n" in out
        path = tmp_path / "draft.yaml"
        path.write_text(out)
        code, ok, _ = run(capsys, "recipes", "validate", path)
        assert code == 0 and ok.startswith(f"OK {path}: recipe 'llama3' for Llama3Backbone")
    model = fresh("llama3")
    draft = parse_recipe(out, "draft.yaml")
    assert entries(hubquant.plan_for(model, "int4", draft)) == entries(
        hubquant.plan_for(model, "int4")
    )


def test_new_from_a_hugging_face_config_builds_it_tiny(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_HF))
    code, out, err = run(capsys, "recipes", "new", tmp_path / "config.json")
    assert (code, err) == (0, "")
    data = yaml.safe_load(out)
    assert data["hf_model_type"] == "llama" and data["backbones"] == ["Llama3Backbone"]
    roles = data["roles"]
    assert list(roles) == [
        *("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.gate", "mlp.down"),
        *("embed", "lm_head"),
    ]
    assert roles["mlp.gate"] == {"path": "_feedforward_gate_dense"}
    assert roles["lm_head"] == {"path": "token_embedding", "scope": "backbone", "part": "reverse"}


def test_tiny_config_shrinks_sizes_and_keeps_structure():
    config = {
        "num_layers": 24,
        "num_query_heads": 32,
        "num_key_value_heads": 32,
        "hidden_dim": 4096,
        "layer_types": ["sliding", "full"] * 12,
        "num_experts": 128,
        "top_k": 8,
    }
    tiny = tiny_config(config)
    assert tiny["num_layers"] == 4 and tiny["layer_types"] == ["sliding", "full"] * 2
    assert tiny["num_query_heads"] == tiny["num_key_value_heads"] == 4  # still MHA
    assert (tiny["hidden_dim"], tiny["num_experts"], tiny["top_k"]) == (64, 4, 2)
    gqa = tiny_config({**config, "num_key_value_heads": 1})
    assert gqa["num_key_value_heads"] == 1


@pytest.mark.parametrize("family", sorted(families.BUILDERS))
def test_draft_of_every_family_resolves_the_shipped_plan(family):
    """The guessed roles land on the same layers as the shipped recipe's."""
    backbone = families.fresh_backbone(family)
    draft = parse_recipe(draft_for(backbone), f"{family} draft")
    assert entries(hubquant.plan_for(backbone, "int4", draft)) == entries(
        hubquant.plan_for(backbone, "int4")
    )
