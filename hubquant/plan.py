"""The Plan: every weight-bearing layer a recipe names, and what to do with it.

Resolved once from (model, recipe, config), printed by ``--dry-run``, saved
with the artefact and used again at load time. Nothing downstream re-derives
what the config meant.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields

from hubquant import quantizers
from hubquant.calibrate.calibration import Calibration, parse_calibration
from hubquant.config import ALGORITHMS, MODES, parse_config
from hubquant.errors import ArtefactError, ConfigError

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
    # Round-to-nearest int4: whether each group's clipping range is searched
    # (the config's ``clip``); saved only when off.
    clip: bool = True

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
        return self.params * itemsize(self.source_dtype)

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
        data = {**asdict(self), "shape": list(self.shape), "kernel_shape": list(self.kernel_shape)}
        if data["clip"]:  # the default (and all a Plan saved before it held)
            del data["clip"]
        return data

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
    "clip": (lambda v: isinstance(v, bool), "true or false"),
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
    # The config's calibration section, resolved (files replaced by --calibration).
    calibration: Calibration | None = None
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
            **({} if self.calibration is None else {"calibration": self.calibration.to_dict()}),
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
            calibration=_saved_calibration(data),
            entries=tuple(
                PlanEntry.from_dict(_checked_entry(e, i)) for i, e in enumerate(entries, 1)
            ),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)


def _saved_calibration(data: dict) -> Calibration | None:
    """The Plan's calibration; a Plan saved before it carried one has it in its config."""
    try:
        if "calibration" in data:
            return parse_calibration(data["calibration"], "the saved Plan")
        text = data.get("config_text")
        return parse_config(text, "the saved Plan's config").calibration if text else None
    except ConfigError as e:
        raise ArtefactError(str(e)) from None


def itemsize(dtype: str) -> int:
    """Bytes per value of a float dtype name (4 for one not listed)."""
    return _ITEMSIZES.get(dtype, 4)
