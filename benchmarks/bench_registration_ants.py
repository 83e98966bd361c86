"""MNI registration: ANTs (antspyx) against ``msimaging.registration.register_to_mni`` (dipy),
on accuracy against the planted truth and time, in the same run (issue 19).

For the first visit's T1w of every subject of a synthetic study, the MNI template (the same
ICBM 2009 T1 at 2 mm, masked to its brain as msimaging does) is registered affinely to the
subject's T1w by

- ``dipy``: :func:`msimaging.registration.register_to_mni` (the pipeline's default: brain
  found by ``median_otsu``, MI, translation, rigid and affine each at 8, 4 and 2 mm);
- ``ants``: ``ants.registration(type_of_transform=...)`` for ``"Affine"`` (rigid then affine,
  MI, 4 levels) and ``"AffineFast"``, on the subject image masked by dipy's ``median_otsu``
  brain (radius 4 mm, one pass: the brain finder register_to_mni uses here; ANTs has no brain
  extraction of its own at this step). The masking is timed with ANTs.

Error: the mean (and max) distance, over the brain voxels of the 2 mm MNI brain mask, between
where the found and the true (``mni_to_native``) transforms put them in the subject (mm).
ANTs' transform (ITK, LPS, fixed -> moving) is read with ``ants.read_transform`` and turned
into a RAS matrix. Time: wall seconds of each call, single-threaded
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``, as a Dask worker runs).

``antspyx`` is not a dependency of msimaging (an 80 MB wheel): ``pip install antspyx`` runs
this comparison; without it the benchmark says so and stops.
``python -m benchmarks.bench_registration_ants [--study PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine_info, write_result

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ants_matrix(path: str) -> np.ndarray:
    """RAS 4x4 (fixed mm -> moving mm) of an ITK affine written by ANTs."""
    import ants

    tx = ants.read_transform(path)
    params = np.asarray(tx.parameters, float)
    centre = np.asarray(tx.fixed_parameters, float)
    linear = params[:9].reshape(3, 3)
    translation = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = linear
    lps[:3, 3] = translation + centre - linear @ centre
    return _LPS @ lps @ _LPS


def _errors(native_to_mni: np.ndarray, mni_to_native_true: np.ndarray,
            mni_points: np.ndarray) -> dict[str, float]:
    true = mni_points @ mni_to_native_true[:3, :3].T + mni_to_native_true[:3, 3]
    inverse = np.linalg.inv(native_to_mni)
    found = mni_points @ inverse[:3, :3].T + inverse[:3, 3]
    distance = np.linalg.norm(found - true, axis=1)
    return {"mean_error_mm": float(distance.mean()), "max_error_mm": float(distance.max())}


def main(study: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    # ITK reads its thread count when it starts: one thread, as a Dask worker runs.
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    try:
        import ants
    except ImportError:
        print("antspyx is not installed (pip install antspyx): comparison skipped")
        return {}
    import nibabel as nib
    from scipy import ndimage

    from msimaging.registration import mni_template, register_to_mni

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if study is None:
            from msimaging.datasets import make_synthetic_study

            root = make_synthetic_study(Path(tmp) / "study", preset="default")
        else:
            root = Path(study)
        truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json")
                           .read_text(encoding="utf-8"))
        mask = mni_template("brain_mask", 2)
        brain_mni = np.asarray(mask.dataobj) > 0
        points = np.argwhere(brain_mni) @ mask.affine[:3, :3].T + mask.affine[:3, 3]
        template = mni_template("t1", 2)
        moving_data = np.where(ndimage.binary_dilation(brain_mni),
                               np.asarray(template.dataobj, np.float32), 0.0)
        moving_path = Path(tmp) / "template.nii.gz"
        nib.save(nib.Nifti1Image(moving_data.astype(np.float32), template.affine), moving_path)
        moving = ants.image_read(str(moving_path))
        for participant, subject in truth["subjects"].items():
            session = sorted(subject["mni_to_native"])[0]
            t1w = root / participant / session / "anat" / f"{participant}_{session}_T1w.nii.gz"
            true = np.asarray(subject["mni_to_native"][session], float)

            start = time.perf_counter()
            found = register_to_mni(t1w)
            seconds = time.perf_counter() - start
            rows.append({"participant_id": participant, "session_id": session,
                         "method": "dipy (msimaging.register_to_mni)", "seconds": seconds,
                         **_errors(found.matrix, true, points)})

            # ANTs on the brain found by median_otsu (as register_to_mni finds it here).
            from dipy.segment.mask import median_otsu

            start = time.perf_counter()
            img = nib.load(t1w)
            data = np.asarray(img.dataobj, np.float32)
            _, keep = median_otsu(data, median_radius=2, numpass=1)  # 4 mm on 2 mm voxels
            keep = ndimage.binary_dilation(keep, iterations=1)
            fixed_path = Path(tmp) / f"{participant}_brain.nii.gz"
            nib.save(nib.Nifti1Image(data * keep, img.affine), fixed_path)
            fixed = ants.image_read(str(fixed_path))
            masking = time.perf_counter() - start
            for kind in ("Affine", "AffineFast"):
                start = time.perf_counter()
                out = ants.registration(fixed=fixed, moving=moving, type_of_transform=kind,
                                        outprefix=str(Path(tmp) / f"{participant}_{kind}_"))
                seconds = time.perf_counter() - start + masking
                matrix = _ants_matrix(out["fwdtransforms"][0])
                rows.append({"participant_id": participant, "session_id": session,
                             "method": f"ants ({kind})", "seconds": seconds,
                             **_errors(matrix, true, points)})
            for row in rows[-3:]:
                print(f"{participant} {row['method']}: {row['seconds']:.1f} s, error "
                      f"{row['mean_error_mm']:.3f} mm (max {row['max_error_mm']:.3f})",
                      flush=True)
    import pandas as pd

    table = pd.DataFrame(rows)
    summary = (table.groupby("method")[["seconds", "mean_error_mm", "max_error_mm"]]
               .mean().round(4).to_dict("index"))
    print(json.dumps(summary, indent=1))
    result = {"benchmark": "registration_ants", "description": __doc__.splitlines()[0],
              "summary": summary, "rows": rows, "antspyx": ants.__version__,
              "machine": machine_info()}
    write_result("registration_ants", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="an existing default synthetic study")
    main(parser.parse_args().study)
