"""msimaging.dti — not implemented yet (planned in issue(s) 4,5).

The package exists so the layered architecture is visible and enforced from the start;
it exports nothing until its issue lands.
"""

__all__: list[str] = []
