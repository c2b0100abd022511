"""Line and paragraph helpers shared by the filter families (Gopher, FineWeb)."""

from __future__ import annotations

from collections.abc import Iterable


def duplicates(items: Iterable[str]) -> tuple[int, int]:
    """(number of items equal to an earlier item, their total characters): the duplicate line
    and paragraph counts of Gopher (Rae et al. 2021, Table A1) and FineWeb's duplicated-line
    characters (Penedo et al. 2024)."""
    seen: set[str] = set()
    n_dup = chars = 0
    for x in items:
        if x in seen:
            n_dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return n_dup, chars
