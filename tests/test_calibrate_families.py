"""GPTQ and AWQ block by block on every decoder family with a recipe (slow)."""

from __future__ import annotations

import families
import numpy as np
import pytest

import hubquant
from hubquant import synthetic
from hubquant.config import parse_config

DECODERS = ["mistral", "qwen", "qwen3", "gemma3", "phi3", "smollm3", "gpt2", "qwen3_moe"]
CONFIG = (
    "default: {{mode: int4, group_size: 32, algorithm: {algorithm}}}\n"
    "rules:\n  - match: {{role: 'embed*'}}\n    mode: none\n"
    "  - match: {{role: lm_head}}\n    mode: none\n"
    "  - match: {{role: 'moe.*router'}}\n    mode: none\n"
)


def _error(name, algorithm, tokens, held_out):
    backbone = families.fresh_backbone(name)
    synthetic.add_activation_outliers(backbone, seed=0)
    reference = np.asarray(backbone(held_out))
    config = parse_config(CONFIG.format(algorithm=algorithm), "c.yaml")
    plan = hubquant.apply_plan(backbone, hubquant.plan_for(backbone, config), calibration=tokens)
    got = np.asarray(backbone(held_out))
    return float(np.mean((got - reference) ** 2) / np.mean(reference**2)), plan


@pytest.mark.slow
@pytest.mark.parametrize("name", DECODERS)
def test_gptq_runs_block_by_block_and_beats_rtn(name):
    rng = np.random.default_rng(0)
    # 16 positions: the tiny GPT-2 has a 16-position table.
    tokens = rng.integers(4, families.VOCAB, (32, 16)).astype("int32")
    held = rng.integers(4, families.VOCAB, (2, 16)).astype("int32")
    held_out = {"token_ids": held, "padding_mask": np.ones_like(held)}
    rtn, _ = _error(name, "rtn", tokens, held_out)
    gptq, plan = _error(name, "gptq", tokens, held_out)
    assert np.isfinite(gptq) and gptq < rtn
    projections = ("QuantDense", "QuantEinsumDense")
    calibrated = {e.algorithm for e in plan.quantized if e.layer in projections}
    assert calibrated == {"gptq"}
