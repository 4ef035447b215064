"""Which markers a ``-m`` expression asks for (used by ``conftest.py``)."""

from __future__ import annotations

import itertools


def selects_marker(markexpr: str, marker: str) -> bool:
    """True when the ``-m`` expression asks for ``marker``: some set of the other markers it
    names matches with ``marker`` added and not without it (for ``gpu``: ``gpu``, ``gpu and
    slow``, ``gpu or slow``; not ``not slow``, ``not gpu`` nor an empty expression)."""
    # pytest's own parser of -m, so that every expression it accepts is read the same way.
    from _pytest.mark.expression import Expression

    if not markexpr:
        return False
    expr = Expression.compile(markexpr)
    if marker not in expr.idents():
        return False
    others = sorted(expr.idents() - {marker})

    def matches(marks: set[str]) -> bool:
        return expr.evaluate(lambda name, **kwargs: name in marks)

    return any(
        matches({*chosen, marker}) and not matches(set(chosen))
        for size in range(len(others) + 1)
        for chosen in itertools.combinations(others, size)
    )
