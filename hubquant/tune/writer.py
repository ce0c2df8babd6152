"""The tuned choice as an ordinary config: readable, editable, shareable."""

from __future__ import annotations

import re
from collections import Counter

from hubquant.plan import PlanEntry
from hubquant.tune.candidates import Candidate

_PLAIN_ROLE = re.compile(r"[A-Za-z0-9_.]+")  # no glob characters: matches itself only
_ROUTERS = (
    '  - match: {role: "moe.*router"}   # routers pick experts: keep them exact\n'
    "    mode: none\n"
    "    optional: true\n"
)


def config_text(entries: list[PlanEntry], chosen: list[Candidate], header: list[str]) -> str:
    """A config giving each entry its candidate: the commonest as ``default``,
    one rule per role and candidate otherwise (by block list, or by path where
    a role is not one layer per block)."""
    default = Counter(chosen).most_common(1)[0][0]
    per_block = Counter((e.role, e.block) for e in entries)
    groups: dict[tuple, list[PlanEntry]] = {}
    for entry, c in zip(entries, chosen, strict=True):
        if c == default:
            continue
        plain = _PLAIN_ROLE.fullmatch(entry.role) and per_block[(entry.role, entry.block)] == 1
        key = (entry.role, c) if plain else (None, c, entry.path)
        groups.setdefault(key, []).append(entry)
    lines = [f"# {line}" for line in header]
    lines.append(f"default: {_options(default)}")
    lines.append("rules:")
    for key, members in groups.items():
        lines.append(f"  - match: {_match(key, members)}")
        lines.extend(f"    {k}: {_yaml(v)}" for k, v in key[1].options().items())
    return "\n".join(lines) + "\n" + _ROUTERS


def _match(key: tuple, members: list[PlanEntry]) -> str:
    if key[0] is None:
        return "{path: " + _quoted(re.escape(key[2])) + "}"
    blocks = sorted(e.block for e in members if e.block is not None)
    if not blocks:
        return "{role: " + _quoted(key[0]) + "}"
    return "{role: " + _quoted(key[0]) + ", blocks: [" + ", ".join(map(str, blocks)) + "]}"


def _options(c: Candidate) -> str:
    return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in c.options().items()) + "}"


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
