"""Time series extraction + connectivity per visit on the default synthetic study.

Generates the default study (5 subjects x M0/M3/M6, fMRIPrep-style MNI BOLD + confounds),
runs :func:`msimaging.fmri.extract_timeseries` (Seitzman 2018 spheres, strategy "simple";
partial-volume spheres, the default, and nilearn's whole-voxel ones for comparison) and
:func:`msimaging.fmri.connectivity` on every visit, and in the same run the anchor: nilearn's
``NiftiSpheresMasker`` + ``ConnectivityMeasure`` called directly with the same confound
columns (one radius for all spheres, as that masker takes; timing only). Reports seconds per
visit (ratio msimaging / nilearn: the cost of validation and node labelling), the accuracy
against the realised node correlations (cleaned and uncleaned), and the recovered change of
the planted subnetwork's mean Fisher z between M0 and M6 against truth, and the ceiling: the
match of a perfect extraction (each node's true voxels, same confounds, plain numpy), which
the per-voxel white noise caps; then the Network-Based
Statistic on those connectomes (paired M0 < M6 and F across visits): is the planted subnetwork
found, with what precision, and are its hubs planted nodes.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._machine import machine_info, write_result


def _upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices_from(matrix, k=1)]


def _realised(root: Path, truth: dict, sub: str, ses: str) -> np.ndarray:
    from msimaging.derivatives import read_relmat

    rel = truth["subjects"][sub]["sessions"][ses]["func"]["realised_relmat"]
    return read_relmat(root / "sourcedata" / "ground_truth" / rel)


def _ceiling(bold, mask, confounds: pd.DataFrame, nodes: pd.DataFrame) -> np.ndarray:
    """The best any extraction can do: the mean of each node's true voxels (the simulation's
    own 6 mm voxel-to-node map), the same confound columns regressed out, no detrending;
    plain numpy. Its match with the realised truth is the ceiling that white noise leaves."""
    import nibabel as nib

    from msimaging.datasets.synthetic.functional import node_sphere_labels

    mask_img = nib.load(mask)
    inside = np.asanyarray(mask_img.dataobj) > 0
    labels = node_sphere_labels(inside, mask_img.affine, nodes, sphere_radius_mm=6.0)[inside]
    voxels = np.asanyarray(nib.load(bold).dataobj)[inside].astype(np.float64)
    n_nodes, n_volumes = len(nodes), voxels.shape[1]
    counts = np.bincount(labels[labels >= 0], minlength=n_nodes)
    sums = np.zeros((n_nodes, n_volumes))
    np.add.at(sums, labels[labels >= 0], voxels[labels >= 0])
    present = counts > 0
    series = (sums[present] / counts[present, None]).T
    design = np.column_stack([np.ones(n_volumes), confounds.to_numpy(np.float64)])
    residual = series - design @ np.linalg.lstsq(design, series, rcond=None)[0]
    r = np.full((n_nodes, n_nodes), np.nan)
    r[np.ix_(present, present)] = np.corrcoef(residual, rowvar=False)
    return r


def _nbs_recovery(connectomes, planted, planted_nodes, nbs_paired, nbs_repeated_measures):
    """NBS on the recovered connectomes: one-sided paired M0 < M6 (exact, 2^5 sign flips) and
    the F-test across M0/M3/M6 (visits permuted within patients), at three thresholds."""
    subjects = sorted({s for s, _ in connectomes})
    n = next(iter(connectomes.values())).matrix.shape[0]
    truth = np.zeros((n, n), bool)
    truth[planted[:, 0], planted[:, 1]] = True
    truth |= truth.T
    rows = []
    for threshold_p in (0.01, 0.005, 0.001):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paired = nbs_paired([connectomes[(s, "ses-M0")] for s in subjects],
                                [connectomes[(s, "ses-M6")] for s in subjects],
                                threshold_p=threshold_p)
            keys = [(s, v) for s in subjects for v in ("ses-M0", "ses-M3", "ses-M6")]
            anova = nbs_repeated_measures([connectomes[k] for k in keys], [s for s, _ in keys],
                                          [v for _, v in keys], threshold_p=threshold_p,
                                          n_permutations=5000, seed=0)
        for name, result in (("paired M0<M6", paired), ("F M0/M3/M6", anova)):
            if not result.components:
                rows.append({"test": name, "threshold_p": threshold_p, "found": False})
                continue
            best = result.components[0]
            mask = np.triu(result.edges_mask(0), 1)
            rows.append({
                "test": name, "threshold_p": threshold_p, "threshold": result.threshold,
                "found": bool(best.p_value <= 0.05), "p_value": float(best.p_value),
                "smallest_p": float(result.smallest_p), "n_edges": int(best.n_edges),
                "precision": float((mask & truth).sum() / mask.sum()),
                "recall": float((mask & truth).sum() / np.triu(truth, 1).sum()),
                "hubs": [int(h) for h in best.hubs],
                "hubs_planted": bool(set(best.hubs) <= set(planted_nodes)),
            })
    print(pd.DataFrame(rows).round(4).to_string(index=False))
    return rows


def main(n_subjects: int = 5) -> dict:
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.maskers import NiftiSpheresMasker

    from msimaging.atlases.coordinates import load_seitzman_2018
    from msimaging.bids import Study
    from msimaging.datasets import make_synthetic_study
    from msimaging.fmri import connectivity, extract_timeseries, nbs_paired, nbs_repeated_measures

    rows, z_connectomes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_study(Path(tmp) / "study", n_subjects=n_subjects)
        truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
        atlas = load_seitzman_2018()
        coords = atlas[["x_mm", "y_mm", "z_mm"]].to_numpy()
        radius = float(atlas["radius_mm"].iloc[0])
        planted = np.asarray(truth["func"]["planted_edges"])
        truth_nodes = pd.DataFrame(truth["func"]["nodes"])
        for visit in Study(root):
            sub, ses = visit.participant_id, visit.session_id
            bold, confounds = visit.get("bold_preproc"), visit.get("confounds")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                series = extract_timeseries(bold, "seitzman2018", confounds=confounds,
                                            strategy="simple")
                conn = connectivity(series, kind="correlation", fisher_z=True)
                ours_s = time.perf_counter() - start
                raw = connectivity(
                    extract_timeseries(bold, "seitzman2018", confounds=confounds, strategy=None),
                    kind="correlation", fisher_z=False,
                )
                binary = connectivity(
                    extract_timeseries(bold, "seitzman2018", confounds=confounds,
                                       strategy="simple", sphere_voxels="binary"),
                    kind="correlation", fisher_z=False,
                )
                # Anchor: nilearn called directly, same spheres, filters and confounds.
                table = pd.read_csv(confounds, sep="\t")[list(series.confounds_used)].fillna(0.0)
                start = time.perf_counter()
                masker = NiftiSpheresMasker(
                    coords, radius=radius, allow_overlap=True, detrend=True,
                    standardize="zscore_sample", t_r=series.tr_s,
                )
                anchor_ts = masker.fit_transform(str(bold), confounds=table.to_numpy())
                ConnectivityMeasure(kind="correlation").fit_transform([anchor_ts])
                nilearn_s = time.perf_counter() - start
            z_connectomes[(sub, ses)] = conn
            real = _realised(root, truth, sub, ses)
            best = _ceiling(bold, visit.get("bold_mask"), table, truth_nodes)
            fine = np.isfinite(_upper(best))
            z, r = conn.matrix, np.tanh(conn.matrix)  # upper triangles only are compared
            ok = np.isfinite(_upper(r)) & np.isfinite(_upper(raw.matrix))
            rows.append({
                "participant_id": sub, "session_id": ses,
                "msimaging_seconds": ours_s, "nilearn_seconds": nilearn_s,
                "r_with_truth_cleaned": float(np.corrcoef(_upper(r)[ok],
                                                          _upper(real)[ok])[0, 1]),
                "r_with_truth_uncleaned": float(np.corrcoef(_upper(raw.matrix)[ok],
                                                            _upper(real)[ok])[0, 1]),
                "r_with_truth_binary_spheres": float(np.corrcoef(
                    _upper(binary.matrix)[ok], _upper(real)[ok])[0, 1]),
                "r_with_truth_ceiling": float(np.corrcoef(_upper(best)[fine],
                                                          _upper(real)[fine])[0, 1]),
                "planted_mean_z": float(z[planted[:, 0], planted[:, 1]].mean()),
                "planted_true_mean_z": float(
                    np.arctanh(real[planted[:, 0], planted[:, 1]]).mean()
                ),
            })
    frame = pd.DataFrame(rows)
    print(frame.round(3).to_string(index=False))
    wide = frame.pivot(index="participant_id", columns="session_id")
    change = wide["planted_mean_z"]["ses-M6"] - wide["planted_mean_z"]["ses-M0"]
    true_change = wide["planted_true_mean_z"]["ses-M6"] - wide["planted_true_mean_z"]["ses-M0"]
    summary = {
        "msimaging_seconds_per_visit": float(frame.msimaging_seconds.mean()),
        "nilearn_seconds_per_visit": float(frame.nilearn_seconds.mean()),
        "ratio_msimaging_over_nilearn": float(frame.msimaging_seconds.mean()
                                              / frame.nilearn_seconds.mean()),
        "r_with_truth_cleaned_min": float(frame.r_with_truth_cleaned.min()),
        "r_with_truth_cleaned_mean": float(frame.r_with_truth_cleaned.mean()),
        "r_with_truth_uncleaned_mean": float(frame.r_with_truth_uncleaned.mean()),
        "r_with_truth_binary_spheres_min": float(frame.r_with_truth_binary_spheres.min()),
        "r_with_truth_binary_spheres_mean": float(frame.r_with_truth_binary_spheres.mean()),
        "n_visits_binary_spheres_at_least_0_9": int(
            (frame.r_with_truth_binary_spheres >= 0.9).sum()),
        "r_with_truth_ceiling_min": float(frame.r_with_truth_ceiling.min()),
        "r_with_truth_ceiling_max": float(frame.r_with_truth_ceiling.max()),
        "n_visits_cleaned_at_least_0_9": int((frame.r_with_truth_cleaned >= 0.9).sum()),
        "n_visits_ceiling_at_least_0_9": int((frame.r_with_truth_ceiling >= 0.9).sum()),
        "planted_z_change_m6_minus_m0_mean": float(change.mean()),
        "planted_true_z_change_m6_minus_m0_mean": float(true_change.mean()),
        "planted_z_change_relative_error": float((change.mean() - true_change.mean())
                                                 / true_change.mean()),
        "targets": {"r_with_truth_cleaned": 0.9, "planted_z_change_relative_error": 0.2},
    }
    summary["nbs"] = _nbs_recovery(z_connectomes, planted, truth["func"]["planted_nodes"],
                                   nbs_paired, nbs_repeated_measures)
    print(json.dumps(summary, indent=1))
    payload = {"benchmark": "connectome", "description": __doc__.strip().splitlines()[0],
               "per_visit": rows, "summary": summary, "machine": machine_info()}
    write_result("connectome", payload)
    return payload


if __name__ == "__main__":
    main()
