"""Every shipped recipe leaves no float matrix behind.

For each shipped recipe, a tiny backbone of its family is quantized with the
shipped ``int4`` config; then ``backbone.weights`` (not the Plan) is searched
for float weights of rank >= 2. Each one must be a named exception below, and
all float rank >= 2 parameters together must stay under 1 % of the rank >= 2
parameters of the float model.
"""

import re

import families
import numpy as np
import pytest

import hubquant
from hubquant import synthetic
from hubquant.recipe import shipped_recipes

MAX_FLOAT_FRACTION = 0.01

# Float weights of rank >= 2 allowed to stay float, by variable path (full
# match), with the reason. They still count in the float fraction.
EXCEPTIONS = {
    # KerasHub's PositionEmbedding (GPT-2, BERT, RoBERTa, XLM-R, DistilBERT):
    # a plain Layer, not a class hubquant can replace.
    r"(.+/)?position_embedding/embeddings": "position table (PositionEmbedding)",
    # BERT's token-type table: a keras Embedding with no canonical role
    # (num_segments rows, 2 in every BERT preset).
    r"segment_embedding/embeddings": "segment table",
    # Mixture-of-experts routers (and Qwen MoE's shared-expert gate) stay float:
    # they choose experts, and the shipped configs keep them exact.
    r".+/(sparse_feedforward_gate_dense|shared_expert_gate_dense|router_dense)/kernel": "MoE router",
    # Norm scales and offsets: rank 1 everywhere today, listed for completeness.
    r".+/(scale|gamma|beta)": "norm",
    # Biases are added, not multiplied; hubquant keeps every bias float.
    # EinsumDense biases of attention projections are (heads, head_dim).
    r".+/bias": "bias of a quantized projection",
    # gpt-oss expert banks: one bias per expert and output channel.
    r".+/experts/(gate_up|down)_proj_bias": "bias of a quantized expert bank",
}

# A quantized layer's float multipliers: per output channel (int8) or per
# group (int4). Not weights; each must sit beside the integer codes it scales.
SCALE = re.compile(r"(?P<layer>.+)/(?P<matrix>\w+)_scale")

# Gemma and Llama at the matrix shapes of tests/families.py (fewer compiles);
# Gemma's intermediate_dim is split between its two gating projections.
SHAPES = dict(hidden_dim=128, num_query_heads=4, num_key_value_heads=2)
BUILDERS = {
    "gemma": lambda: (
        synthetic.gemma_causal_lm(seed=0, **SHAPES, head_dim=32, intermediate_dim=640).backbone
    ),
    "llama3": lambda: synthetic.llama3_causal_lm(seed=0, **SHAPES, intermediate_dim=320).backbone,
    **{name: (lambda name=name: families.fresh_backbone(name)) for name in families.BUILDERS},
}


def _float_rank2(backbone) -> list:
    return [v for v in backbone.weights if len(v.shape) >= 2 and "float" in str(v.dtype)]


def _size(variable) -> int:
    return int(np.prod(variable.shape))


def test_every_shipped_recipe_has_a_tiny_backbone():
    assert set(shipped_recipes()) <= set(BUILDERS)


FAMILIES = sorted(shipped_recipes())


@pytest.mark.parametrize("family", FAMILIES)
def test_int4_leaves_no_float_matrix_but_the_named_exceptions(family):
    if family not in BUILDERS:
        pytest.fail(f"no tiny backbone for shipped recipe '{family}': add one to families.BUILDERS")
    backbone = BUILDERS[family]()
    total = sum(_size(v) for v in _float_rank2(backbone))
    plan = hubquant.quantize(backbone, "int4")
    assert plan.recipe == family

    paths = {v.path for v in backbone.weights}
    left, floats = [], {}
    for v in _float_rank2(backbone):
        scale = SCALE.fullmatch(v.path)
        if scale is not None:
            codes = f"{scale['layer']}/{scale['matrix']}_codes"
            assert codes in paths, f"{v.path}: a scale without codes"
            continue
        reason = next((why for pat, why in EXCEPTIONS.items() if re.fullmatch(pat, v.path)), None)
        if reason is None:
            left.append(f"{v.path} {tuple(v.shape)}")
            reason = "NOT EXCEPTED"
        floats[reason] = floats.get(reason, 0) + _size(v)

    float_params = sum(floats.values())
    fraction = float_params / total
    detail = ", ".join(f"{why} {n}" for why, n in sorted(floats.items())) or "none"
    print(
        f"\n{family}: float fraction of rank>=2 parameters {fraction:.4%} "
        f"({float_params} of {total}; {detail})"
    )
    assert not left, f"float matrices left unquantized: {left}"
    assert fraction <= MAX_FLOAT_FRACTION, f"{family}: float fraction {fraction:.4%}"
