"""Read a compressed-tensors ``quantization_config`` into per-module schemes.

Matching follows compressed-tensors 0.20 (``utils/match.py``,
``quantization/lifecycle/apply.py``): a target or ignore entry matches a
module by exact name, by ``re:`` regex (``re.match``) or by class name
(``Linear``); a module matched by ``ignore`` stays float; when several
targets match, exact names win over regexes, regexes over class names, and
within a kind the lexically first; a target listed by two groups belongs to
the later one. Only what hubquant can hold is accepted: weight-only int4 /
int8 ``pack-quantized``, group / channel / tensor strategies, no activation
quantization, no activation-ordered groups (``g_idx``).
"""

from __future__ import annotations

from dataclasses import dataclass

from hubquant import patterns
from hubquant.errors import ArtefactError

METHOD = "compressed-tensors"
_FORMATS = ("pack-quantized", "mixed-precision")
_LINEAR_CLASSES = ("Linear", "Module")  # torch.nn.Linear's class names


@dataclass(frozen=True)
class Scheme:
    """How one config group quantizes a module's weight."""

    group: str  # the config group's name, for messages
    bits: int
    symmetric: bool
    strategy: str  # "group", "channel" or "tensor"
    group_size: int | None
    problem: str | None = None  # what hubquant cannot hold, if anything


@dataclass(frozen=True)
class QuantizationConfig:
    targets: dict  # target -> Scheme, in config order (later groups win)
    ignore: tuple[str, ...]
    source: str

    def scheme_for(self, module: str) -> Scheme | None:
        """The scheme a Linear module named ``module`` gets, or None (float)."""
        if any(_matches(module, t) for t in self.ignore):
            return None
        ordered = sorted(self.targets, key=lambda t: (t.startswith("re:"), t))
        named = [t for t in ordered if _match_name(module, t)]
        by_class = [t for t in ordered if t in _LINEAR_CLASSES and t not in named]
        matched = named + by_class
        return self.targets[matched[0]] if matched else None


def parse(qc: dict, source: str) -> QuantizationConfig:
    """Validate the config-wide fields; each group becomes a Scheme."""
    _refuse_features(qc, source)
    _check_shapes(qc, source)
    top_format = qc.get("format")
    targets: dict = {}
    for name, group in (qc.get("config_groups") or {}).items():
        scheme = _scheme(name, group, group.get("format") or top_format)
        for target in group.get("targets") or ():
            targets.pop(target, None)
            targets[target] = scheme
    return QuantizationConfig(targets, tuple(qc.get("ignore") or ()), source)


def _check_shapes(qc: dict, source: str) -> None:
    """Groups a mapping of mappings, targets and ignore lists of names or valid
    ``re:`` patterns, group sizes positive: one line naming the key otherwise."""
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups.values()):
        raise ArtefactError(
            f"{source}: quantization_config.config_groups must map group names to "
            f"groups. Received: {type(groups).__name__}"
        )
    lists = {f"config_groups.{n}.targets": g.get("targets") for n, g in groups.items()}
    lists["ignore"] = qc.get("ignore")
    for key, names in lists.items():
        _check_names(names or [], f"{source}: quantization_config.{key}")
    for name, group in groups.items():
        size = (group.get("weights") or {}).get("group_size")
        if size is not None and not (type(size) is int and size > 0):
            raise ArtefactError(
                f"{source}: quantization_config.config_groups.{name}.weights.group_size "
                f"must be a positive integer. Received: {size!r}"
            )


def _check_names(names, where: str) -> None:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ArtefactError(f"{where} must be a list of module names. Received: {names!r}")
    for name in names:
        why = name.startswith("re:") and patterns.problem(name[3:])
        if why:
            raise ArtefactError(f"{where}: {name!r} is not a usable regular expression ({why}).")


def _refuse_features(qc: dict, source: str) -> None:
    checks = {
        "quantization_status": (qc.get("quantization_status", "compressed") == "compressed"),
        "format": qc.get("format") in (*_FORMATS, None),
        "kv_cache_scheme": qc.get("kv_cache_scheme") is None,
        "sparsity_config": not _enabled(qc.get("sparsity_config")),
        "transform_config": not _enabled(qc.get("transform_config")),
    }
    for key, ok in checks.items():
        if not ok:
            raise ArtefactError(
                f"{source}: quantization_config uses {key}={qc.get(key)!r}; hubquant imports "
                "compressed, weight-only int4/int8 pack-quantized checkpoints only."
            )


def _enabled(value) -> bool:
    if not value:
        return False
    return not (isinstance(value, dict) and value.get("format") in (None, "dense"))


def _scheme(name: str, group: dict, fmt: str | None) -> Scheme:
    w = group.get("weights") or {}
    problem = _problem(group, w, fmt)
    return Scheme(
        group=name,
        bits=int(w.get("num_bits") or 0),
        symmetric=bool(w.get("symmetric", True)),
        strategy=str(w.get("strategy")),
        group_size=w.get("group_size"),
        problem=problem,
    )


def _problem(group: dict, w: dict, fmt: str | None) -> str | None:
    """What in a group hubquant cannot hold, in a few words; None if nothing."""
    for kind in ("input_activations", "output_activations"):
        if group.get(kind):
            a = group[kind]
            return f"{kind} quantization ({a.get('type')}{a.get('num_bits')})"
    if fmt != "pack-quantized":
        return f"format {fmt}"
    if not w:
        return "no weight quantization"
    if w.get("type") != "int":
        return f"{w.get('type')}{w.get('num_bits')} weights"
    if w.get("num_bits") not in (4, 8):
        return f"int{w.get('num_bits')} weights"
    if w.get("strategy") not in ("group", "channel", "tensor"):
        return f"strategy {w.get('strategy')}"
    if w.get("dynamic"):
        return "dynamic weight scales"
    if w.get("actorder") == "group":
        return "actorder group (g_idx)"
    if w.get("num_bits") == 8 and not w.get("symmetric", True):
        return "asymmetric int8 (hubquant's int8 is symmetric)"
    return None


def _matches(module: str, target: str) -> bool:
    return _match_name(module, target) or target in _LINEAR_CLASSES


def _match_name(module: str, target: str) -> bool:
    if target.startswith("re:"):
        return patterns.match(target[3:], module)
    return target == module
