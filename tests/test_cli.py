"""The command line: end to end, and every user error as one line with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from hubquant import cli

BAD_CONFIGS = {
    "yaml_syntax": ("rules: [\n  - {mode: int8\n", "line 2, column 3"),
    "unknown_mode": ("default: {mode: int3}\n", "key 'mode'"),
    "zero_group": ("default: {mode: int4, group_size: 0}\n", "key 'group_size'"),
    "unknown_role": ("rules:\n  - match: {role: atn.q}\n    mode: int8\n", "rule 1"),
    "unknown_key": ("defaults: {mode: int8}\n", "defaults"),
}


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


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2_and_writes_nothing(case, capsys, tmp_path, float_presets):
    text, fragment = BAD_CONFIGS[case]
    config = tmp_path / f"{case}.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    args = ["apply", "--preset", str(float_presets["gemma"]), "--config", str(config)]
    code, _, err = run(capsys, *args, "--output", str(out))
    assert_one_line_error(code, err, str(config), fragment)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [config.name]


def test_missing_preset_folder(capsys, tmp_path):
    code, _, err = apply(capsys, str(tmp_path / "nope"), "int8", str(tmp_path / "o"))
    assert_one_line_error(code, err, "not found")
    assert not (tmp_path / "o").exists()


def test_folder_that_is_not_a_preset(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = apply(capsys, str(tmp_path / "empty"), "int8", str(tmp_path / "o"))
    assert_one_line_error(code, err, "has no config.json")


def test_output_that_exists_and_is_not_empty(capsys, tmp_path, float_presets):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = apply(capsys, str(float_presets["gemma"]), "int8", str(out))
    assert_one_line_error(code, err, "not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_unknown_format(capsys, tmp_path, float_presets):
    code, _, err = apply(
        capsys, str(float_presets["gemma"]), "int8", str(tmp_path / "o"), "--format", "preset,onnx"
    )
    assert_one_line_error(code, err, "unknown output format 'onnx'")


def test_strict_rule_matching_nothing(capsys, tmp_path, float_presets):
    config = tmp_path / "typo.yaml"
    config.write_text("rules:\n  - match: {role: attn.q, blocks: [9]}\n    mode: int8\n")
    code, _, err = run(
        capsys,
        "apply",
        "--preset",
        str(float_presets["gemma"]),
        "--config",
        str(config),
        "--dry-run",
        "--strict",
    )
    assert_one_line_error(code, err, "rule 1", "matched no layer")


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, tmp_path, float_presets):
    out = tmp_path / "o"
    code, stdout, _ = apply(capsys, str(float_presets["llama3"]), "mixed", str(out), "--dry-run")
    assert code == 0
    assert "transformer_layer_0/self_attention/query" in stdout and "attn.q" in stdout
    assert "quantized layers (recipe llama3)" in stdout
    assert not out.exists()


def test_configs_and_recipes_listing(capsys):
    code, out, _ = run(capsys, "configs", "list")
    assert code == 0 and {"int4", "int8", "mixed"} <= {line.split()[0] for line in out.splitlines()}
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
        "(shipped: int4, int8, mixed)"
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


@pytest.mark.slow
def test_same_inputs_give_the_same_bytes(tmp_path, float_presets):
    """Two separate runs (as users make them) write byte-identical artefacts."""
    import hashlib

    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["apply", "--preset", str(float_presets["gemma"]), "--config", "int4", "--quiet"]
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
