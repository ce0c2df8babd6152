"""Mode configs: which quantization mode and options each layer role gets.

A config is a default plus ordered rules. A rule matches layers by role (glob),
block index or slice, and layer path (regex); the last matching rule wins, and
the options it does not set come from the default. See ``configs/*.yaml``.
"""

import dataclasses
import fnmatch
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from hubquant import patterns
from hubquant.calibrate.calibration import check_algorithm_options, parse_calibration
from hubquant.errors import ConfigError
from hubquant.shipped import shipped_files
from hubquant.yaml_data import check_mapping, message, read_text, read_yaml

# fmt: off
KNOWN_ROLES = (
    "attn.q", "attn.k", "attn.v", "attn.o", "attn.qkv",
    "mlp.gate", "mlp.up", "mlp.down", "mlp.gate_up", "moe.experts", "moe.router",
    "moe.shared.gate", "moe.shared.up", "moe.shared.down", "moe.shared_router",
    "embed", "embed.position", "lm_head", "pooler",
)
# fmt: on
MODES = ("none", "int8", "int4")
ALGORITHMS = ("rtn", "gptq", "awq", "imatrix")
OPTION_KEYS = ("mode", "group_size", "symmetric", "clip", "algorithm", "gptq", "awq")
MATCH_KEYS = ("role", "blocks", "path")
RULE_KEYS = ("match", *OPTION_KEYS, "optional")
TOP_KEYS = ("default", "rules", "calibration")
_ROLES = ", ".join(KNOWN_ROLES)
_SLICE = re.compile(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?")


@dataclass(frozen=True)
class Options:
    """How one layer is quantized. ``group_size`` -1 means one group per channel."""

    mode: str = "none"
    group_size: int = 128
    symmetric: bool = False
    algorithm: str = "rtn"
    # Per-algorithm settings as given (key, value) pairs; defaults filled later.
    gptq: tuple[tuple[str, object], ...] = ()
    awq: tuple[tuple[str, object], ...] = ()
    # int4 round-to-nearest: search each group's clipping range (False: each
    # group's own min and max)
    clip: bool = True

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data["clip"]:  # the default, shown only when off
            del data["clip"]
        return {k: v for k, v in data.items() if k not in ("gptq", "awq") or v}


@dataclass(frozen=True)
class Match:
    """Which layers a rule applies to; a missing criterion matches everything."""

    role: str | None = None
    blocks: tuple[int | str, ...] | None = None
    path: str | None = None

    def matches(self, role: str, block: int | None, num_blocks: int, path: str) -> bool:
        return (
            (self.role is None or fnmatch.fnmatchcase(role, self.role))
            and (self.blocks is None or _in_blocks(block, num_blocks, self.blocks))
            and (self.path is None or patterns.fullmatch(self.path, path))
        )

    def describe(self) -> str:
        """``role=attn.*, blocks=[0, -1, 2:5]``, or ``all layers``."""
        blocks = self.blocks and f"[{', '.join(str(b) for b in self.blocks)}]"
        shown = {"role": self.role, "blocks": blocks, "path": self.path}
        parts = [f"{key}={value}" for key, value in shown.items() if value is not None]
        return ", ".join(parts) or "all layers"


@dataclass(frozen=True)
class Rule:
    """One numbered rule (from 1) and the option keys it sets."""

    number: int
    match: Match
    settings: tuple[tuple[str, object], ...]
    optional: bool = False  # may match nothing (a rule for some families only)

    def describe(self) -> str:
        return f"rule {self.number} ({self.match.describe()})"


@dataclass(frozen=True)
class Config:
    """A validated mode config; ``text`` is the YAML as given, for saving."""

    source: str
    default: Options
    rules: tuple[Rule, ...]
    text: str
    calibration: object = None  # hubquant.calibrate.calibration.Calibration or None

    def resolve(
        self, role: str, block: int | None, num_blocks: int, path: str
    ) -> tuple[Options, Rule | None]:
        """Options for one layer, and the rule that set them (None: the default)."""
        for rule in reversed(self.rules):
            if rule.match.matches(role, block, num_blocks, path):
                return dataclasses.replace(self.default, **dict(rule.settings)), rule
        return self.default, None

    def check_blocks(self, num_blocks: int) -> None:
        """Refuse a block index that does not exist in a model with ``num_blocks``."""
        for rule in self.rules:
            for item in rule.match.blocks or ():
                if isinstance(item, int) and not -num_blocks <= item < num_blocks:
                    expected = (
                        f"block index {item} is out of range: this model has {num_blocks} "
                        f"blocks (indices {-num_blocks} to {num_blocks - 1})"
                    )
                    where = f"{self.source}: rule {rule.number}"
                    raise ConfigError(
                        message(where, "match.blocks", expected, list(rule.match.blocks))
                    )

    def unmatched(self, seen: set[int]) -> list[Rule]:
        """Rules, not marked optional, whose number is not in ``seen`` (numbers of
        rules that matched)."""
        return [r for r in self.rules if r.number not in seen and not r.optional]


def shipped_configs() -> dict[str, Path]:
    """Shipped configs by name (file stem)."""
    return shipped_files("configs")


def load_config(spec: str | Path) -> Config:
    """Read a config from a file path, or by shipped name (``int4``, ``int4.yaml``)."""
    path = Path(spec)
    if path.is_file():
        return parse_config(read_text(path, ConfigError), str(path))
    shipped = shipped_configs()
    name = str(spec).removesuffix(".yaml")
    if name not in shipped:
        raise ConfigError(
            f"config '{spec}' not found: not a file and not a shipped config "
            f"(shipped: {', '.join(shipped)})"
        )
    # Named by where it ships, not by this machine's install path.
    return parse_config(read_text(shipped[name], ConfigError), f"configs/{name}.yaml")


def parse_config(text: str, source: str) -> Config:
    """Validate config YAML ``text``; ``source`` names it in error messages."""
    data = read_yaml(text, source, ConfigError)
    data = check_mapping(data, TOP_KEYS, source, "config")
    where = f"{source}: default"
    default = check_mapping(data.get("default"), OPTION_KEYS, where, "default")
    rules = [] if data.get("rules") is None else data["rules"]
    if not isinstance(rules, list):
        raise ConfigError(message(source, "rules", "expected a list of rules", rules))
    options = Options(**_checked(default, _OPTION_CHECKS, where))
    parsed = tuple(_rule(raw, n, source) for n, raw in enumerate(rules, 1))
    calibration = parse_calibration(data.get("calibration"), source)
    return Config(source, options, parsed, text, calibration)


def _rule(raw: object, number: int, source: str) -> Rule:
    where = f"{source}: rule {number}"
    raw = check_mapping(raw, RULE_KEYS, where, "rule", empty_ok=False)
    settings = _checked(raw, _OPTION_CHECKS, where)
    match = check_mapping(raw.get("match"), MATCH_KEYS, where, "match", nested=True)
    match = _checked(match, _MATCH_CHECKS, where, "match.")
    blocks = tuple(match["blocks"]) if "blocks" in match else None
    rule_match = Match(match.get("role"), blocks, match.get("path"))
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        raise ConfigError(message(where, "optional", "expected true or false", optional))
    return Rule(number, rule_match, tuple(settings.items()), optional)


def _checked(raw: dict, checks: dict, where: str, prefix: str = "") -> dict:
    """The keys of ``raw`` that ``checks`` knows, each checked, in canonical order."""
    for key, check in checks.items():
        if key in raw and (expected := check(raw[key])):
            raise ConfigError(message(where, prefix + key, expected, raw[key]))
    checked = {key: raw[key] for key in checks if key in raw}
    for name in ("gptq", "awq"):
        if name in checked:
            checked[name] = check_algorithm_options(name, checked[name], where)
    return checked


def _unless(ok: object, expected: str) -> str | None:
    return None if ok else expected


def _is_group_size(value: object) -> bool:
    return type(value) is int and (value > 0 or value == -1)


def _is_block_item(item: object) -> bool:
    if type(item) is int:
        return True
    match = isinstance(item, str) and _SLICE.fullmatch(item)
    return bool(match) and (match.group(3) is None or int(match.group(3)) != 0)


def _regex_problem(path: object) -> str | None:
    if (why := patterns.problem(path)) is not None:
        return f"expected a regular expression over the layer path ({why})"
    return None


_OPTION_CHECKS = {
    "mode": lambda v: _unless(v in MODES, f"expected one of: {', '.join(MODES)}"),
    "group_size": lambda v: _unless(
        _is_group_size(v),
        "expected a positive integer, or -1 for one group per channel",
    ),
    "symmetric": lambda v: _unless(isinstance(v, bool), "expected true or false"),
    "clip": lambda v: _unless(isinstance(v, bool), "expected true or false"),
    "algorithm": lambda v: _unless(v in ALGORITHMS, f"expected one of: {', '.join(ALGORITHMS)}"),
    "gptq": lambda v: _unless(isinstance(v, dict), "expected a mapping of GPTQ options"),
    "awq": lambda v: _unless(isinstance(v, dict), "expected a mapping of AWQ options"),
}
_MATCH_CHECKS = {
    "role": lambda v: _unless(
        isinstance(v, str) and any(fnmatch.fnmatchcase(r, v) for r in KNOWN_ROLES),
        f"unknown role: expected a role or glob matching one of {_ROLES}",
    ),
    "blocks": lambda v: _unless(
        isinstance(v, list) and v and all(map(_is_block_item, v)),
        "expected a non-empty list of block indices (negative counts from the end)"
        " and/or 'start:stop' slices",
    ),
    "path": _regex_problem,
}


def _in_blocks(block: int | None, num_blocks: int, items: tuple) -> bool:
    blocks = range(num_blocks)
    return block is not None and any(block in blocks[_as_slice(i)] for i in items)


@functools.lru_cache(maxsize=256)
def _as_slice(item: int | str) -> slice:
    """Block index ``i`` as ``slice(i, i + 1)``; ``'a:b'`` as ``slice(a, b)``."""
    if isinstance(item, int):
        return slice(item, item + 1 or None)
    parts = _SLICE.fullmatch(item).groups()
    return slice(*(None if p is None else int(p) for p in parts))
