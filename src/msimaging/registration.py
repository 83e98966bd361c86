"""msimaging.registration — not implemented yet (planned in issue 4, on dipy.align).

Shared core module: rigid/affine/SyN wrappers used by dti and volumetry.
"""

__all__: list[str] = []
