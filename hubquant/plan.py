"""The Plan: every weight-bearing layer a recipe names, and what to do with it.

Resolved once from (model, recipe, config), printed by ``--dry-run``, saved
with the artefact and used again at load time. Nothing downstream re-derives
what the config meant.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from hubquant import quantizers
from hubquant.config import ALGORITHMS, MODES, Config
from hubquant.errors import ArtefactError, ConfigError, RecipeError
from hubquant.paths import layer_list, variable_of, walk
from hubquant.recipe import Recipe, RoleSpec

FORMAT_VERSION = 1
_ITEMSIZES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
_DTYPES = {*_ITEMSIZES, "mixed_float16", "mixed_bfloat16"}  # dtype policy names


@dataclass(frozen=True)
class PlanEntry:
    """One matrix of one layer: where it is, its role, and how it is quantized."""

    path: str  # Keras layer path, e.g. "decoder_block_0/attention/query"
    attr: str  # attribute path from the backbone, e.g. "transformer_layers.0.attention.query_dense"
    role: str
    block: int | None
    matrix: str  # "kernel", "embeddings" or "reverse"
    layer: str  # hubquant layer class
    mode: str
    group_size: int
    symmetric: bool
    algorithm: str
    source_dtype: str
    shape: tuple[int, int]  # canonical [N, K]
    kernel_shape: tuple[int, ...]  # the float variable's shape in Keras layout
    rule: int | None  # number of the rule that decided it; None = default
    hf: str | None = None
    # GPTQ/AWQ settings (defaults filled in); None for round-to-nearest.
    algorithm_options: dict | None = None
    # The norm layer (attribute path) whose output is this layer's input, from
    # the recipe's ``input_norm``; and, once AWQ folded its scales into that
    # norm (or the ``input_from`` projection), its path in ``folded_into``
    # (the layer then holds no input scale).
    input_norm: str | None = None
    folded_into: str | None = None
    # From the recipe's ``input_from``: the projection (attribute path) whose
    # output rows AWQ may scale instead of keeping an input scale here.
    input_from: str | None = None

    @property
    def is_bank(self) -> bool:
        """A matrix of a mixture-of-experts bank (``[experts, in, out]``)."""
        return len(self.kernel_shape) == 3 and self.matrix != "kernel"

    @property
    def holds_input_scale(self) -> bool:
        """AWQ left its per-input-channel scale in the layer (not folded)."""
        held = self.algorithm == "awq" and self.folded_into is None
        return held and (self.matrix == "kernel" or self.is_bank)

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def bytes_before(self) -> int:
        return self.params * _itemsize(self.source_dtype)

    @property
    def bytes_after(self) -> int:
        n, k = self.shape
        if self.mode == "none":
            return self.bytes_before
        if self.mode == "int8":
            return n * k + 4 * n
        groups = quantizers.num_groups(k, self.group_size)
        zero = 0 if self.symmetric else n * groups
        return n * -(-k // 2) + 4 * n * groups + zero

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "shape": list(self.shape),
            "kernel_shape": list(self.kernel_shape),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PlanEntry:
        shapes = {k: tuple(data[k]) for k in ("shape", "kernel_shape")}
        return cls(**{**data, **shapes})


def _dims(count: tuple[int, ...]):
    def check(v) -> bool:
        ok = isinstance(v, list) and len(v) in count
        return ok and all(type(d) is int and 0 < d < 2**40 for d in v)

    return check


def _optional(kind: type):
    return lambda v: v is None or isinstance(v, kind)


# A saved entry's keys and what each must hold (a Plan in a shared file is data);
# keys with a default in PlanEntry may be absent.
_ENTRY_DEFAULTS = {f.name for f in fields(PlanEntry) if f.default is not MISSING}
_ENTRY_CHECKS = {
    "path": (lambda v: isinstance(v, str), "a string"),
    "attr": (lambda v: isinstance(v, str), "a string"),
    "role": (lambda v: isinstance(v, str), "a string"),
    "block": (lambda v: v is None or (type(v) is int and v >= 0), "a block index or null"),
    "matrix": (lambda v: isinstance(v, str), "a string"),
    "layer": (lambda v: isinstance(v, str), "a string"),
    "mode": (lambda v: v in MODES, f"one of {', '.join(MODES)}"),
    "group_size": (lambda v: type(v) is int and (v > 0 or v == -1), "a positive integer or -1"),
    "symmetric": (lambda v: isinstance(v, bool), "true or false"),
    "algorithm": (lambda v: v in ALGORITHMS, f"one of {', '.join(ALGORITHMS)}"),
    "source_dtype": (lambda v: v in _DTYPES, f"one of {', '.join(sorted(_DTYPES))}"),
    "shape": (_dims((2,)), "two positive sizes"),
    "kernel_shape": (_dims((2, 3)), "two or three positive sizes"),
    "rule": (lambda v: v is None or (type(v) is int and v > 0), "a rule number or null"),
    "hf": (_optional(str), "a string or null"),
    "algorithm_options": (_optional(dict), "a mapping or null"),
    "input_norm": (_optional(str), "a string or null"),
    "folded_into": (_optional(str), "a string or null"),
    "input_from": (_optional(str), "a string or null"),
}


def _checked_entry(data: object, number: int) -> dict:
    where = f"the saved Plan's entry {number}"
    if not isinstance(data, dict):
        raise ArtefactError(f"{where} is {type(data).__name__}; expected a mapping.")
    unknown = sorted(data.keys() - _ENTRY_CHECKS.keys())
    if unknown:
        raise ArtefactError(f"{where} has unknown key {unknown[0]!r}.")
    for key, (check, expected) in _ENTRY_CHECKS.items():
        if key not in data and key in _ENTRY_DEFAULTS:
            continue
        if key not in data or not check(data[key]):
            raise ArtefactError(f"{where} has {key}={data.get(key)!r}; expected {expected}.")
    return data


@dataclass(frozen=True)
class Plan:
    recipe: str
    backbone: str
    dtype: str  # the backbone's float dtype policy name
    entries: tuple[PlanEntry, ...]
    config_source: str = ""
    unmatched_rules: tuple[str, ...] = field(default=())
    config_text: str = ""  # the config as given, so an artefact can be redone
    recipe_text: str = ""
    notes: tuple[str, ...] = field(default=(), compare=False)  # from applying it; not saved

    @property
    def quantized(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.mode != "none")

    def layers(self) -> dict[str, list[PlanEntry]]:
        """Quantized entries grouped by layer attribute path, in plan order."""
        grouped: dict[str, list[PlanEntry]] = {}
        for entry in self.quantized:
            grouped.setdefault(entry.attr, []).append(entry)
        return grouped

    def totals(self) -> dict[str, int]:
        before = sum(e.bytes_before for e in self.entries)
        after = sum(e.bytes_after for e in self.entries)
        return {
            "params": sum(e.params for e in self.entries),
            "bytes_before": before,
            "bytes_after": after,
        }

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "recipe": self.recipe,
            "backbone": self.backbone,
            "dtype": self.dtype,
            "config_source": self.config_source,
            "unmatched_rules": list(self.unmatched_rules),
            "config_text": self.config_text,
            "recipe_text": self.recipe_text,
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        version = data.get("format_version", FORMAT_VERSION) if isinstance(data, dict) else None
        if type(version) is not int:
            raise ArtefactError(f"the saved Plan's format_version is {version!r}; expected 1.")
        for key in ("recipe", "backbone", "dtype"):
            if not isinstance(data.get(key), str):
                raise ArtefactError(
                    f"the saved Plan's {key} is {data.get(key)!r}; expected a name."
                )
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise ArtefactError("the saved Plan has no list of entries.")
        if version > FORMAT_VERSION:
            raise ArtefactError(
                f"plan format version {version} is newer than this hubquant "
                f"understands ({FORMAT_VERSION}). Upgrade hubquant."
            )
        return cls(
            recipe=data["recipe"],
            backbone=data["backbone"],
            dtype=data["dtype"],
            config_source=data.get("config_source", ""),
            unmatched_rules=tuple(data.get("unmatched_rules", ())),
            config_text=data.get("config_text", ""),
            recipe_text=data.get("recipe_text", ""),
            entries=tuple(
                PlanEntry.from_dict(_checked_entry(e, i)) for i, e in enumerate(entries, 1)
            ),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)


def resolve_plan(backbone, recipe: Recipe, config: Config, strict: bool = False) -> Plan:
    """Match a built backbone against a recipe and a config.

    Fails before anything changes when the recipe does not fit the model.
    """
    from hubquant.layers.registry import matrix_shape, replacement_for, variable_shape

    blocks = _blocks(backbone, recipe)
    config.check_blocks(len(blocks))
    entries, used_rules = [], set()
    for spec in recipe.roles:
        for block, owner, where in _owners(backbone, blocks, spec, recipe.blocks):
            layer = _find(owner, spec.path, spec, where, recipe)
            if layer is None:
                continue  # an optional role this block does not have
            for matrix in spec.matrices:
                if variable_of(layer, matrix) is None:
                    raise RecipeError(
                        f"recipe '{recipe.name}' ({recipe.source}): role '{spec.role}': "
                        f"matrix '{matrix}' is not a weight of {type(layer).__name__} at "
                        f"'{layer.path}'; the recipe does not fit this model."
                    )
            layer_cls = replacement_for(layer, spec, recipe)
            for path in (spec.input_norm, spec.input_from):
                if path is not None:
                    _find(owner, path, spec, where, recipe)  # must exist
            options, rule = config.resolve(spec.role, block, len(blocks), layer.path)
            if options.mode == "int8":  # int8 is always symmetric, one scale per channel
                options = replace(options, group_size=-1, symmetric=True)
            used_rules.update(
                r.number
                for r in config.rules
                if r.match.matches(spec.role, block, len(blocks), layer.path)
            )
            for matrix in spec.matrices or (_matrix_name(layer, spec),):
                entries.append(
                    PlanEntry(
                        path=layer.path,
                        attr=f"{where}.{spec.path}" if where else spec.path,
                        role=spec.role,
                        block=block,
                        matrix=matrix,
                        layer=layer_cls.__name__,
                        mode=options.mode,
                        group_size=options.group_size,
                        symmetric=options.symmetric,
                        algorithm=options.algorithm,
                        source_dtype=_source_dtype(layer),
                        shape=matrix_shape(layer, matrix),
                        kernel_shape=variable_shape(layer, matrix),
                        rule=None if rule is None else rule.number,
                        hf=None if spec.hf is None else spec.hf.replace("{block}", str(block)),
                        algorithm_options=_algorithm_options(options),
                        input_norm=_block_attr(spec.input_norm, where),
                        input_from=_block_attr(spec.input_from, where),
                    )
                )
    entries.sort(key=lambda e: -1 if e.block is None else e.block)  # block by block
    entries = _merge_shared(entries, config)
    unmatched = tuple(r.describe() for r in config.unmatched(used_rules))
    if strict and unmatched:
        raise ConfigError(
            f"{config.source}: {unmatched[0]} matched no layer of this model "
            f"(recipe '{recipe.name}'); --strict makes that an error."
        )
    return Plan(
        recipe=recipe.name,
        backbone=type(backbone).__name__,
        dtype=_backbone_dtype(backbone),
        entries=tuple(entries),
        config_source=config.source,
        unmatched_rules=unmatched,
        config_text=config.text,
        recipe_text=recipe.text,
    )


def _block_attr(path: str | None, where: str) -> str | None:
    if path is None:
        return None
    return f"{where}.{path}" if where else path


def _algorithm_options(options) -> dict | None:
    if options.mode == "none" or options.algorithm not in ("gptq", "awq"):
        return None  # rtn and imatrix take no options
    from hubquant.calibrate.calibration import algorithm_options

    return algorithm_options(options.algorithm, dict(getattr(options, options.algorithm)))


def _blocks(backbone, recipe: Recipe) -> list:
    blocks = layer_list(backbone, recipe.blocks)
    if blocks is None:
        raise RecipeError(
            f"recipe '{recipe.name}' ({recipe.source}): backbone "
            f"{type(backbone).__name__} has no block list '{recipe.blocks}'."
        )
    return blocks


def _owners(backbone, blocks, spec: RoleSpec, blocks_attr: str):
    if spec.scope == "backbone":
        yield None, backbone, ""
        return
    for i, block in enumerate(blocks):
        yield i, block, f"{blocks_attr}.{i}"


def _find(owner, dotted: str, spec: RoleSpec, where: str, recipe: Recipe):
    obj = walk(owner, dotted)
    if obj is None and not spec.optional:
        place = f"block {where.rsplit('.', 1)[-1]}" if where else "the backbone"
        raise RecipeError(
            f"recipe '{recipe.name}' ({recipe.source}): role '{spec.role}': path "
            f"'{dotted}' not found in {place} "
            f"({type(owner).__name__}); the recipe does not fit this model."
        )
    return obj


def _matrix_name(layer, spec: RoleSpec) -> str:
    if spec.part == "reverse":
        return "embeddings" if getattr(layer, "tie_weights", True) else "reverse"
    if hasattr(layer, "input_dim") and hasattr(layer, "output_dim"):
        return "embeddings"
    return "kernel"


def _merge_shared(entries: list[PlanEntry], config: Config) -> list[PlanEntry]:
    """Entries naming the same matrix (a tied embedding and LM head) must agree."""
    by_matrix: dict[tuple[str, str], PlanEntry] = {}
    merged = []
    for entry in entries:
        key = (entry.attr, entry.matrix)  # paths can repeat across blocks (SmolLM3)
        first = by_matrix.get(key)
        if first is None:
            by_matrix[key] = entry
            merged.append(entry)
            continue
        winner = _agree(first, entry, config)
        merged[merged.index(first)] = winner
        by_matrix[key] = winner
    return merged


def _agree(a: PlanEntry, b: PlanEntry, config: Config) -> PlanEntry:
    """One entry for a shared matrix; an explicit rule beats the default."""

    def opts(e):
        return (e.mode, e.group_size, e.symmetric, e.algorithm)

    if a.rule is not None and b.rule is not None and opts(a) != opts(b):
        raise ConfigError(
            f"{config.source}: rule {a.rule} sets role '{a.role}' to {opts(a)[:3]} but "
            f"rule {b.rule} sets role '{b.role}' to {opts(b)[:3]}; they are one tied "
            f"table ('{a.path}'). Give both roles the same mode."
        )
    chosen = b if a.rule is None and b.rule is not None else a
    return replace(chosen, role=f"{a.role}+{b.role}", hf=a.hf or b.hf)


def _source_dtype(layer) -> str:
    from hubquant.layers import source_dtype_of

    return source_dtype_of(layer)


def _backbone_dtype(backbone) -> str:
    from keras.dtype_policies import DTypePolicyMap

    policy = backbone.dtype_policy
    if isinstance(policy, DTypePolicyMap):
        policy = policy.default_policy
    return policy.name


def _itemsize(dtype: str) -> int:
    return _ITEMSIZES.get(dtype, 4)
