"""Preset names as typed: exact, unique prefix, ambiguous, unknown, path wins. Offline."""

import pytest

from hubquant import cli
from hubquant.errors import PresetError
from hubquant.float_preset import resolve_preset, supported_presets


def test_exact_name_is_kept():
    assert resolve_preset("gemma_2b_en") == ("gemma_2b_en", None)


def test_unique_prefix_expands_and_says_so():
    assert resolve_preset("gemma_2b") == (
        "gemma_2b_en",
        "using KerasHub preset 'gemma_2b_en' for 'gemma_2b'",
    )


def test_ambiguous_prefix_lists_candidates():
    with pytest.raises(
        PresetError,
        match="preset 'llama3_8b' is ambiguous: did you mean one of llama3_8b_en, llama3_8b_en_int8",
    ):
        resolve_preset("llama3_8b")


def test_unknown_name_suggests_close_ones():
    with pytest.raises(
        PresetError, match="unknown preset 'lama3_8b_en'.*Did you mean llama3_8b_en"
    ):
        resolve_preset("lama3_8b_en")


def test_path_wins_over_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma_2b").mkdir()
    assert resolve_preset("gemma_2b") == ("gemma_2b", None)


def test_handles_are_kept():
    assert resolve_preset("hf://google/gemma-2b") == ("hf://google/gemma-2b", None)


def test_presets_listing_is_filtered_to_served_families(capsys):
    rows = supported_presets("gemma_2b")
    assert ("gemma_2b_en", "gemma", 2506172416) in rows
    from hubquant.recipe import shipped_recipes

    listed = {recipe for _, recipe, _ in supported_presets()}
    assert {"gemma", "llama3", "mixtral"} <= listed <= set(shipped_recipes())
    assert cli.main(["presets", "llama3_8b"]) == 0
    assert "llama3_8b_en" in capsys.readouterr().out
