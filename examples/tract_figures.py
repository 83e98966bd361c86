"""Tracts of one patient over three visits: the overlay on FA and the FA profiles.

Usage::

    python examples/tract_figures.py [OUTPUT_DIR]

Generates a one-patient synthetic study (default preset: 2.5 mm DWI, visits M0, M3, M6), runs
the DTI stage of each visit (tensor fit, T1w -> DWI and MNI registrations), tracks the shipped
tract definitions with the package defaults (CST L/R, OR L/R, CC) and draws

- ``tracts_overlay.png``: the M0 tract masks over the M0 FA map (three orthogonal slices);
- ``tracts_profiles.png``: the 100-node FA profiles of each tract at M0, M3 and M6.

It prints each tract's Dice with the planted bundle and its FA error at M0. The PNGs in
``docs/figures/`` come from this script (default OUTPUT_DIR).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from msimaging.bids import Study
from msimaging.datasets import make_synthetic_study
from msimaging.dti import dti_session, plot_profiles, plot_tract_overlay, tract_session

TRACTS = {"CC": 1, "CST_L": 2, "CST_R": 3, "OR_L": 4, "OR_R": 5}


def main(output_dir: Path) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    profiles, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_study(Path(tmp) / "study", n_subjects=1)
        truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
        for visit in Study(root):
            sub, ses = visit.participant_id, visit.session_id
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dti = dti_session(visit.get("dwi"), visit.get("t1w"), seg=visit.get("dseg"),
                                  lesion_mask=visit.get("lesion_mask"),
                                  participant_id=sub, session_id=ses)
                stage = tract_session(dti, tracts=list(TRACTS))
            profiles.append(stage.profiles)
            if first is None:
                first = (dti, stage)
                planted = np.asanyarray(nib.load(
                    root / "sourcedata/ground_truth" / sub / ses / "dwi"
                    / f"{sub}_{ses}_desc-bundles_dseg.nii.gz").dataobj)
                regions = truth["subjects"][sub]["sessions"][ses]["dwi"]["regions"]
                for name, code in TRACTS.items():
                    mask = np.asanyarray(stage.bundles[name].mask().dataobj) > 0
                    dice = 2 * (mask & (planted == code)).sum() / (
                        mask.sum() + (planted == code).sum())
                    row = stage.metrics[(stage.metrics.tract == name)
                                        & (stage.metrics.metric == "fa")
                                        & (stage.metrics.part == "whole")].iloc[0]
                    print(f"{ses} {name:6} {stage.bundles[name].n_streamlines:4d} streamlines  "
                          f"Dice {dice:.3f}  FA {row['mean']:.3f} (truth "
                          f"{regions[name]['fa']:.3f})")
    dti, stage = first
    overlay = output_dir / "tracts_overlay.png"
    plot_tract_overlay(dti.fit.fa, stage.bundles, overlay)
    curves = output_dir / "tracts_profiles.png"
    plot_profiles(pd.concat(profiles, ignore_index=True), "fa", curves)
    for path in (overlay, curves):
        print(f"wrote {path}")
    return [overlay, curves]


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "docs" / "figures"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
