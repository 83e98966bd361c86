"""Time and accuracy of ``msimaging.registration`` on the default synthetic study (1 subject).

Cases, each checked against the ground truth of the generator:

- T1w (moving, 2 mm) -> mean b0 of the DWI (static, 2.5 mm), rigid MI. Truth: identity (the
  two share their world space). Error: displacement of the brain voxels of the DWI grid.
  WM Dice: the T1 segmentation's WM (label 3) warped with nearest neighbour onto the DWI grid,
  against the true WM on the DWI grid (the identity gives the partial-volume ceiling).
- MNI ICBM152 T1 (moving, 2 mm) -> subject T1w (static), affine and rigid+scaling MI. Truth:
  ``mni_to_native``. Error: template brain-mask voxel centres mapped MNI -> native, and subject
  brain voxels mapped native -> MNI, recovered vs true.
- SyN (CC, level_iters (10, 10, 5)) after the affine: mean squared difference of z-scored
  intensities in the subject brain, before and after.

Anchor: dipy's documented pipeline run directly in the same process (centre of mass ->
translation -> rigid [-> affine], dense MI sampling, same pyramid); ratios < 1 mean msimaging is
faster. Note the subject anatomy is the template itself placed by ``mni_to_native``, so the
MNI -> T1 figures measure the optimiser, not anatomical variability.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from benchmarks._machine import machine_info, write_result

SUB, SES = "sub-01", "ses-M0"


def _load(root: Path) -> dict[str, Any]:
    session = root / SUB / SES
    dwi = nib.load(session / "dwi" / f"{SUB}_{SES}_dwi.nii.gz")
    bvals = np.loadtxt(session / "dwi" / f"{SUB}_{SES}_dwi.bval")
    b0 = np.asanyarray(dwi.dataobj)[..., bvals <= 50].mean(axis=-1).astype(np.float32)
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    seg = root / "derivatives" / "segmentation" / SUB / SES / "anat" / f"{SUB}_{SES}_dseg.nii.gz"
    tissue = root / "sourcedata" / "ground_truth" / SUB / SES / "dwi"
    return {
        "t1": nib.load(session / "anat" / f"{SUB}_{SES}_T1w.nii.gz"),
        "b0": nib.Nifti1Image(b0, dwi.affine),
        "dseg": nib.load(seg),
        "tissue": nib.load(tissue / f"{SUB}_{SES}_desc-tissue_dseg.nii.gz"),
        "mni_to_native": np.array(truth["subjects"][SUB]["mni_to_native"][SES]),
    }


def _world(img: nib.Nifti1Image, mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask) @ img.affine[:3, :3].T + img.affine[:3, 3]


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _stats(error_mm: np.ndarray, voxel_mm: float) -> dict[str, float]:
    return {
        "mean_mm": float(error_mm.mean()),
        "max_mm": float(error_mm.max()),
        "mean_voxels": float(error_mm.mean() / voxel_mm),
        "voxel_mm": voxel_mm,
    }


def _dipy_anchor(moving: nib.Nifti1Image, static: nib.Nifti1Image, final: str) -> tuple:
    """dipy's tutorial pipeline, dense sampling: (matrix static mm -> moving mm, seconds)."""
    from dipy.align.imaffine import (
        AffineRegistration,
        MutualInformationMetric,
        transform_centers_of_mass,
    )
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    s, m = static.get_fdata(), moving.get_fdata()
    start = time.perf_counter()
    matrix = transform_centers_of_mass(s, static.affine, m, moving.affine).affine
    affreg = AffineRegistration(
        metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
        level_iters=[10000, 1000, 100],
        sigmas=[3.0, 1.0, 0.0],
        factors=[4, 2, 1],
        verbosity=0,
    )
    stages = [TranslationTransform3D(), RigidTransform3D()]
    if final == "affine":
        stages.append(AffineTransform3D())
    for transform in stages:
        matrix = affreg.optimize(
            s,
            m,
            transform,
            None,
            static_grid2world=static.affine,
            moving_grid2world=moving.affine,
            starting_affine=matrix,
        ).affine
    return matrix, time.perf_counter() - start


def _t1_to_dwi(data: dict[str, Any]) -> dict[str, Any]:
    from msimaging.registration import AffineTransform, register_affine

    tissue = np.asanyarray(data["tissue"].dataobj)
    points = _world(data["tissue"], tissue > 0)
    voxel_mm = float(data["tissue"].header.get_zooms()[0])
    true_wm = tissue == 3

    def wm_dice(transform: AffineTransform) -> float:
        warped = transform.apply(data["dseg"], interpolation="nearest")
        return _dice(np.asanyarray(warped.dataobj) == 3, true_wm)

    xfm = register_affine(data["t1"], data["b0"], transform="rigid")
    anchor, anchor_s = _dipy_anchor(data["t1"], data["b0"], "rigid")
    identity = AffineTransform.from_matrix(np.eye(4), data["b0"], data["t1"])
    return {
        "seconds": xfm.seconds,
        "error": _stats(np.linalg.norm(_apply(xfm.matrix, points) - points, axis=1), voxel_mm),
        "wm_dice": wm_dice(xfm),
        "wm_dice_true_identity": wm_dice(identity),
        "anchor": {
            "seconds": anchor_s,
            "error": _stats(np.linalg.norm(_apply(anchor, points) - points, axis=1), voxel_mm),
        },
        "time_ratio_to_anchor": xfm.seconds / anchor_s,
    }


def _mni_to_t1(data: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    from msimaging.registration import mni_template, register_affine

    template = mni_template("t1", 2)
    mask = mni_template("brain_mask", 2)
    truth = data["mni_to_native"]
    inverse = np.linalg.inv(truth)
    voxel_mm = float(data["t1"].header.get_zooms()[0])
    mni_points = _world(mask, np.asanyarray(mask.dataobj) > 0)
    native_points = _world(data["dseg"], np.asanyarray(data["dseg"].dataobj) > 0)

    def errors(matrix: np.ndarray) -> dict[str, Any]:
        to_native = np.linalg.norm(
            _apply(np.linalg.inv(matrix), mni_points) - _apply(truth, mni_points), axis=1
        )
        to_mni = np.linalg.norm(
            _apply(matrix, native_points) - _apply(inverse, native_points), axis=1
        )
        return {
            "mni_to_native": _stats(to_native, voxel_mm),
            "native_to_mni": _stats(to_mni, voxel_mm),
        }

    out: dict[str, Any] = {}
    affine = None
    for kind in ("affine", "rigid+scaling"):
        xfm = register_affine(template, data["t1"], transform=kind)
        out[kind] = {"seconds": xfm.seconds, "error": errors(xfm.matrix)}
        if kind == "affine":
            affine = xfm
    anchor, anchor_s = _dipy_anchor(template, data["t1"], "affine")
    out["anchor_affine"] = {"seconds": anchor_s, "error": errors(anchor)}
    out["time_ratio_to_anchor"] = out["affine"]["seconds"] / anchor_s
    return out, affine


def _syn(data: dict[str, Any], affine: Any) -> dict[str, Any]:
    from msimaging.registration import mni_template, register_syn

    template = mni_template("t1", 2)
    xfm = register_syn(template, data["t1"], prealign=affine)
    mask = np.asanyarray(data["dseg"].dataobj) > 0

    def z(values: np.ndarray) -> np.ndarray:
        return (values - values[mask].mean()) / values[mask].std()

    target = z(data["t1"].get_fdata())
    before = float(np.mean((z(affine.apply(template).get_fdata()) - target)[mask] ** 2))
    after = float(np.mean((z(xfm.apply(template).get_fdata()) - target)[mask] ** 2))
    return {"seconds": xfm.seconds, "msd_zscored_affine": before, "msd_zscored_syn": after}


def main() -> dict:
    from msimaging.datasets import make_synthetic_study

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = make_synthetic_study(
            Path(tmp) / "study",
            n_subjects=1,
            sessions=("M0",),
            seed=0,
            preset="default",
            head_motion=False,
        )
        generate_s = time.perf_counter() - start
        data = _load(root)
        t1_dwi = _t1_to_dwi(data)
        mni_t1, affine = _mni_to_t1(data)
        syn = _syn(data, affine)

    rows = [
        ("T1->DWI rigid", t1_dwi["seconds"], t1_dwi["error"]),
        ("  dipy anchor (dense)", t1_dwi["anchor"]["seconds"], t1_dwi["anchor"]["error"]),
        (
            "MNI->T1 affine",
            mni_t1["affine"]["seconds"],
            mni_t1["affine"]["error"]["mni_to_native"],
        ),
        (
            "MNI->T1 rigid+scaling",
            mni_t1["rigid+scaling"]["seconds"],
            mni_t1["rigid+scaling"]["error"]["mni_to_native"],
        ),
        (
            "  dipy anchor (dense)",
            mni_t1["anchor_affine"]["seconds"],
            mni_t1["anchor_affine"]["error"]["mni_to_native"],
        ),
    ]
    print(f"{'case':26} {'seconds':>8} {'mean mm':>8} {'max mm':>8} {'voxels':>8}")
    for name, seconds, err in rows:
        print(
            f"{name:26} {seconds:8.2f} {err['mean_mm']:8.3f} {err['max_mm']:8.3f} "
            f"{err['mean_voxels']:8.3f}"
        )
    print(
        f"WM Dice on the DWI grid: {t1_dwi['wm_dice']:.3f} "
        f"(true identity: {t1_dwi['wm_dice_true_identity']:.3f})"
    )
    print(
        f"SyN: {syn['seconds']:.2f} s, MSD z-scored {syn['msd_zscored_affine']:.4f} -> "
        f"{syn['msd_zscored_syn']:.4f}"
    )
    print(
        f"time ratio to dipy anchor: T1->DWI {t1_dwi['time_ratio_to_anchor']:.2f}, "
        f"MNI->T1 {mni_t1['time_ratio_to_anchor']:.2f}"
    )
    payload = {
        "benchmark": "registration",
        "description": __doc__.strip().splitlines()[0],
        "dataset": {"preset": "default", "subjects": 1, "sessions": 1, "seconds": generate_s},
        "t1_to_dwi_rigid": t1_dwi,
        "mni_to_t1": mni_t1,
        "syn": syn,
        "machine": machine_info(),
    }
    write_result("registration", payload)
    return payload


if __name__ == "__main__":
    main()
