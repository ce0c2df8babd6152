"""The command line end to end (every bad input is a row of tests/test_bad_input.py)."""

import json
import os
import subprocess
import sys

import pytest

from hubquant import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def apply(capsys, preset, config, output, *extra):
    """``hubquant apply --preset P --config C --output O [extra]``, in process."""
    args = ["apply", "--preset", str(preset), "--config", str(config), "--output", str(output)]
    return run(capsys, *args, *extra)


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubquant: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, tmp_path, float_presets):
    out = tmp_path / "o"
    code, stdout, _ = apply(capsys, str(float_presets["llama3"]), "mixed", str(out), "--dry-run")
    assert code == 0
    assert "transformer_layer_0/self_attention/query" in stdout and "attn.q" in stdout
    assert "quantized layers (recipe llama3)" in stdout
    assert not out.exists()


def test_configs_and_recipes_listing(capsys):
    code, out, _ = run(capsys, "configs", "list")
    assert code == 0 and {"encoder_int4", "int4", "int4_gptq", "int8", "mixed"} <= {
        line.split()[0] for line in out.splitlines()
    }
    assert run(capsys, "configs") == (0, out, "")  # no verb: the list
    names = {line.split()[0] for line in run(capsys, "recipes")[1].splitlines()}
    assert {"gemma", "llama3"} <= names
    code, out, _ = run(capsys, "recipes", "show", "gemma")
    assert code == 0 and "GemmaBackbone" in out
    code, _, err = run(capsys, "recipes", "show", "gpt9")
    assert_one_line_error(code, err, "recipe 'gpt9' not found")


def _cli(*args, cwd):
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    return subprocess.run(
        [sys.executable, "-m", "hubquant.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_end_to_end_in_a_fresh_process(tmp_path, float_presets, inputs):
    import numpy as np

    import hubquant

    out = tmp_path / "q"
    result = _cli(
        "apply",
        "--preset",
        str(float_presets["gemma"]),
        "--config",
        "int4",
        "--output",
        str(out),
        "--format",
        "preset,keras",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout and f"wrote {out}" in result.stdout
    assert result.stderr == ""
    a, b = hubquant.load(out), hubquant.load(out / "model.keras")
    assert np.array_equal(np.asarray(a(inputs)), np.asarray(b(inputs)))
    assert a.generate("the sea", max_length=10).startswith("the sea")


@pytest.mark.slow
def test_cli_error_in_a_fresh_process_has_no_traceback(tmp_path):
    result = _cli("apply", "--config", "int5", "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "hubquant: error: config 'int5' not found: not a file and not a shipped config "
        "(shipped: encoder_int4, int4, int4_gptq, int8, mixed)"
    )


def test_report_json_has_roles_and_totals(capsys, tmp_path, float_presets):
    report = tmp_path / "report.json"
    code, _, _ = apply(
        capsys,
        str(float_presets["gemma"]),
        "int4",
        str(tmp_path / "o"),
        "--report",
        str(report),
        "--quiet",
    )
    assert code == 0
    data = json.loads(report.read_text())
    assert data["recipe"] == "gemma" and "attn.q" in data["roles"]
    assert data["total"]["bytes_after"] < data["total"]["bytes_before"]
    assert data["total"]["ratio"] > 4
    assert data["other_seconds"] == {}  # no calibration: all the time is the roles'


@pytest.mark.slow
@pytest.mark.parametrize("source", ["gemma", "llama3-hf"])
def test_same_inputs_give_the_same_bytes(tmp_path, float_presets, source):
    """Two separate runs (as users make them) write byte-identical artefacts (from a
    Hugging Face folder, KerasHub's Llama 3 converter lists special tokens in set
    order)."""
    import hashlib

    import keras_hub

    preset = float_presets.get(source)
    if preset is None:
        preset = tmp_path / "hf"
        lm = keras_hub.models.CausalLM.from_preset(str(float_presets["llama3"]))
        lm.export_to_transformers(str(preset))
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["apply", "--preset", str(preset), "--config", "int4", "--quiet"]
        result = _cli(
            *args, "--output", str(out), "--format", "preset,keras,safetensors", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        files = sorted(p for p in out.rglob("*") if p.is_file())
        digests.append(
            {
                p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in files
            }
        )
    assert digests[0] == digests[1]
    assert {"model.keras", "model.safetensors", "model.weights.h5", "metadata.json"} <= set(
        digests[0]
    )
