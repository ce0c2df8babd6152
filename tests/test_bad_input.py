"""Every bad input, one row each: the exact one-line message, exit code 2, no
traceback, and nothing left behind (neither the output nor a staging folder).

Rows run in process through ``hubquant.cli.main``. Placeholders in a row's
arguments and message: ``{tmp}`` (the row's own folder), ``{in}`` (its input
files), ``{out}`` (the output it must not create), ``{gemma}``, ``{llama3}``,
``{opt}`` (presets), ``{art}`` (a copy of a saved int8 artefact, which a row
may corrupt first).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import hubquant
from hubquant import cli
from hubquant.errors import ArtefactError, ConfigError
from hubquant.io import output, st_writer

APPLY = "apply --preset {gemma} --output {out} --config"
BLOCKS = "block index {} is out of range: this model has 2 blocks (indices -2 to 1)"


@dataclass(frozen=True)
class Row:
    args: str  # split on spaces after the placeholders are filled in
    message: str  # the whole line after "hubquant: error: "
    files: dict[str, str] = field(default_factory=dict)  # written into {in}
    prepare: Callable | None = None  # (row folder, monkeypatch) -> None


def _config(text: str) -> dict[str, str]:
    return {"c.yaml": text}


def _cut(name: str, keep: float = 0.5):
    """Truncate ``{art}/name`` to a fraction of its bytes."""

    def prepare(tmp: Path, _):
        path = tmp / "art" / name
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])

    return prepare


def _garble(name: str):
    """Overwrite the first 512 bytes of ``{art}/name`` (headers, signatures)."""

    def prepare(tmp: Path, _):
        path = tmp / "art" / name
        data = path.read_bytes()
        path.write_bytes(b"\x07" * 512 + data[512:])

    return prepare


def _edit_metadata(tmp: Path, _):
    path = tmp / "art" / "hubquant.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 99}))


def _restamp(**changes: Callable[[], str]):
    """Rewrite ``{art}/model.safetensors`` with metadata keys replaced."""

    def prepare(tmp: Path, _):
        path = tmp / "art" / "model.safetensors"
        with safe_open(str(path), framework="numpy") as f:
            meta = {**f.metadata(), **{key: make() for key, make in changes.items()}}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(path), metadata=meta)

    return prepare


def _retensor(change: Callable[[dict], None]):
    """Rewrite ``{art}/model.safetensors`` with its tensors changed in place."""

    def prepare(tmp: Path, _):
        path = tmp / "art" / "model.safetensors"
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        change(tensors)
        save_file(tensors, str(path), metadata=meta)

    return prepare


_SCALE = "decoder_block_0/attention/query/kernel_scale"


def _drop_scale(tensors: dict) -> None:
    del tensors[_SCALE]


def _halve_scale(tensors: dict) -> None:
    tensors[_SCALE] = tensors[_SCALE][: tensors[_SCALE].shape[0] // 2]


def _hostile_asset(name: str):
    """Add a uint8 tensor ``__preset__/NAME`` to ``{art}/model.safetensors``
    (``{tmp}`` in NAME is the row's folder); temporary folders go under
    ``{tmp}/sys_tmp``, so a relative escape would land inside the row's folder."""

    def prepare(tmp: Path, monkeypatch):
        import tempfile

        (tmp / "sys_tmp").mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp / "sys_tmp"))
        target = "__preset__/" + name.format(tmp=tmp)
        _retensor(lambda t: t.update({target: np.frombuffer(b"owned", np.uint8)}))(tmp, None)

    return prepare


def _edit_plan(edit: Callable[[dict], None]):
    """Apply ``edit`` to the saved Plan wherever ``{art}`` keeps it."""

    def visit(node):
        if isinstance(node, dict):
            if "entries" in node and "recipe" in node:
                edit(node)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    def prepare(tmp: Path, _):
        for name in ("hubquant.json", "config.json", "task.json"):
            path = tmp / "art" / name
            data = json.loads(path.read_text())
            visit(data)
            path.write_text(json.dumps(data))

    return prepare


def _entry(**changes):
    return _edit_plan(lambda plan: plan["entries"][0].update(changes))


def _hostile_index(text: str):
    """``{art}``'s safetensors gets an index file holding ``text``."""

    def prepare(tmp: Path, _):
        (tmp / "art" / "model.safetensors.index.json").write_text(text)

    return prepare


def _foreign_safetensors(tmp: Path, _):
    save_file({"w": np.zeros((2, 2), np.float32)}, str(tmp / "in" / "other.safetensors"))


def _lambda_model() -> keras.Model:
    return keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2)])


def _lambda_archive(tmp: Path, _):
    _lambda_model().save(str(tmp / "in" / "lambda.keras"))


def _lambda_config() -> str:
    return json.dumps(keras.saving.serialize_keras_object(_lambda_model()))


def _failing_write(error: OSError):
    """Make hubquant's safetensors writer fail after its first chunk of bytes (the
    row's message, which only this error gives, shows that the write was reached)."""

    class Fails:
        def __init__(self, file):
            self.file, self.writes = file, 0

        def write(self, data):
            self.writes += 1
            if self.writes > 1:
                raise error
            return self.file.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def prepare(_, monkeypatch):
        monkeypatch.setattr(
            st_writer, "open", lambda path, mode: Fails(open(path, mode)), raising=False
        )

    return prepare


def _bare_backbone(tmp: Path, _):
    """``{in}/backbone``: a tiny Gemma saved without its tokenizer."""
    from hubquant import synthetic

    synthetic.gemma_causal_lm(seed=0).backbone.save_to_preset(str(tmp / "in" / "backbone"))


def _recipe_that_does_not_fit() -> dict[str, str]:
    from hubquant.recipe import shipped_recipes

    text = shipped_recipes()["gemma"].text
    return {"r.yaml": text.replace("attention.key_dense", "attention.kee")}


# "Billion laughs": nine levels of nine aliases, 9^9 values from 600 bytes.
_BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "default: *i\n"
)

ROWS = {
    # Configs
    "yaml_syntax": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: line 2, column 3: invalid YAML: expected the node content, but "
        "found '-'. Received: text='  - {{mode: int8'",
        _config("rules: [\n  - {mode: int8\n"),
    ),
    "unsafe_yaml_tag": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: line 1, column 10: invalid YAML: could not determine a constructor "
        "for the tag 'tag:yaml.org,2002:python/object/apply:os.system'. "
        "Received: text=\"default: !!python/object/apply:os.system ['echo hi']\"",
        _config("default: !!python/object/apply:os.system ['echo hi']\n"),
    ),
    "unknown_key": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: key 'defaults': unknown key; expected one of default, rules, calibration. "
        "Received: defaults={{'mode': 'int8'}}",
        _config("defaults: {mode: int8}\n"),
    ),
    "unknown_mode": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: default: key 'mode': expected one of: none, int8, int4. "
        "Received: mode='int3'",
        _config("default: {mode: int3}\n"),
    ),
    "unknown_role": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: rule 1: key 'match.role': unknown role: expected a role or glob "
        "matching one of attn.q, attn.k, attn.v, attn.o, attn.qkv, mlp.gate, mlp.up, "
        "mlp.down, mlp.gate_up, moe.experts, moe.router, moe.shared.gate, moe.shared.up, "
        "moe.shared.down, moe.shared_router, embed, embed.position, lm_head, pooler. "
        "Received: match.role='atn.q'",
        _config("rules:\n  - match: {role: atn.q}\n    mode: int8\n"),
    ),
    "unknown_algorithm": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: default: key 'algorithm': expected one of: rtn, gptq, awq, imatrix. "
        "Received: algorithm='spqr'",
        _config("default: {mode: int4, algorithm: spqr}\n"),
    ),
    "group_size_zero": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: default: key 'group_size': expected a positive integer, or -1 for "
        "one group per channel. Received: group_size=0",
        _config("default: {mode: int4, group_size: 0}\n"),
    ),
    "group_size_fraction": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: rule 1: key 'group_size': expected a positive integer, or -1 for "
        "one group per channel. Received: group_size=1.5",
        _config("rules:\n  - match: {role: attn.q}\n    mode: int4\n    group_size: 1.5\n"),
    ),
    "group_size_not_dividing_for_hf": Row(
        "apply --preset {llama3} --output {out} --format preset,hf --config {in}/c.yaml",
        "layer 'transformer_layer_0/self_attention/query' (attn.q): compressed-tensors "
        "needs the input size 80 to be a multiple of group_size 64; quantize it with a "
        "group size that divides it (or per channel) to export it.",
        _config(
            "default: {mode: int4, group_size: 64, symmetric: true}\n"
            "rules:\n  - match: {role: 'embed*'}\n    mode: int8\n"
            "  - match: {role: lm_head}\n    mode: int8\n"
        ),
    ),
    "block_index_too_large": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: rule 1: key 'match.blocks': " + BLOCKS.format(2) + ". "
        "Received: match.blocks=[0, 2]",
        _config("rules:\n  - match: {blocks: [0, 2]}\n    mode: int8\n"),
    ),
    "negative_block_index_too_small": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: rule 1: key 'match.blocks': " + BLOCKS.format(-3) + ". "
        "Received: match.blocks=[-3]",
        _config("rules:\n  - match: {blocks: [-3]}\n    mode: int8\n"),
    ),
    "strict_rule_matching_nothing": Row(
        f"{APPLY} {{in}}/c.yaml --strict",
        "{in}/c.yaml: rule 1 (role=attn.qkv) matched no layer of this model "
        "(recipe 'gemma'); --strict makes that an error.",
        _config("rules:\n  - match: {role: attn.qkv}\n    mode: int8\n"),
    ),
    "yaml_alias_bomb": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: line 6: YAML expands to more than 100,000 values through aliases; "
        "hubquant refuses it.",
        _config(_BOMB),
    ),
    "yaml_nested_too_deep": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: line 1: YAML nested deeper than 64 levels; hubquant refuses it.",
        _config("default: " + "[" * 5000 + "]" * 5000 + "\n"),
    ),
    "backtracking_regex_runs_in_linear_time": Row(
        f"{APPLY} {{in}}/c.yaml --strict",
        "{in}/c.yaml: rule 1 (path=(.|.)*Z) matched no layer of this model "
        "(recipe 'gemma'); --strict makes that an error.",
        _config("rules:\n  - match: {path: '(.|.)*Z'}\n    mode: int8\n"),
    ),
    "regex_with_lookahead": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: rule 1: key 'match.path': expected a regular expression over the layer "
        "path (RE2 syntax: invalid perl operator: (?=). Received: match.path='(?=a).*'",
        _config("rules:\n  - match: {path: '(?=a).*'}\n    mode: int8\n"),
    ),
    "calibration_past_any_machine": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: calibration asks for 100000000 x 64 = 6,400,000,000 tokens; hubquant "
        "takes at most 4,194,304 (e.g. 8192 x 512): lower num_samples or seq_len.",
        _config(
            "default: {mode: int4, algorithm: gptq}\n"
            "calibration: {files: [README.md], num_samples: 100000000}\n"
        ),
    ),
    "generate_count_not_positive": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: calibration: key 'generate.num_samples': expected a positive integer. "
        "Received: generate.num_samples=0",
        _config(
            "default: {mode: int4, algorithm: gptq}\ncalibration: {generate: {num_samples: 0}}\n"
        ),
    ),
    "generate_temperature_not_positive": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: calibration: key 'generate.temperature': expected a number > 0 (1.0 "
        "samples the model's own distribution). Received: generate.temperature=-0.5",
        _config(
            "default: {mode: int4, algorithm: gptq}\ncalibration: {generate: {temperature: -0.5}}\n"
        ),
    ),
    "generate_prompt_too_long": Row(
        f"{APPLY} {{in}}/c.yaml",
        "{in}/c.yaml: calibration: key 'generate.prompts': expected a list of 1 to 256 strings "
        "of at most 400 characters. Received: generate.prompts=['" + "x" * 75 + "...",
        _config(
            "default: {mode: int4, algorithm: gptq}\ncalibration: {generate: {prompts: [%s]}}\n"
            % ("x" * 401)
        ),
    ),
    "self_calibrating_a_bare_backbone": Row(
        "apply --preset {in}/backbone --config int4_gptq --output {out}",
        "no calibration files are given, so hubquant would generate calibration text with the "
        "model, but it is a bare backbone (GemmaBackbone), without tokenizer or LM head; give "
        "text files (--calibration FILE, or 'files:' in the config's calibration section) or "
        "a task preset (a CausalLM).",
        prepare=_bare_backbone,
    ),
    "config_not_found": Row(
        f"{APPLY} int5",
        "config 'int5' not found: not a file and not a shipped config "
        "(shipped: encoder_int4, int4, int4_gptq, int8, mixed)",
    ),
    # Presets and recipes
    "preset_folder_missing": Row(
        "apply --preset {tmp}/nope --config int8 --output {out}",
        "preset '{tmp}/nope' not found: no such file or folder.",
    ),
    "folder_not_a_preset": Row(
        "apply --preset {in} --config int8 --output {out}",
        "preset '{in}' is not a KerasHub or Hugging Face preset folder: it has no config.json.",
    ),
    "unknown_preset_name": Row(
        "apply --preset gemma_2b_xx --config int8 --output {out}",
        "unknown preset 'gemma_2b_xx': not a folder and not a KerasHub preset. "
        "Did you mean gemma_2b_en, gemma4_2b, gemma2_2b_en, gemma3_27b_text, gemma3_12b_text?",
    ),
    "architecture_without_recipe": Row(
        "apply --preset {opt} --config int8 --output {out}",
        "no recipe for backbone OPTBackbone: known recipes serve [{known}]. "
        "Pass --recipe FILE.yaml to use your own.",
    ),
    "recipe_that_does_not_fit": Row(
        f"{APPLY} int8 --recipe {{in}}/r.yaml",
        "recipe 'gemma' ({in}/r.yaml): role 'attn.k': path 'attention.kee' not found in "
        "block 0 (GemmaDecoderBlock); the recipe does not fit this model.",
        _recipe_that_does_not_fit(),
    ),
    # Output
    "output_exists_and_is_not_empty": Row(
        f"{APPLY} int8 --output {{in}}",
        "output '{in}' exists and is not empty; pass --overwrite to replace it.",
        {"keep.txt": "mine"},
    ),
    "output_is_a_file": Row(
        f"{APPLY} int8 --output {{in}}/keep.txt",
        "output '{in}/keep.txt' exists and is a file; give a folder path.",
        {"keep.txt": "mine"},
    ),
    "report_in_a_missing_folder": Row(
        f"{APPLY} int8 --report {{tmp}}/nope/r.json",
        "cannot write report '{tmp}/nope/r.json': folder '{tmp}/nope' does not exist.",
    ),
    "report_is_a_folder": Row(
        f"{APPLY} int8 --report {{in}}",
        "cannot write report '{in}': it is a folder.",
    ),
    "output_is_the_root": Row(
        f"{APPLY} int8 --output / --overwrite",
        "output '/' is a filesystem root; give a folder to write.",
    ),
    "unknown_format": Row(
        f"{APPLY} int8 --format preset,onnx",
        "unknown output format 'onnx'; accepted: preset, keras, safetensors, hf. "
        "Received: format=preset,onnx",
    ),
    "read_only_location_mid_write": Row(
        f"{APPLY} int8 --format preset,safetensors --quiet",
        "cannot write output '{out}': permission denied (read-only location?)",
        prepare=_failing_write(PermissionError(errno.EACCES, "Permission denied")),
    ),
    "disk_too_full_to_start": Row(
        f"{APPLY} int8 --format preset,safetensors --quiet",
        "cannot write output '{out}': no space left on the device (about 1.3 MiB needed, "
        "0.2 MiB free)",
        prepare=lambda _, mp: mp.setattr(
            output.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 200_000)
        ),
    ),
    "disk_full_mid_write": Row(
        f"{APPLY} int8 --format preset,safetensors --quiet",
        "cannot write output '{out}': no space left on the device",
        prepare=_failing_write(OSError(errno.ENOSPC, "No space left on device")),
    ),
    # Saved artefacts
    "truncated_keras": Row(
        "export {art}/model.keras --output {out}",
        "'{art}/model.keras' is truncated or corrupt: not a readable .keras archive "
        "(no zip directory).",
        prepare=_cut("model.keras"),
    ),
    "corrupt_keras": Row(
        "export {art}/model.keras --output {out}",
        "'{art}/model.keras' is truncated or corrupt: BadZipFile: Bad magic number for file header",
        prepare=_garble("model.keras"),
    ),
    "truncated_keras_inspect": Row(
        "inspect {art}/model.keras",
        "'{art}/model.keras' is truncated or corrupt: not a readable .keras archive "
        "(File is not a zip file).",
        prepare=_cut("model.keras"),
    ),
    "truncated_weights": Row(
        "export {art} --output {out}",
        "'{art}/model.weights.h5' is truncated or corrupt: Unable to synchronously open "
        "file (truncated file: eof = {eof}, sblock->base_addr = 0, stored_eof = {size})",
        prepare=_cut("model.weights.h5"),
    ),
    "corrupt_weights": Row(
        "export {art} --output {out}",
        "'{art}/model.weights.h5' is truncated or corrupt: Unable to synchronously open "
        "file (file signature not found)",
        prepare=_garble("model.weights.h5"),
    ),
    "truncated_weights_inspect": Row(
        "inspect {art}",
        "'{art}/model.weights.h5' is truncated or corrupt: Unable to synchronously open "
        "file (truncated file: eof = {eof}, sblock->base_addr = 0, stored_eof = {size})",
        prepare=_cut("model.weights.h5"),
    ),
    "truncated_safetensors": Row(
        "export {art}/model.safetensors --output {out}",
        "'{art}/model.safetensors' is truncated or corrupt: not a readable safetensors "
        "file (Error while deserializing header: incomplete metadata, file not fully covered).",
        prepare=_cut("model.safetensors"),
    ),
    "corrupt_safetensors_inspect": Row(
        "inspect {art}/model.safetensors",
        "'{art}/model.safetensors' is truncated or corrupt: not a readable safetensors "
        "file (Error while deserializing header: header too large).",
        prepare=_garble("model.safetensors"),
    ),
    "newer_format_version_folder": Row(
        "export {art} --output {out}",
        "'{art}/hubquant.json' has format version 99, newer than this hubquant "
        "understands (1). Upgrade hubquant.",
        prepare=_edit_metadata,
    ),
    "newer_format_version_safetensors": Row(
        "inspect {art}/model.safetensors",
        "'{art}/model.safetensors' has format version 99, newer than this hubquant "
        "understands (1). Upgrade hubquant.",
        prepare=_restamp(format_version=lambda: "99"),
    ),
    "safetensors_missing_a_tensor": Row(
        "export {art}/model.safetensors --output {out}",
        f"'{{art}}/model.safetensors' lacks 1 tensors, e.g. '{_SCALE}'.",
        prepare=_retensor(_drop_scale),
    ),
    "safetensors_shape_disagrees_with_plan": Row(
        "export {art}/model.safetensors --output {out}",
        f"'{{art}}/model.safetensors': tensor '{_SCALE}' does not fit the model "
        "(expected (96,), got (48,)).",
        prepare=_retensor(_halve_scale),
    ),
    "foreign_safetensors": Row(
        "export {in}/other.safetensors --output {out}",
        "'{in}/other.safetensors' has no hubquant metadata; it was not written by hubquant.",
        prepare=_foreign_safetensors,
    ),
    "keras_archive_with_python_code": Row(
        "export {in}/lambda.keras --output {out}",
        "'{in}/lambda.keras' holds Python code (e.g. a Lambda layer), which hubquant does "
        "not run: it loads with Keras' safe_mode on. It was not written by hubquant.",
        prepare=_lambda_archive,
    ),
    "safetensors_with_python_code": Row(
        "export {art}/model.safetensors --output {out}",
        "'{art}/model.safetensors' holds Python code (e.g. a Lambda layer), which hubquant "
        "does not run: it loads with Keras' safe_mode on. It was not written by hubquant.",
        prepare=_restamp(model_config=_lambda_config),
    ),
    "safetensors_asset_absolute_path": Row(
        "export {art}/model.safetensors --output {out}",
        "'{art}/model.safetensors': tensor '__preset__/{tmp}/escaped' does not name a preset "
        "asset (expected assets/NAME/... of letters, digits and ._-); refusing to write it.",
        prepare=_hostile_asset("{tmp}/escaped"),
    ),
    "safetensors_asset_dot_dot": Row(
        "export {art}/model.safetensors --output {out}",
        "'{art}/model.safetensors': tensor '__preset__/assets/../../escaped' does not name a "
        "preset asset (expected assets/NAME/... of letters, digits and ._-); refusing to "
        "write it.",
        prepare=_hostile_asset("assets/../../escaped"),
    ),
    "safetensors_asset_outside_assets": Row(
        "export {art}/model.safetensors --output {out}",
        "'{art}/model.safetensors': tensor '__preset__/config.json' does not name a preset "
        "asset (expected assets/NAME/... of letters, digits and ._-); refusing to write it.",
        prepare=_hostile_asset("config.json"),
    ),
    "safetensors_index_shard_outside_folder": Row(
        "export {art} --output {out}",
        "'{art}/model.safetensors.index.json': tensor 'b' names shard '../../etc/hostname'; "
        "a shard must be a plain '*.safetensors' file name in the same folder.",
        prepare=_hostile_index(
            json.dumps({"weight_map": {"a": "model.safetensors", "b": "../../etc/hostname"}})
        ),
    ),
    "hf_folder_index_shard_outside_folder": Row(
        "apply --preset {in} --config int8 --output {out}",
        "'{in}/model.safetensors.index.json': tensor 'x' names shard '/etc/hostname'; "
        "a shard must be a plain '*.safetensors' file name in the same folder.",
        {
            "config.json": json.dumps({"model_type": "llama"}),
            "model.safetensors.index.json": json.dumps({"weight_map": {"x": "/etc/hostname"}}),
        },
    ),
    "safetensors_index_truncated": Row(
        "export {art} --output {out}",
        "'{art}/model.safetensors.index.json' is truncated or corrupt: Expecting ':' "
        "delimiter: line 1 column 20 (char 19)",
        prepare=_hostile_index('{"weight_map": {"a"'),
    ),
    "eval_binary_text": Row(
        "eval --preset {gemma} --quantized {art} --text {in}/t.bin",
        "--text: '{in}/t.bin' is not a readable UTF-8 text file ('utf-8' codec can't decode "
        "byte 0x89 in position 0: invalid start byte).",
        prepare=lambda tmp, _: (tmp / "in" / "t.bin").write_bytes(b"\x89PNG\r\n\x1a\n"),
    ),
    "eval_text_with_nul_bytes": Row(
        "eval --preset {gemma} --quantized {art} --text {in}/t.txt",
        "--text: '{in}/t.txt' holds NUL bytes; give a plain text file.",
        {"t.txt": "a\x00b"},
    ),
    "eval_seq_len_one": Row(
        "eval --preset {gemma} --quantized {art} --text {in}/t.txt --seq-len 1",
        "--seq-len: expected an integer of at least 2. Received: 1",
        {"t.txt": "the sea"},
    ),
    "eval_seq_len_negative": Row(
        "eval --preset {gemma} --quantized {art} --text {in}/t.txt --seq-len -4",
        "--seq-len: expected an integer of at least 2. Received: -4",
        {"t.txt": "the sea"},
    ),
    "eval_windows_zero": Row(
        "eval --preset {gemma} --quantized {art} --text {in}/t.txt --windows 0",
        "--windows: expected a positive integer. Received: 0",
        {"t.txt": "the sea"},
    ),
    "eval_other_vocabulary": Row(
        "eval --preset {llama3} --quantized {art} --text {in}/t.txt",
        "'{art}' has a vocabulary of {gemma_vocab} tokens; preset '{llama3}' has "
        "{llama3_vocab}: it was not quantized from this preset.",
        {"t.txt": "the sea"},
    ),
    "plan_entry_larger_than_the_model": Row(
        "export {art} --output {out}",
        "the Plan's entry for 'token_embedding' (embed+lm_head) says shape "
        "[549755813888, 96]; the model built from the saved config has [{gemma_vocab}, 96].",
        prepare=_entry(shape=[2**39, 96], kernel_shape=[2**39, 96]),
    ),
    "plan_entry_size_past_any_model": Row(
        "export {art} --output {out}",
        "the saved Plan's entry 1 has shape=[1099511627776, 96]; expected two positive sizes.",
        prepare=_entry(shape=[2**40, 96]),
    ),
    "plan_layer_class_lambda": Row(
        "export {art} --output {out}",
        "the Plan's entry for 'token_embedding' (embed+lm_head) names layer class 'Lambda', which "
        "hubquant does not use for it.",
        prepare=_entry(layer="Lambda"),
    ),
    "plan_layer_class_os_system": Row(
        "export {art} --output {out}",
        "the Plan's entry for 'token_embedding' (embed+lm_head) names layer class 'os.system', "
        "which hubquant does not use for it.",
        prepare=_entry(layer="os.system"),
    ),
    "plan_attr_dunder": Row(
        "export {art} --output {out}",
        "the Plan names layer '__class__', which is not a layer of GemmaBackbone.",
        prepare=_entry(attr="__class__"),
    ),
    "plan_entry_an_int": Row(
        "inspect {art}",
        "the saved Plan's entry 1 is int; expected a mapping.",
        prepare=_edit_plan(lambda plan: plan["entries"].__setitem__(0, 5)),
    ),
    "plan_version_a_string": Row(
        "inspect {art}",
        "the saved Plan's format_version is '2'; expected 1.",
        prepare=_edit_plan(lambda plan: plan.update(format_version="2")),
    ),
    "plan_shape_abc": Row(
        "inspect {art}",
        "the saved Plan's entry 1 has shape='abc'; expected two positive sizes.",
        prepare=_entry(shape="abc"),
    ),
    "plan_group_size_zero": Row(
        "inspect {art}",
        "the saved Plan's entry 1 has group_size=0; expected a positive integer or -1.",
        prepare=_entry(group_size=0),
    ),
    "not_an_artefact": Row(
        "inspect {in}",
        "'{in}' is not a hubquant artefact (folder, .keras or .safetensors).",
    ),
}


@pytest.fixture(scope="module")
def opt_preset(tmp_path_factory):
    """The config of a KerasHub OPT preset (an architecture no recipe serves) and no
    weights: hubquant must refuse it from config.json alone, before loading weights."""
    path = tmp_path_factory.mktemp("opt") / "opt"
    path.mkdir()
    dims = {"vocabulary_size": 64, "num_layers": 1, "num_heads": 2, "hidden_dim": 16}
    config = {
        "module": "keras_hub.src.models.opt.opt_backbone",
        "class_name": "OPTBackbone",
        "config": {**dims, "intermediate_dim": 32, "max_sequence_length": 32},
        "registered_name": "keras_hub>OPTBackbone",
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def artefact(float_presets, tmp_path_factory):
    """An int8 Gemma saved in every format that can be corrupted."""
    lm = keras_hub.models.CausalLM.from_preset(str(float_presets["gemma"]))
    hubquant.quantize(lm, "int8")
    folder = tmp_path_factory.mktemp("bad_input") / "art"
    hubquant.save(lm, folder, formats=("preset", "keras", "safetensors"))
    return folder


def _vocabulary(preset: Path) -> int:
    return json.loads((preset / "config.json").read_text())["config"]["vocabulary_size"]


def _context(tmp: Path, float_presets, opt_preset, size: int) -> dict:
    from hubquant.recipe import shipped_recipes

    served = sorted(b for r in shipped_recipes().values() for b in r.backbones)
    return {
        "tmp": tmp,
        "in": tmp / "in",
        "out": tmp / "out",
        "art": tmp / "art",
        "gemma": float_presets["gemma"],
        "llama3": float_presets["llama3"],
        "opt": opt_preset,
        "known": ", ".join(repr(b) for b in served),
        "size": size,
        "eof": size // 2,
        "gemma_vocab": _vocabulary(float_presets["gemma"]),
        "llama3_vocab": _vocabulary(float_presets["llama3"]),
    }


def _set_up(row: Row, tmp: Path, artefact: Path, monkeypatch) -> int:
    """Write the row's inputs; return the intact weights file's size."""
    (tmp / "in").mkdir()
    for name, text in row.files.items():
        (tmp / "in" / name).write_text(text)
    shutil.copytree(artefact, tmp / "art")
    size = (tmp / "art" / "model.weights.h5").stat().st_size
    if row.prepare is not None:
        row.prepare(tmp, monkeypatch)
    return size


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input(name, tmp_path, capsys, monkeypatch, float_presets, opt_preset, artefact):
    row = ROWS[name]
    size = _set_up(row, tmp_path, artefact, monkeypatch)
    ctx = _context(tmp_path, float_presets, opt_preset, size)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = cli.main(row.args.format(**ctx).split(" "))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err == f"hubquant: error: {row.message.format(**ctx)}\n"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_debug_shows_the_traceback(tmp_path):
    """``--debug`` lets the error propagate (Python prints its traceback)."""
    config = tmp_path / "c.yaml"
    config.write_text("default: {mode: int3}\n")
    with pytest.raises(ConfigError, match="key 'mode'"):
        cli.main(["--debug", "apply", "--config", str(config), "--output", str(tmp_path / "o")])


def test_load_refuses_python_code_in_a_keras_archive(tmp_path):
    (tmp_path / "in").mkdir()
    _lambda_archive(tmp_path, None)
    with pytest.raises(ArtefactError, match="safe_mode on"):
        hubquant.load(tmp_path / "in" / "lambda.keras")
