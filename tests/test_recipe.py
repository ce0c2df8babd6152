"""Recipes: shipped ones parse and fit KerasHub; bad ones fail with exact text."""

import pytest
import yaml

from hubquant import recipe as recipe_module
from hubquant.config import KNOWN_ROLES
from hubquant.errors import RecipeError
from hubquant.recipe import (
    Recipe,
    RoleSpec,
    get_recipe,
    load_recipe,
    load_recipes,
    parse_recipe,
    recipe_for_backbone,
    shipped_recipes,
)

GOOD = """\
name: toy
description: a toy
backbones: [ToyBackbone]
blocks: transformer_layers
roles:
  attn.q: {path: attention.query, hf: "layers.{block}.q"}
  embed: {path: token_embedding, scope: backbone, hf: embed}
  lm_head: {path: token_embedding, scope: backbone, part: reverse}
"""
DECODER_ROLES = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up"]
DECODER_ROLES += ["mlp.down", "embed", "lm_head"]


def error(text: str) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def role_error(spec: str, role: str = "attn.q") -> str:
    return error(f"name: toy\nbackbones: [T]\nblocks: b\nroles:\n  {role}: {spec}\n")


def test_parse_fills_defaults():
    recipe = parse_recipe(GOOD, "r.yaml")
    assert recipe.name == "toy" and recipe.backbones == ("ToyBackbone",)
    assert recipe.hf_model_type is None and recipe.text == GOOD
    assert recipe.roles == (
        RoleSpec("attn.q", "attention.query", "block", "layers.{block}.q", None),
        RoleSpec("embed", "token_embedding", "backbone", "embed"),
        RoleSpec("lm_head", "token_embedding", "backbone", None, None, "reverse"),
    )


def test_to_dict_round_trips():
    recipe = parse_recipe(GOOD, "r.yaml")
    again = parse_recipe(yaml.safe_dump(recipe.to_dict()), "again.yaml")
    assert again.roles == recipe.roles and again.backbones == recipe.backbones
    assert recipe.to_dict()["roles"]["embed"] == {
        "path": "token_embedding",
        "scope": "backbone",
        "hf": "embed",
        "part": "forward",
    }


def test_shipped_recipes_parse_and_cover_decoder_roles():
    recipes = shipped_recipes()
    assert {"gemma", "llama3", "mistral", "qwen", "qwen3", "mixtral", "bert"} <= set(recipes)
    for recipe in (recipes["gemma"], recipes["llama3"]):
        assert [spec.role for spec in recipe.roles] == DECODER_ROLES
        assert recipe.blocks == "transformer_layers"
        lm_head = recipe.roles[-1]
        assert (lm_head.scope, lm_head.path, lm_head.part) == (
            "backbone",
            "token_embedding",
            "reverse",
        )
    gemma = {spec.role: spec for spec in recipes["gemma"].roles}
    assert gemma["mlp.gate"].path == "gating_ffw"
    assert gemma["mlp.up"].path == "gating_ffw_2"
    assert gemma["attn.o"].hf == "model.layers.{block}.self_attn.o_proj"


def test_recipe_for_backbone_follows_the_mro():
    gemma = recipe_for_backbone(["GemmaBackbone", "Backbone", "Model"])
    assert gemma.name == "gemma"
    subclass = ["MyGemmaBackbone", "GemmaBackbone", "Backbone", "Model"]
    assert recipe_for_backbone(subclass).name == "gemma"
    llama3 = ["Llama3Backbone", "LlamaBackbone", "Backbone"]
    assert recipe_for_backbone(llama3).name == "llama3"


def test_recipe_for_unknown_backbone_says_what_is_known():
    with pytest.raises(RecipeError) as info:
        recipe_for_backbone(["T5Backbone", "Backbone"])
    message = str(info.value)
    assert message.startswith("no recipe for backbone T5Backbone: known recipes serve [")
    assert "'GemmaBackbone'" in message and "'MixtralBackbone'" in message
    assert message.endswith("]. Pass --recipe FILE.yaml to use your own.")


def test_extra_recipe_wins_and_must_fit():
    toy = parse_recipe(GOOD, "toy.yaml")
    assert recipe_for_backbone(["ToyBackbone", "Backbone"], extra=toy) is toy
    with pytest.raises(RecipeError) as info:
        recipe_for_backbone(["GemmaBackbone"], extra=toy)
    assert str(info.value) == (
        "toy.yaml: recipe 'toy' serves ToyBackbone, not backbone GemmaBackbone. "
        "Received: backbones=['ToyBackbone']"
    )


def test_duplicate_backbone_claim_names_both_files(tmp_path, monkeypatch):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(GOOD)
    second.write_text(GOOD.replace("name: toy", "name: other"))
    with pytest.raises(RecipeError) as info:
        load_recipes([first, second])
    assert str(info.value) == (
        f"recipes {first} and {second} both serve backbone ToyBackbone: "
        "each backbone needs one recipe"
    )
    shipped = {"a": first, "b": second}
    monkeypatch.setattr(recipe_module, "shipped_files", lambda kind: shipped)
    with pytest.raises(RecipeError, match="both serve backbone ToyBackbone"):
        recipe_for_backbone(["ToyBackbone"])


def test_duplicate_name_is_an_error(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(GOOD)
    second.write_text(GOOD.replace("ToyBackbone", "OtherBackbone"))
    with pytest.raises(RecipeError, match="share the name 'toy'"):
        load_recipes([first, second])


def test_get_recipe_by_name_or_path(tmp_path):
    assert get_recipe("gemma").name == "gemma"
    assert get_recipe("llama3.yaml").name == "llama3"
    path = tmp_path / "toy.yaml"
    path.write_text(GOOD)
    assert get_recipe(path).source == str(path) == load_recipe(path).source
    with pytest.raises(RecipeError) as info:
        get_recipe("gemma9")
    shipped = ", ".join(shipped_recipes())
    assert str(info.value) == (
        f"recipe 'gemma9' not found: not a file and not a known recipe (known: {shipped})"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "name: [toy\n",
            "r.yaml: line 2, column 1: invalid YAML: expected ',' or ']', but got "
            "'<stream end>'. Received: text=''",
        ),
        (
            GOOD + "extra: 1\n",
            "r.yaml: key 'extra': unknown key; expected one of name, description, "
            "backbones, blocks, hf_model_type, roles. Received: extra=1",
        ),
        (
            GOOD.replace("name: toy", "name: 3"),
            "r.yaml: key 'name': expected a non-empty string. Received: name=3",
        ),
        (
            GOOD.replace("[ToyBackbone]", "[]"),
            "r.yaml: key 'backbones': expected a non-empty list of KerasHub "
            "backbone class names. Received: backbones=[]",
        ),
        (
            GOOD.replace("[ToyBackbone]", "ToyBackbone"),
            "r.yaml: key 'backbones': expected a non-empty list of KerasHub "
            "backbone class names. Received: backbones='ToyBackbone'",
        ),
        (
            GOOD.replace("blocks: transformer_layers", "blocks: 'a b'"),
            "r.yaml: key 'blocks': expected a dotted attribute path such as "
            "'attention.query_dense'. Received: blocks='a b'",
        ),
        (
            "name: !!python/name:os.system\n",
            "r.yaml: line 1, column 7: invalid YAML: could not determine a constructor for "
            "the tag 'tag:yaml.org,2002:python/name:os.system'. "
            "Received: text='name: !!python/name:os.system'",
        ),
    ],
)
def test_recipe_errors(text, message):
    assert error(text) == message


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "{path: q, pth: q}",
            "r.yaml: role 'attn.q': key 'pth': unknown key; expected one of path, "
            "scope, hf, layer, part, matrices, optional, input_norm, input_from. Received: pth='q'",
        ),
        (
            "{hf: x}",
            "r.yaml: role 'attn.q': key 'path': expected a dotted attribute path "
            "such as 'attention.query_dense'. Received: path=None",
        ),
        (
            "q",
            "r.yaml: role 'attn.q': expected a mapping with keys path, scope, hf, "
            "layer, part, matrices, optional, input_norm, input_from. Received: attn.q='q'",
        ),
        (
            "{path: q, scope: model}",
            "r.yaml: role 'attn.q': key 'scope': expected one of block, backbone. "
            "Received: scope='model'",
        ),
        (
            "{path: q, layer: QuantConv}",
            "r.yaml: role 'attn.q': key 'layer': expected one of QuantDense, "
            "QuantEinsumDense, QuantEmbedding, QuantReversibleEmbedding. "
            "Received: layer='QuantConv'",
        ),
        (
            "{path: q, part: backward}",
            "r.yaml: role 'attn.q': key 'part': expected one of forward, reverse. "
            "Received: part='backward'",
        ),
        (
            "{path: q, hf: model.q_proj}",
            "r.yaml: role 'attn.q': key 'hf': expected a tensor name with a "
            "'{block}' placeholder. Received: hf='model.q_proj'",
        ),
        (
            "{path: q, scope: backbone, hf: 'l.{block}.q'}",
            "r.yaml: role 'attn.q': key 'hf': expected a tensor name without "
            "placeholders (scope backbone). Received: hf='l.{block}.q'",
        ),
    ],
)
def test_role_errors(spec, message):
    assert role_error(spec) == message


def test_unknown_role_is_an_error():
    assert role_error("{path: q}", role="atn.q") == (
        "r.yaml: role 'atn.q': unknown role: expected one of "
        f"{', '.join(KNOWN_ROLES)}. Received: role='atn.q'"
    )


def test_two_roles_on_one_layer_is_an_error():
    text = GOOD.replace("part: reverse", "part: forward")
    assert error(text) == (
        "r.yaml: role 'lm_head': key 'path': expected a layer no other role uses "
        "(role 'embed' does). Received: path='token_embedding'"
    )


def test_missing_recipe_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"recipe file '{path}' not found. Received: path='{path}'"


def test_recipe_is_frozen():
    recipe: Recipe = parse_recipe(GOOD, "r.yaml")
    with pytest.raises(AttributeError):
        recipe.name = "other"
