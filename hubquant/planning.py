"""Resolving a model's Plan: which layer gets which quantization, from (model, recipe, config).

Nothing here changes the model; the Plan it returns is what every later step
(surgery, quantization, calibration, saving) follows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hubquant.config import Config, load_config
from hubquant.errors import ConfigError, HubquantError, RecipeError
from hubquant.paths import backbone_of, layer_list, variable_of, walk
from hubquant.plan import Plan, PlanEntry
from hubquant.recipe import Recipe, RoleSpec, get_recipe, recipe_for_backbone


def plan_for(
    model,
    config: Config | str | Path,
    recipe: Recipe | str | Path | None = None,
    strict: bool = False,
) -> Plan:
    """Resolve the Plan for a float model without changing it."""
    _require_float(model)
    backbone = backbone_of(model)
    if not isinstance(config, Config):
        config = load_config(config)
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = get_recipe(recipe)
    names = [c.__name__ for c in type(backbone).__mro__]
    recipe = recipe_for_backbone(names, extra=recipe)
    return resolve_plan(backbone, recipe, config, strict=strict)


def is_quantized(model) -> bool:
    """Quantized by hubquant: its backbone has a registered hubquant class."""
    return getattr(type(backbone_of(model)), "_hubquant_base", None) is not None


def _require_float(model) -> None:
    if is_quantized(model):
        raise HubquantError(
            f"{type(model).__name__} is already quantized by hubquant; quantize "
            "the float model instead."
        )


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
                        clip=options.clip or options.mode != "int4",
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
        calibration=config.calibration,
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
