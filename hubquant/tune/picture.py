"""Where the bits went: blocks x roles, as a text table."""

from __future__ import annotations

_SHORT = {"none": "float", "int8": "8"}


def choice_table(rows: list[dict]) -> str:
    """One line per block (and one for layers outside the blocks), one column
    per role: ``8`` (int8), ``4/64`` (int4 groups of 64, ``s`` symmetric)."""
    roles = list(dict.fromkeys(r["role"] for r in rows))
    cells: dict = {}
    for r in rows:
        cells.setdefault(r["block"], {})[r["role"]] = _short(r["choice"])
    width = max(6, *(len(role) for role in roles))
    lines = ["block  " + " ".join(f"{role:>{width}s}" for role in roles)]
    for block in sorted(cells, key=lambda b: (b is not None, b if b is not None else -1)):
        name = "-" if block is None else str(block)
        line = " ".join(f"{cells[block].get(role, ''):>{width}s}" for role in roles)
        lines.append(f"{name:>5s}  {line}")
    return "\n".join(lines)


def _short(name: str) -> str:
    if name in _SHORT:
        return _SHORT[name]
    group = name.split("_g")[1]
    return "4/" + group.replace("_sym", "s")
