"""Recipes found beyond the shipped ones: HUBQUANT_RECIPE_PATH folders and plugins.

A plugin is a real (tiny) installed distribution written into a temporary
sys.path folder: a ``.dist-info`` with an entry point of the group
``hubquant.recipes`` naming a package folder of YAML. Its ``__init__.py``
raises, which proves hubquant reads the files without importing the plugin.
"""

import os

import pytest

from hubquant import cli
from hubquant.discovery import ENTRY_POINT_GROUP, RECIPE_PATH_VAR
from hubquant.errors import RecipeError
from hubquant.recipe import discovered_recipes, get_recipe, recipe_for_backbone

TOY = """\
name: {name}
backbones: [{backbone}]
blocks: transformer_layers
roles:
  attn.q: {{path: attention.query}}
"""


def toy(name: str, backbone: str) -> str:
    return TOY.format(name=name, backbone=backbone)


def write_plugin(site, dist="toyplug", package="toyplug.recipes", files=None, record=True):
    """An installed distribution ``dist`` whose entry point names ``package``."""
    folder = site.joinpath(*package.split("."))
    folder.mkdir(parents=True, exist_ok=True)
    top = site / package.split(".")[0]
    (top / "__init__.py").write_text("raise RuntimeError('hubquant imported the plugin')\n")
    written = ["toyplug/__init__.py"]
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
        written.append(f"{'/'.join(package.split('.'))}/{name}")
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntoy = {package}\n")
    if record:
        lines = [f"{path},," for path in written + [f"{info.name}/METADATA"]]
        (info / "RECORD").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(RECIPE_PATH_VAR, raising=False)
    return site


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_env_folders_are_searched_in_order(site, tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    (first / "toy.yaml").write_text(toy("toy", "ToyBackbone"))
    (second / "other.yaml").write_text(toy("other", "OtherBackbone"))
    (second / "notes.txt").write_text("not a recipe")
    monkeypatch.setenv(RECIPE_PATH_VAR, os.pathsep.join([str(first), "", str(second)]))
    recipes = discovered_recipes()
    assert list(recipes)[-2:] == ["toy", "other"]
    assert recipes["toy"].origin == RECIPE_PATH_VAR
    assert recipe_for_backbone(["MyToy", "ToyBackbone"]).name == "toy"
    assert get_recipe("other").source == str(second / "other.yaml")


def test_env_entry_that_is_not_a_folder_is_named(site, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(RECIPE_PATH_VAR, str(missing))
    with pytest.raises(RecipeError) as info:
        discovered_recipes()
    assert str(info.value) == (
        f"{RECIPE_PATH_VAR}: '{missing}' is not a folder: expected folders of recipe "
        f"YAML separated by '{os.pathsep}'. Received: {RECIPE_PATH_VAR}='{missing}'"
    )


def test_plugin_recipes_are_read_without_importing_the_plugin(site, capsys):
    write_plugin(site, files={"toy.yaml": toy("toy", "ToyBackbone")})
    recipe = discovered_recipes()["toy"]
    assert recipe.origin == f"plugin 'toy' from toyplug 0.1 ({ENTRY_POINT_GROUP} = toyplug.recipes)"
    assert recipe.source == str(site / "toyplug" / "recipes" / "toy.yaml")
    code, out, _ = run(capsys, "recipes", "list")
    line = next(line for line in out.splitlines() if line.startswith("toy "))
    assert code == 0 and line.split()[1] == "ToyBackbone"
    assert line.endswith(f"{recipe.source} ({recipe.origin})")
    assert "gemma" in out and "shipped" in out


def test_plugin_folder_found_on_sys_path_without_a_record(site):
    """Editable installs list no package files; the folder is found on sys.path."""
    write_plugin(site, files={"toy.yaml": toy("toy", "ToyBackbone")}, record=False)
    assert discovered_recipes()["toy"].backbones == ("ToyBackbone",)


def test_two_recipes_claiming_one_backbone_name_both_sources(site, tmp_path, monkeypatch):
    write_plugin(site, files={"toy.yaml": toy("toy", "GemmaBackbone")})
    with pytest.raises(RecipeError) as info:
        discovered_recipes()
    plugin = f"{site}/toyplug/recipes/toy.yaml (plugin 'toy' from toyplug 0.1 ("
    message = str(info.value)
    assert message.startswith("recipes ") and "/gemma.yaml (shipped) and " + plugin in message
    assert message.endswith("both serve backbone GemmaBackbone: each backbone needs one recipe")


def test_unreadable_plugin_folder_names_the_plugin(site, capsys):
    write_plugin(site, package="toyplug.recipes")
    (site / "toyplug" / "recipes").rmdir()
    code, _, err = run(capsys, "recipes", "list")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.strip() == (
        f"hubquant: error: plugin 'toy' from toyplug 0.1 ({ENTRY_POINT_GROUP} = toyplug.recipes): "
        "cannot read recipe folder of package 'toyplug.recipes': no folder 'toyplug/recipes' "
        "in the distribution's files or on sys.path"
    )


def test_entry_point_value_must_name_a_package(site):
    write_plugin(site, package="toyplug.recipes")
    info = site / "toyplug-0.1.dist-info" / "entry_points.txt"
    info.write_text(f"[{ENTRY_POINT_GROUP}]\ntoy = toyplug.recipes:load\n")
    with pytest.raises(RecipeError, match=r"expected a package name such as 'my_plugin.recipes'"):
        discovered_recipes()
