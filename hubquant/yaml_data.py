"""Shared YAML files read as data: bounded parsing, checked mappings, one-line errors.

Configs, recipes and calibration sections are all read through here: a file
from a stranger never runs code (``safe_load``), never expands past a fixed
size or depth, and every problem reads ``{where}: key '{key}': {expected}``.
"""

from pathlib import Path

import yaml

from hubquant.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.id != "scalar" or key_node.tag.endswith(":merge"):
                continue  # the base class handles merges and reports complex keys
            key = self.construct_object(key_node)
            if key in seen:
                why = f"duplicate key {key!r} (a missing '-' can merge two list items)"
                raise yaml.constructor.ConstructorError(None, None, why, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_YAML_VALUES = 100_000  # values after aliases are expanded (a config holds hundreds)
MAX_YAML_DEPTH = 64  # nested lists and mappings


def read_yaml(text: str, source: str, error: type[Exception]) -> object:
    """Parse YAML safely; syntax errors become ``error`` with line and column.

    Before anything is built, the event stream (read without recursion) is
    checked for depth and for the number of values the aliases expand to, so a
    small file can neither exhaust memory ("billion laughs") nor the stack.
    """
    try:
        _check_bounds(text, source, error)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        if mark is None:
            raise error(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
        line = (text.splitlines()[mark.line :] or [""])[0]
        raise error(
            f"{source}: line {mark.line + 1}, column {mark.column + 1}: invalid YAML: "
            f"{exc.problem or exc.context}. Received: text={show(line)}"
        ) from None


def _check_bounds(text: str, source: str, error: type[Exception]) -> None:
    sizes: dict[str, int] = {}  # anchor -> values its node expands to
    open_nodes: list[list] = []  # [anchor, values so far] of each open list or mapping
    for event in yaml.parse(text, Loader=_StrictLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([event.anchor, 1])
            if len(open_nodes) > MAX_YAML_DEPTH:
                raise error(
                    f"{source}: line {event.start_mark.line + 1}: YAML nested deeper than "
                    f"{MAX_YAML_DEPTH} levels; hubquant refuses it."
                )
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, size = open_nodes.pop()
        elif isinstance(event, yaml.AliasEvent):
            anchor, size = None, sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if open_nodes:  # a node's values were counted while it was open
            open_nodes[-1][1] += size
        if open_nodes and open_nodes[-1][1] > MAX_YAML_VALUES:
            raise error(
                f"{source}: line {event.start_mark.line + 1}: YAML expands to more than "
                f"{MAX_YAML_VALUES:,} values through aliases; hubquant refuses it."
            )


def read_text(path: Path, error: type[Exception]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}. Received: path='{path}'") from None


def check_mapping(
    raw: object,
    allowed: tuple,
    where: str,
    name: str,
    error: type[Exception] = ConfigError,
    nested: bool = False,
    empty_ok: bool = True,
) -> dict:
    """``raw`` (None: empty) as a mapping whose keys are all in ``allowed``.

    ``nested``: ``raw`` is the value of key ``name`` (its keys read ``name.key``).
    """
    if raw is None and empty_ok:
        return {}
    expected = f"expected a mapping with keys {', '.join(allowed)}"
    if not isinstance(raw, dict):
        head = f"{where}: key '{name}'" if nested else where
        raise error(f"{head}: {expected}. Received: {name}={show(raw)}")
    for key, value in raw.items():
        if key not in allowed:
            expected = f"unknown key; expected one of {', '.join(allowed)}"
            key = f"{name}.{key}" if nested else key
            raise error(message(where, key, expected, value))
    return raw


def show(value: object) -> str:
    """``repr(value)``, shortened to 80 characters (it is one line already)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def message(where: str, key: str, expected: str, value: object) -> str:
    """``{where}: key '{key}': {expected}. Received: {key}={value!r}``."""
    return f"{where}: key '{key}': {expected}. Received: {key}={show(value)}"
