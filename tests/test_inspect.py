"""hubquant inspect on every artefact hubquant writes, and load refusing incomplete ones."""

import json
import shutil

import keras_hub
import pytest

import hubquant
from hubquant import cli
from hubquant.errors import ArtefactError


@pytest.fixture(scope="module")
def artefact(float_presets, tmp_path_factory):
    lm = keras_hub.models.CausalLM.from_preset(str(float_presets["gemma"]))
    hubquant.quantize(lm, "mixed")
    folder = tmp_path_factory.mktemp("inspect") / "q"
    hubquant.save(lm, folder, formats=("preset", "keras", "safetensors", "hf"))
    return folder


@pytest.mark.parametrize("target", ["", "model.keras", "model.safetensors"])
def test_inspect_reports_versions_recipe_plan_and_sizes(artefact, target, capsys):
    assert cli.main(["inspect", str(artefact / target), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["hubquant_version"] == hubquant.__version__
    assert info["format_version"] == 1 and info["recipe"] == "gemma"
    assert info["config_source"] == "configs/mixed.yaml"
    assert info["bytes_after"] < info["bytes_before"]
    rows = {(r["role"], r["mode"]): r["count"] for r in info["plan"]}
    assert rows[("attn.q", "int8")] == 2 and rows[("embed+lm_head", "int8")] == 1


def test_inspect_hf_export(artefact, capsys):
    assert cli.main(["inspect", str(artefact / "hf")]) == 0
    out = capsys.readouterr().out
    assert "Hugging Face export (gemma, pack-quantized), complete" in out


def test_incomplete_artefact_is_reported_and_refused(artefact, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(artefact, broken)
    (broken / "model.keras").unlink()
    assert cli.main(["inspect", str(broken)]) == 2
    assert "INCOMPLETE" in capsys.readouterr().out
    with pytest.raises(ArtefactError, match="is incomplete: model.keras missing"):
        hubquant.load(broken)
