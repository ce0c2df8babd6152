"""Plain-text tables of a Plan: what ``--dry-run`` prints and what apply reports."""

from __future__ import annotations

from collections import defaultdict

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


def role_table(plan: Plan, seconds: dict[str, float] | None = None) -> str:
    """Per role and in total: parameters, bytes before and after, ratio, time."""
    sums = defaultdict(lambda: [0, 0, 0])
    for e in plan.entries:
        row = sums[e.role]
        row[0] += e.params
        row[1] += e.bytes_before
        row[2] += e.bytes_after
    rows = [("role", "params", "before", "after", "ratio", "time")]
    for role, (params, before, after) in sums.items():
        t = (seconds or {}).get(role)
        rows.append(
            (
                role,
                f"{params:,}",
                _size(before),
                _size(after),
                f"{before / after:.2f}x",
                "-" if t is None else f"{t:.2f}s",
            )
        )
    totals = plan.totals()
    total_t = sum((seconds or {}).values())
    rows.append(
        (
            "total",
            f"{totals['params']:,}",
            _size(totals["bytes_before"]),
            _size(totals["bytes_after"]),
            f"{totals['bytes_before'] / totals['bytes_after']:.2f}x",
            f"{total_t:.2f}s" if seconds else "-",
        )
    )
    return _format(rows)


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
