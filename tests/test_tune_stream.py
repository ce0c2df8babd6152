"""hubquant tune never holds a preset whole in float: each block's matrices are
read while that block runs, and the Fisher diagonal and the choice are those
of the whole model in memory."""

from __future__ import annotations

import itertools

import families
import keras_hub
import numpy as np
import pytest

from hubquant import keras_internals as internals
from hubquant.paths import backbone_of
from hubquant.tune import tunable_plan, tune, tuning_config
from hubquant.tune.blockwise import fisher_by_block
from hubquant.tune.budget import parse_budget
from hubquant.tune.candidates import parse_candidates
from hubquant.tune.damage import matrix_variable
from hubquant.tune.fisher import fisher_diagonal
from hubquant.tune.objective import objective_for
from hubquant.tune.streamed import open_streamed


def _quiet(*args) -> None:
    pass


def _model(family: str):
    """A tiny float model of ``family``: a causal LM, or an encoder backbone."""
    from conftest import FAMILIES

    if family in FAMILIES:
        return FAMILIES[family](seed=0)
    if family == "gemma3":
        return families.gemma3_causal_lm(seed=0)
    if family == "qwen3_moe":
        backbone = families.qwen3_moe_backbone(seed=0)
        return keras_hub.models.Qwen3MoeCausalLM(backbone=backbone, preprocessor=None)
    return families.bert_backbone(seed=0)


def _tokens(model, windows: int = 3, length: int = 12) -> np.ndarray:
    vocabulary = backbone_of(model).vocabulary_size
    return np.random.default_rng(0).integers(4, min(200, vocabulary), (windows, length))


@pytest.mark.parametrize("family", ["gemma", "gemma3", "qwen3_moe", "bert"])
def test_the_fisher_of_one_block_at_a_time_is_the_whole_models(family):
    # Tied and scaled token table (gemma), sliding and global blocks (gemma3), expert
    # banks (qwen3_moe), a sentence encoder (bert); an untied head (llama3) below.
    model = _model(family)
    backbone = backbone_of(model)
    entries = [e for e in tunable_plan(model).entries if e.mode != "none"]
    variables = [matrix_variable(backbone, e) for e in entries]
    tokens, objective = _tokens(model), objective_for(model)
    whole = fisher_diagonal(model, tokens, variables, objective, report=_quiet)

    def read(entry):
        return variables[entries.index(entry)].value

    by_block = fisher_by_block(model, entries, variables, read, tokens, objective, report=_quiet)
    got = {i: f for i, _, f in by_block}
    assert sorted(got) == list(range(len(entries)))
    for i, expected in enumerate(whole):  # zero where the output never reads it (a pooler)
        scale = float(np.abs(expected).max())
        assert np.abs(got[i] - expected).max() <= 1e-4 * scale, entries[i].path
    assert sum(bool(np.any(f)) for f in whole) >= len(entries) - 1


def test_a_preset_is_read_a_block_at_a_time_and_chosen_as_in_memory(float_presets):
    preset = str(float_presets["llama3"])
    source = open_streamed(preset, tuning_config())
    reads, read = [], source.read
    source.read = lambda entry: (reads.append(entry.block), read(entry))[1]
    tokens, every, budget = _tokens(source.model), parse_candidates(None), parse_budget("0.3", None)
    streamed = tune(source, budget, tokens, every, report=_quiet)

    blocks = [key for key, _ in itertools.groupby(b for b in reads if b is not None)]
    assert blocks == [0, 1, 0]  # forward up, backward down: one block's matrices at a time
    for entry in source.plan.entries:  # nothing was kept in the model's variables
        if entry.block is not None:
            assert internals.is_unset(source.variable(entry)), entry.path

    lm = keras_hub.models.CausalLM.from_preset(preset)
    in_memory = tune(lm, budget, tokens, every, report=_quiet)
    assert [e.path for e in streamed.entries] == [e.path for e in in_memory.entries]
    assert [c.name for c in streamed.choices()] == [c.name for c in in_memory.choices()]
    np.testing.assert_allclose(streamed.damage, in_memory.damage, rtol=1e-4, atol=1e-9)
