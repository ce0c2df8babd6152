"""Recipes: where an architecture keeps its blocks and which sublayer has which role.

A recipe is data (YAML in ``recipes/``): the backbone classes it serves, the
backbone attribute listing the blocks, and for each canonical role the
sublayer's dotted path, its Hugging Face tensor name and its replacement layer.
"""

import dataclasses
import functools
import re
import string
from dataclasses import dataclass
from pathlib import Path

from hubquant.config import KNOWN_ROLES
from hubquant.discovery import RecipeFile, env_files, plugin_files
from hubquant.errors import RecipeError
from hubquant.shipped import shipped_files
from hubquant.yaml_data import check_mapping, message, read_text, read_yaml, show

LAYER_NAMES = (
    "QuantDense",
    "QuantEinsumDense",
    "QuantEmbedding",
    "QuantReversibleEmbedding",
)
SCOPES = ("block", "backbone")
PARTS = ("forward", "reverse")
TOP_KEYS = ("name", "description", "backbones", "blocks", "hf_model_type", "roles")
ROLE_KEYS = (
    "path",
    "scope",
    "hf",
    "layer",
    "part",
    "matrices",
    "optional",
    "input_norm",
    "input_from",
)
_NAME = re.compile(r"[A-Za-z_]\w*")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.([A-Za-z_]\w*|\d+))*")


@dataclass(frozen=True)
class RoleSpec:
    """Where one role's layer lives. ``part='reverse'``: a ReversibleEmbedding's
    LM-head matrix. ``layer`` None: chosen later from the source layer's class."""

    role: str
    path: str
    scope: str = "block"
    hf: str | None = None
    layer: str | None = None
    part: str = "forward"
    # Raw stacked weights of an expert bank, each [experts, in, out] (moe.experts).
    matrices: tuple[str, ...] = ()
    # True: blocks without this path are skipped (e.g. dense layers in a MoE model).
    optional: bool = False
    # The block's norm layer whose output is exactly this projection's input:
    # AWQ folds its scales there (shared by every role naming the same norm).
    input_norm: str | None = None
    # The block's projection whose output channels, multiplied elementwise by
    # something else (a gated MLP's up projection before down), are this
    # layer's input channels: AWQ folds its scales into that layer's rows.
    input_from: str | None = None

    def to_dict(self) -> dict:
        spec = dataclasses.asdict(self)
        del spec["role"]
        spec["matrices"] = list(self.matrices) or None
        spec["optional"] = self.optional or None
        return {key: value for key, value in spec.items() if value is not None}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; ``text`` is the YAML as given, for saving."""

    name: str
    description: str
    backbones: tuple[str, ...]
    blocks: str
    roles: tuple[RoleSpec, ...]
    hf_model_type: str | None
    source: str
    text: str
    # Where it was found: "shipped", "HUBQUANT_RECIPE_PATH", "plugin ...", "" (a file given).
    origin: str = ""

    @property
    def where(self) -> str:
        """The file, and how it was found when discovered."""
        return f"{self.source} ({self.origin})" if self.origin else self.source

    def to_dict(self) -> dict:
        """The recipe as YAML-ready data; ``parse_recipe`` reads it back."""
        data = {
            "name": self.name,
            "description": self.description,
            "backbones": list(self.backbones),
            "blocks": self.blocks,
            "hf_model_type": self.hf_model_type,
            "roles": {spec.role: spec.to_dict() for spec in self.roles},
        }
        return {key: value for key, value in data.items() if value not in (None, "")}


@functools.lru_cache(maxsize=256)  # every plan reads every recipe; a Recipe is immutable
def parse_recipe(text: str, source: str) -> Recipe:
    """Validate recipe YAML ``text``; ``source`` names it in error messages."""
    data = read_yaml(text, source, RecipeError)
    data = check_mapping(data, TOP_KEYS, source, "recipe", RecipeError)
    return Recipe(
        name=_string(data, "name", source, required=True),
        description=_string(data, "description", source) or "",
        backbones=_backbones(data.get("backbones"), source),
        blocks=_dotted(data, "blocks", source),
        roles=_roles(data.get("roles"), source),
        hf_model_type=_string(data, "hf_model_type", source),
        source=source,
        text=text,
    )


def load_recipe(path: str | Path, origin: str = "") -> Recipe:
    """Read and validate the recipe file at ``path`` (found as ``origin`` says)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}' not found. Received: path='{path}'")
    recipe = parse_recipe(read_text(path, RecipeError), str(path))
    return dataclasses.replace(recipe, origin=origin)


def load_recipes(files: list[Path | RecipeFile]) -> dict[str, Recipe]:
    """Recipes by name; two files with one name or one backbone are an error."""
    recipes: dict[str, Recipe] = {}
    owners: dict[str, Recipe] = {}
    for file in files:
        if isinstance(file, RecipeFile):
            recipe = load_recipe(file.path, file.origin)
        else:
            recipe = load_recipe(file)
        if recipe.name in recipes:
            other = recipes[recipe.name].where
            raise RecipeError(
                f"recipes {other} and {recipe.where} share the name "
                f"'{recipe.name}': each recipe needs its own name"
            )
        for backbone in recipe.backbones:
            if backbone in owners:
                raise RecipeError(
                    f"recipes {owners[backbone].where} and {recipe.where} both "
                    f"serve backbone {backbone}: each backbone needs one recipe"
                )
            owners[backbone] = recipe
        recipes[recipe.name] = recipe
    return recipes


def shipped_recipes() -> dict[str, Recipe]:
    """The recipes shipped with hubquant, by name."""
    return load_recipes(_shipped_files())


def discovered_recipes() -> dict[str, Recipe]:
    """Every recipe hubquant can use, by name: shipped ones, then those in the
    folders of ``HUBQUANT_RECIPE_PATH``, then those of ``hubquant.recipes``
    plugins (see :mod:`hubquant.discovery`)."""
    return load_recipes(_shipped_files() + env_files() + plugin_files())


def _shipped_files() -> list[RecipeFile]:
    return [RecipeFile(path, "shipped") for path in shipped_files("recipes").values()]


def recipe_for_backbone(
    class_names: list[str], extra: Recipe | None = None, known: dict | None = None
) -> Recipe:
    """The recipe serving the first of ``class_names`` (a backbone's MRO names).

    ``extra`` (a user's ``--recipe``) is used when it serves any of them, and is
    an error when it serves none; otherwise the ``known`` recipes (by default
    every recipe discovered) are searched.
    """
    if extra is not None:
        if set(extra.backbones) & set(class_names):
            return extra
        raise RecipeError(
            f"{extra.source}: recipe '{extra.name}' serves "
            f"{', '.join(extra.backbones)}, not backbone {class_names[0]}. "
            f"Received: backbones={show(list(extra.backbones))}"
        )
    known = discovered_recipes() if known is None else known
    owners = {b: r for r in known.values() for b in r.backbones}
    for name in class_names:
        if name in owners:
            return owners[name]
    raise RecipeError(
        f"no recipe for backbone {class_names[0]}: known recipes serve "
        f"{sorted(owners)}. Pass --recipe FILE.yaml to use your own."
    )


def get_recipe(name_or_path: str | Path) -> Recipe:
    """A known recipe by name (``gemma``, ``gemma.yaml``) or a recipe file."""
    if Path(name_or_path).is_file():
        return load_recipe(name_or_path)
    known = discovered_recipes()
    name = str(name_or_path).removesuffix(".yaml")
    if name not in known:
        raise RecipeError(
            f"recipe '{name_or_path}' not found: not a file and not a known "
            f"recipe (known: {', '.join(sorted(known))})"
        )
    return known[name]


def _string(data: dict, key: str, where: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise RecipeError(message(where, key, "expected a non-empty string", value))
    return value


def _dotted(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not _DOTTED.fullmatch(value):
        expected = "expected a dotted attribute path such as 'attention.query_dense'"
        raise RecipeError(message(where, key, expected, value))
    return value


def _backbones(value: object, source: str) -> tuple[str, ...]:
    ok = isinstance(value, list) and value
    if not ok or not all(isinstance(v, str) and v.isidentifier() for v in value):
        expected = "expected a non-empty list of KerasHub backbone class names"
        raise RecipeError(message(source, "backbones", expected, value))
    return tuple(value)


def _roles(value: object, source: str) -> tuple[RoleSpec, ...]:
    if not isinstance(value, dict) or not value:
        expected = "expected a non-empty mapping of role name to role spec"
        raise RecipeError(message(source, "roles", expected, value))
    specs = tuple(_role(role, spec, source) for role, spec in value.items())
    _check_distinct(specs, source)
    return specs


def _role(role: object, raw: object, source: str) -> RoleSpec:
    where = f"{source}: role '{role}'"
    if role not in KNOWN_ROLES:
        raise RecipeError(
            f"{where}: unknown role: expected one of {', '.join(KNOWN_ROLES)}. "
            f"Received: role={show(role)}"
        )
    raw = check_mapping(raw, ROLE_KEYS, where, role, RecipeError, empty_ok=False)
    scope = _choice(raw, "scope", SCOPES, where) or "block"
    return RoleSpec(
        role=role,
        path=_dotted(raw, "path", where),
        scope=scope,
        hf=_hf_name(raw.get("hf"), scope, where),
        layer=_choice(raw, "layer", LAYER_NAMES, where),
        part=_choice(raw, "part", PARTS, where) or "forward",
        matrices=_matrices(raw.get("matrices"), where),
        optional=_flag(raw.get("optional"), "optional", where),
        input_norm=_block_path(raw, "input_norm", scope, where),
        input_from=_block_path(raw, "input_from", scope, where),
    )


def _block_path(raw: dict, key: str, scope: str, where: str) -> str | None:
    """A path from the block (``input_norm``, ``input_from``), block roles only."""
    if raw.get(key) is None:
        return None
    if scope != "block":
        expected = f"expected no {key} on a backbone-scope role"
        raise RecipeError(message(where, key, expected, raw[key]))
    return _dotted(raw, key, where)


def _matrices(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) and _NAME.fullmatch(v) for v in value)
    )
    if not ok:
        expected = "expected a list of attribute names of [experts, in, out] weights"
        raise RecipeError(message(where, "matrices", expected, value))
    return tuple(value)


def _flag(value: object, key: str, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RecipeError(message(where, key, "expected true or false", value))
    return value


def _choice(raw: dict, key: str, accepted: tuple, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and value not in accepted:
        expected = f"expected one of {', '.join(accepted)}"
        raise RecipeError(message(where, key, expected, value))
    return value


def _hf_name(value: object, scope: str, where: str) -> str | None:
    """Check ``{block}`` appears in a block role's HF name and only there."""
    if value is None:
        return None
    fields = _format_fields(value) if isinstance(value, str) else None
    wanted = {"block"} if scope == "block" else set()
    if fields != wanted:
        if scope == "block":
            expected = "expected a tensor name with a '{block}' placeholder"
        else:
            expected = "expected a tensor name without placeholders (scope backbone)"
        raise RecipeError(message(where, "hf", expected, value))
    return value


def _format_fields(text: str) -> set[str] | None:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError:
        return None


def _check_distinct(specs: tuple[RoleSpec, ...], source: str) -> None:
    """Two roles must not name the same layer (and part)."""
    seen: dict[tuple, str] = {}
    for spec in specs:
        key = (spec.scope, spec.path, spec.part)
        if key in seen:
            where = f"{source}: role '{spec.role}'"
            expected = f"expected a layer no other role uses (role '{seen[key]}' does)"
            raise RecipeError(message(where, "path", expected, spec.path))
        seen[key] = spec.role
