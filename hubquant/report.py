"""Plain-text tables of a Plan: what ``--dry-run`` prints and what apply reports."""

from __future__ import annotations

from hubquant.plan import Plan


def plan_table(plan: Plan) -> str:
    """One row per layer: path, role, mode, options, parameters, bytes."""
    rows = [("path", "role", "mode", "group", "sym", "params", "before", "after")]
    for e in plan.entries:
        group = "-" if e.mode != "int4" else ("chan" if e.group_size == -1 else str(e.group_size))
        sym = "-" if e.mode == "none" else ("yes" if e.symmetric else "no")
        rows.append(
            (
                e.path,
                e.role,
                e.mode,
                group,
                sym,
                f"{e.params:,}",
                _size(e.bytes_before),
                _size(e.bytes_after),
            )
        )
    return _format(rows) + "\n" + totals_line(plan) + _unmatched(plan)


def role_table(plan: Plan, seconds: dict | None = None, other: dict | None = None) -> str:
    """Per role and in total: parameters, bytes before and after, ratio, time;
    then the time of work that is no role's (``other``: what -> seconds)."""
    data = role_report(plan, seconds, other)
    rows = [("role", "params", "before", "after", "ratio", "time")]
    for role, row in data["roles"].items():
        rows.append((role, *_sizes(row), _seconds(row["seconds"])))
    for what, t in data["other_seconds"].items():
        rows.append((what, "", "", "", "", _seconds(t)))
    rows.append(("total", *_sizes(data["total"]), _seconds(data["total"]["seconds"])))
    return _format(rows)


def role_report(plan: Plan, seconds: dict | None = None, other: dict | None = None) -> dict:
    """The role table as data, for ``--report FILE``: ``seconds`` per role
    (quantizing its layers), ``other_seconds`` (generating calibration text,
    running blocks on it, reading weights) and the total of both."""
    roles: dict[str, dict] = {}
    for e in plan.entries:
        row = roles.setdefault(e.role, {"params": 0, "bytes_before": 0, "bytes_after": 0})
        row["params"] += e.params
        row["bytes_before"] += e.bytes_before
        row["bytes_after"] += e.bytes_after
    for role, row in roles.items():
        row["ratio"] = row["bytes_before"] / max(1, row["bytes_after"])
        row["seconds"] = (seconds or {}).get(role)
    totals = plan.totals()
    totals["ratio"] = totals["bytes_before"] / max(1, totals["bytes_after"])
    timed = [*(seconds or {}).values(), *(other or {}).values()]
    totals["seconds"] = sum(timed) if seconds else None
    totals["largest_block_bytes"] = largest_block_bytes(plan)
    return {
        "recipe": plan.recipe,
        "roles": roles,
        "other_seconds": dict(other or {}),
        "total": totals,
    }


def _sizes(row: dict) -> tuple[str, ...]:
    return (
        f"{row['params']:,}",
        _size(row["bytes_before"]),
        _size(row["bytes_after"]),
        f"{row['ratio']:.2f}x",
    )


def _seconds(t: float | None) -> str:
    return "-" if t is None else f"{t:.2f}s"


def largest_block_bytes(plan: Plan) -> int:
    """Float bytes of the planned matrices of the largest transformer block."""
    blocks: dict[int, int] = {}
    for e in plan.entries:
        if e.block is not None:
            blocks[e.block] = blocks.get(e.block, 0) + e.bytes_before
    return max(blocks.values(), default=0)


def totals_line(plan: Plan) -> str:
    t = plan.totals()
    layers = len(plan.layers())
    return (
        f"{len(plan.entries)} matrices in {layers} quantized layers (recipe {plan.recipe}); "
        f"{t['params']:,} parameters: {_size(t['bytes_before'])} -> {_size(t['bytes_after'])} "
        f"({t['bytes_before'] / max(1, t['bytes_after']):.2f}x smaller)"
    )


def _unmatched(plan: Plan) -> str:
    return "".join(f"\nwarning: {r} matched no layer" for r in plan.unmatched_rules)


def _format(rows) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=False))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
