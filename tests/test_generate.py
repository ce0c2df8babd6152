"""Calibration without a corpus: text the float model generates itself, seeded,
batched, in the vocabulary; the shipped GPTQ config runs with no other flag."""

from __future__ import annotations

import json
from pathlib import Path

import keras_hub
import numpy as np
import pytest

import hubquant
from hubquant import synthetic
from hubquant.calibrate.generate import Generate, generated_tokens
from hubquant.cli import main
from hubquant.config import load_config, parse_config
from hubquant.errors import ConfigError, HubquantError

SHIPPED = Path(__file__).parent.parent / "configs" / "int4_gptq.yaml"
SMALL = "generate: {num_samples: 256, seq_len: 64, temperature: 1.0}"


@pytest.fixture(scope="module")
def llama():
    return synthetic.llama3_causal_lm(seed=0)


def _generate(model, seed: int, **counts) -> np.ndarray:
    gen = Generate(**{"num_samples": 5, "seq_len": 12, "batch_size": 4, **counts})
    return generated_tokens(model, gen, seed, report=lambda line: None)


def test_same_seed_same_tokens_of_the_requested_shape_in_the_vocabulary(llama):
    tokens = _generate(llama, seed=3)
    assert tokens.shape == (5, 12) and tokens.dtype == np.int32
    assert 0 <= tokens.min() and tokens.max() < llama.backbone.vocabulary_size
    np.testing.assert_array_equal(_generate(llama, seed=3), tokens)
    assert (_generate(llama, seed=4) != tokens).any()


def test_windows_are_the_start_ids_then_what_the_model_writes_after_its_prompt(llama):
    """Near zero temperature the sampler takes the most likely token: after the
    model's start ids, each window's tokens are then the float model's argmax
    after the start ids, the prompt and the window so far (the prompt itself is
    not in the window)."""
    from hubquant.calibrate.generate import prompt_ids

    start = llama.preprocessor.tokenizer.start_token_id
    prompts = prompt_ids(llama)
    assert all(p[0] == start for p in prompts)
    gen = Generate(num_samples=2, seq_len=6, temperature=1e-4, batch_size=2)
    tokens = generated_tokens(llama, gen, 0, report=lambda line: None)
    assert (tokens[:, 0] == start).all()
    for row, prompt in enumerate(prompts[:2]):
        _assert_argmax_after(llama, prompt, tokens[row, 1:])


def _assert_argmax_after(model, prompt: list[int], written: np.ndarray) -> None:
    """``written`` is, token by token, ``model``'s argmax after ``prompt`` and
    what it wrote before."""
    ids = np.array([prompt + written.tolist()], "int32")
    logits = np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))[0]
    np.testing.assert_array_equal(logits[len(prompt) - 1 : -1].argmax(-1), written)


def test_gemma3_generates_its_own_text_after_its_bos():
    """Gemma 3's generate step also returns ``images`` (None for text), which
    KerasHub's ``generate`` cannot stack: the compiled step is called itself."""
    from families import gemma3_causal_lm

    lm = gemma3_causal_lm(seed=0)
    tokens = _generate(lm, seed=1, num_samples=3, seq_len=8)
    assert tokens.shape == (3, 8)
    assert (tokens[:, 0] == lm.preprocessor.tokenizer.start_token_id).all()
    assert 0 <= tokens.min() and tokens.max() < lm.backbone.vocabulary_size


def test_prompts_open_the_samples_in_turn_and_are_not_in_the_windows(llama):
    """A config's ``prompts`` replace the neutral ones: each sample continues
    its own prompt (near zero temperature: the float model's argmax after it)."""
    text = "calibration: {generate: {prompts: ['the quick', brown]}}\n"
    gen = parse_config(text, "c.yaml").calibration.generate
    assert gen.prompts == ("the quick", "brown")
    gen = Generate(num_samples=3, seq_len=5, temperature=1e-4, batch_size=3, prompts=gen.prompts)
    tokens = generated_tokens(llama, gen, 0, report=lambda line: None)
    from hubquant.calibrate.generate import prompt_ids

    prompts = prompt_ids(llama, texts=gen.prompts)
    assert len(prompts) == 2 and prompts[0] != prompts[1]
    for row, prompt in enumerate([*prompts, prompts[0]]):
        _assert_argmax_after(llama, prompt, tokens[row, 1:])
    np.testing.assert_array_equal(tokens[0], tokens[2])


def test_batches_report_progress_and_a_partial_batch_is_cut(llama):
    lines = []
    gen = Generate(num_samples=5, seq_len=8, batch_size=2)
    tokens = generated_tokens(llama, gen, 0, report=lines.append)
    assert tokens.shape == (5, 8)
    assert [line.split(" (")[0] for line in lines] == [
        f"generated calibration text: {n}/5 samples of 8 tokens" for n in (2, 4, 5)
    ]


def test_generate_section_defaults_and_counts_from_the_section():
    cal = parse_config("calibration: {seq_len: 32}\n", "c.yaml").calibration
    assert cal.generate == Generate(num_samples=256, seq_len=32, temperature=1.0, batch_size=32)
    text = "calibration: {num_samples: 8, generate: {num_samples: 2, temperature: 0.5}}\n"
    cal = parse_config(text, "c.yaml").calibration
    assert cal.generate == Generate(num_samples=2, seq_len=64, temperature=0.5)
    shipped = load_config("int4_gptq")
    assert shipped.calibration.files == ()
    assert shipped.calibration.generate == Generate(num_samples=256, seq_len=64)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "{generate: {num_samples: 0}}",
            "key 'generate.num_samples': expected a positive integer. "
            "Received: generate.num_samples=0",
        ),
        (
            "{generate: {seq_len: -4}}",
            "key 'generate.seq_len': expected a positive integer. Received: generate.seq_len=-4",
        ),
        (
            "{generate: {temperature: 0}}",
            "key 'generate.temperature': expected a number > 0 (1.0 samples the model's own "
            "distribution). Received: generate.temperature=0",
        ),
        (
            "{generate: {temperature: .inf}}",
            "key 'generate.temperature': expected a number > 0 (1.0 samples the model's own "
            "distribution). Received: generate.temperature=inf",
        ),
        (
            "{generate: {samples: 4}}",
            "key 'generate.samples': unknown key; expected one of num_samples, seq_len, "
            "temperature, batch_size, prompts. Received: generate.samples=4",
        ),
        (
            "{generate: 4}",
            "key 'generate': expected a mapping with keys num_samples, seq_len, temperature, "
            "batch_size, prompts. Received: generate=4",
        ),
        (
            "{generate: {prompts: []}}",
            "key 'generate.prompts': expected a list of 1 to 256 strings of at most 400 "
            "characters. Received: generate.prompts=[]",
        ),
        (
            "{generate: {prompts: [The, 3]}}",
            "key 'generate.prompts': expected a list of 1 to 256 strings of at most 400 "
            "characters. Received: generate.prompts=['The', 3]",
        ),
    ],
)
def test_generate_section_errors(section, message):
    with pytest.raises(ConfigError) as info:
        parse_config(f"calibration: {section}\n", "c.yaml")
    assert str(info.value) == f"c.yaml: calibration: {message}"


def _small_shipped(tmp_path: Path) -> Path:
    """configs/int4_gptq.yaml as shipped, but for a few short samples."""
    text = SHIPPED.read_text()
    assert SMALL in text
    path = tmp_path / "int4_gptq.yaml"
    path.write_text(text.replace(SMALL, "generate: {num_samples: 6, seq_len: 24}"))
    return path


def test_shipped_gptq_config_self_calibrates_a_preset(tmp_path, float_presets, capsys):
    """No calibration files: the streamed apply generates text with the float
    model and gives the same weights as quantizing the float model in memory."""
    config = _small_shipped(tmp_path)
    preset = str(float_presets["llama3"])
    report = tmp_path / "report.json"
    args = ["apply", "--preset", preset, "--config", str(config), "--output", str(tmp_path / "o")]
    assert main([*args, "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "generated calibration text: 6/6 samples of 24 tokens" in out
    assert "note:" not in out  # the shipped config is quiet
    _assert_time_split(json.loads(report.read_text()), out)
    streamed = hubquant.load(tmp_path / "o")
    in_memory = keras_hub.models.CausalLM.from_preset(preset)
    applied = hubquant.quantize(in_memory, load_config(config))
    assert {e.algorithm for e in applied.quantized if e.block is not None} == {"gptq"}
    for a, b in zip(streamed.backbone.weights, in_memory.backbone.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def _assert_time_split(report: dict, out: str) -> None:
    """The report charges generating the text and running the blocks on it to
    rows of their own, not to the first role of each block; the total is the
    whole of the roles' time and theirs."""
    other = report["other_seconds"]
    assert set(other) == {"calibration text", "running blocks", "reading weights"}
    assert all(t > 0 for t in other.values())
    roles = [row["seconds"] for row in report["roles"].values() if row["seconds"] is not None]
    assert report["total"]["seconds"] == pytest.approx(sum(roles) + sum(other.values()))
    table = {line.split()[0] for line in out.splitlines() if line.endswith("s")}
    assert {"calibration", "running", "reading", "total"} <= table


def test_a_model_that_cannot_generate_is_refused_in_one_line(llama):
    config = parse_config("default: {mode: int4, group_size: 32, algorithm: gptq}\n", "c.yaml")
    backbone = synthetic.llama3_causal_lm(seed=0).backbone
    with pytest.raises(HubquantError) as info:
        hubquant.quantize(backbone, config)
    assert str(info.value) == (
        "no calibration files are given, so hubquant would generate calibration text with "
        "the model, but it is a bare backbone (Llama3Backbone), without tokenizer or LM head; "
        "give text files (--calibration FILE, or 'files:' in the config's calibration "
        "section) or a task preset (a CausalLM)."
    )
    bare_task = type(llama)(backbone=llama.backbone, preprocessor=None)
    with pytest.raises(HubquantError, match="it is a Llama3CausalLM without a tokenizer;"):
        _generate(bare_task, seed=0)


def test_hugging_face_folder_self_calibrates_while_streaming(fresh, tmp_path):
    from hubquant import stream
    from hubquant.float_preset import load_source

    folder = tmp_path / "hf"
    fresh("llama3").export_to_transformers(str(folder))
    config = load_config(_small_shipped(tmp_path))
    pending = stream.prepare(str(folder), config)
    model, plan = stream.read(pending, calibration=config.calibration)
    reference = load_source(str(folder))
    assert hubquant.quantize(reference, config).entries == plan.entries
    for a, b in zip(model.backbone.weights, reference.backbone.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
