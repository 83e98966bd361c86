"""Command line: ``msimaging demo``, ``msimaging synth`` and ``msimaging inventory``.

The BIDS-App levels (``msimaging BIDS_DIR OUTPUT_DIR participant|group``) arrive with the
pipeline (issue 10); until then the commands below run what exists and say so.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from msimaging._version import __version__
from msimaging.errors import MSImagingError

__all__ = ["main"]

NOT_YET = "the BIDS-App pipeline on Dask (issue 10)"

# sysexits-style codes, as BIDS Apps use them (64+).
EXIT_USAGE = 64
EXIT_DATAERR = 65


def _print_table(title: str, frame) -> None:
    print(f"\n{title}")
    if frame.empty:
        print("  (none)")
    else:
        print(frame.to_string(index=False))


def _inventory(bids_dir: Path):
    from msimaging.bids import Study

    study = Study(bids_dir)
    sessions = study.sessions
    kinds = [c for c in sessions.columns if sessions[c].dtype == bool]
    present = sessions[["participant_id", "session_id", "months", "months_source"]].copy()
    present["present"] = [
        ", ".join(k for k in kinds if row[k]) for _, row in sessions.iterrows()
    ]
    return study, present


def _cmd_inventory(args: argparse.Namespace) -> int:
    study, present = _inventory(Path(args.bids_dir))
    print(repr(study))
    _print_table("Sessions (visit time in months; files found):", present)
    _print_table("Missing pieces (present elsewhere in the study):", study.missing())
    return 0


def _truth_table(root: Path):
    """One row per subject and visit: the planted truth a user can check results against."""
    import json

    import pandas as pd

    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    rows = []
    for sub, subject in truth["subjects"].items():
        for ses, visit in subject["sessions"].items():
            regions = visit["dwi"]["regions"]
            rows.append(
                {
                    "participant_id": sub,
                    "session_id": ses,
                    "months": visit["months"],
                    "lesions": visit["lesions"]["count"],
                    "lesion_volume_ml": round(visit["lesions"]["volume_mm3"] / 1000, 2),
                    "NAWM_ml": round(visit["tissue_volumes_ml"]["NAWM"], 1),
                    "RD_NAWM_left_um2_ms": round(regions["NAWM_left"]["rd"] * 1e3, 4),
                    "RD_NAWM_right_um2_ms": round(regions["NAWM_right"]["rd"] * 1e3, 4),
                    "planted_delta_r": round(visit["func"]["planted_delta_r"], 3),
                }
            )
    return pd.DataFrame(rows)


def _run_dti(study, writer):
    """[5/7] Each visit's DTI stage (tensor fit, registrations, NAWM) and tract stage."""
    import warnings

    import nibabel as nib
    import numpy as np
    import pandas as pd

    from msimaging.dti import dti_session, tract_session

    print("\n[5/7] DTI per visit: tensor fit, T1w->DWI and MNI registration, NAWM, tracts")
    nawm, tracts = [], []
    for visit in study:
        dseg = nib.load(visit.get("dseg"))
        # Synthetic label table (dseg.tsv): 3 = cerebral white matter.
        wm = nib.Nifti1Image((np.asanyarray(dseg.dataobj) == 3).astype(np.uint8), dseg.affine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # expected: a few floored signals, tiny-grid tracts
            dti = dti_session(
                visit.get("dwi"), visit.get("t1w"), wm, visit.get("lesion_mask"),
                participant_id=visit.participant_id, session_id=visit.session_id,
                writer=writer,
            )
            stage = tract_session(dti, writer=writer, figures=True)
        found = sum(b.n_streamlines > 0 for b in stage.bundles.values())
        seconds = sum(dti.seconds.values()) + sum(stage.seconds.values())
        print(
            f"      {visit.name}: {seconds:.1f} s, {found}/{len(stage.bundles)} tracts found",
            flush=True,
        )
        nawm.append(dti.table)
        tracts.append(stage.metrics)
    return pd.concat(nawm, ignore_index=True), pd.concat(tracts, ignore_index=True)


def _run_fmri(study, writer, bids_dir: Path):
    """[6/7] Each visit's connectome (Seitzman 2018 spheres, "simple" confounds, Fisher z), and
    the figures of one patient's change M0 -> M6 with the planted subnetwork highlighted."""
    import json

    import numpy as np
    import pandas as pd

    from msimaging.fmri import (
        Connectome,
        connectivity,
        extract_timeseries,
        plot_adjacency,
        plot_connectogram,
        plot_glass_brain,
        view_connectome_html,
    )

    print("\n[6/7] fMRI per visit: node time series (Seitzman 2018, confounds 'simple'), "
          "correlation connectomes")
    truth = json.loads((bids_dir / "sourcedata/ground_truth/ground_truth.json").read_text())
    planted = np.asarray(truth["func"]["planted_edges"], dtype=int)
    connectomes, rows = {}, []
    for visit in study:
        bold = visit.get("bold_preproc")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # expected on tiny grids: nodes without voxels
            series = extract_timeseries(
                bold, "seitzman2018", confounds=visit.get("confounds"), strategy="simple",
                mask=visit.get("bold_mask"),
            )
            conn = connectivity(series, kind="correlation", fisher_z=True)
        conn.save(writer, atlas="Seitzman2018", task="rest")
        connectomes[(visit.participant_id, visit.session_id)] = conn
        z = conn.matrix[planted[:, 0], planted[:, 1]]
        rows.append({
            "participant_id": visit.participant_id, "session_id": visit.session_id,
            "planted_mean_z": float(np.nanmean(z)),
            "flagged_nodes": int(series.nodes["flagged"].sum()),
        })
        print(f"      {visit.name}: {series.data.shape[0]} volumes x {series.data.shape[1]} "
              f"nodes, {rows[-1]['flagged_nodes']} flagged", flush=True)
    table = pd.DataFrame(rows)
    figures = []
    patients = sorted({p for p, _ in connectomes})
    complete = [p for p in patients if all((p, f"ses-{v}") in connectomes for v in ("M0", "M6"))]
    if len(complete) >= 3:
        from msimaging.fmri import nbs_paired

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = nbs_paired([connectomes[(p, "ses-M0")] for p in complete],
                                [connectomes[(p, "ses-M6")] for p in complete],
                                threshold_p=0.001, tail="right")
        print(f"\n      NBS, paired M0 < M6 ({len(complete)} patients): {result!r}")
        if result.components:
            best = result.components[0]
            hits = len(set(best.nodes) & set(truth["func"]["planted_nodes"]))
            print(f"      largest component: {best.n_edges} edges, {best.n_nodes} nodes "
                  f"({hits} planted), p = {best.p_value:.4f} (smallest attainable "
                  f"{result.smallest_p:.4f}), hubs {[int(h) for h in best.hubs]}")
            for style, suffix in (("adjacency", "adjacency.png"),
                                  ("connectogram", "connectogram.png"),
                                  ("glass_brain", "glassbrain.png")):
                path = writer.root / "figures" / f"group_desc-nbsM0M6_{suffix}"
                result.plot(style, path=path)
                figures.append(path)
        figures.append(writer.write_group_table(
            result.components_frame(), "fmri_nbs_components",
            sidecar={"Description": "NBS components, paired M0 < M6 (nbs_paired)",
                     "ThresholdP": 0.001, "Tail": "right", "Patients": complete},
        ))
        figures.append(writer.write_group_table(
            result.to_frame(), "fmri_nbs_edges",
            sidecar={"Description": "Edges of the NBS components, paired M0 < M6"},
        ))
    else:
        print("      NBS needs at least 3 patients with M0 and M6: skipped.")
    first = patients[0]
    if (first, "ses-M0") in connectomes and (first, "ses-M6") in connectomes:
        before, after = connectomes[(first, "ses-M0")], connectomes[(first, "ses-M6")]
        change = Connectome(after.matrix - before.matrix, after.nodes, kind="correlation",
                            fisher_z=True, participant_id=first, session_id="M6-M0")
        stem = writer.root / "figures" / f"{first}_desc-changeM6minusM0"
        paths = [stem.with_name(f"{stem.name}_{suffix}") for suffix in (
            "adjacency.png", "connectogram.png", "glassbrain.png", "connectome.html")]
        plot_adjacency(change, highlight_edges=planted, path=paths[0])
        plot_connectogram(change, highlight_edges=planted, path=paths[1])
        plot_glass_brain(change, highlight_edges=planted, path=paths[2])
        view_connectome_html(change, paths[3], highlight_edges=planted)
        figures += paths
    return table, figures


def _run_volumetry(study, writer, bids_dir: Path):
    """[7/7] Each visit's tissue volumes, lesions and lesion load; lesion tracks per patient;
    every number checked against the planted truth."""
    import json

    import pandas as pd

    from msimaging.volumetry import (
        match_lesions,
        plot_lesion_evolution,
        plot_lesions,
        volume_change,
        volumetry_session,
    )

    print("\n[7/7] volumetry per visit: tissue volumes, lesions by location; lesion tracks")
    truth = json.loads((bids_dir / "sourcedata/ground_truth/ground_truth.json").read_text())
    volumes, loads, tracks, exact = [], [], [], 0
    masks: dict[str, dict[str, Path]] = {}
    for visit in study:
        result = volumetry_session(
            visit.get("dseg"), visit.get("lesion_mask"), labels="synthetic",
            participant_id=visit.participant_id, session_id=visit.session_id, writer=writer,
        )
        volumes.append(result.volumes.assign(months=visit.months))
        loads.append(result.load.assign(months=visit.months))
        masks.setdefault(visit.participant_id, {})[visit.session_id] = visit.get("lesion_mask")
        planted = truth["subjects"][visit.participant_id]["sessions"][visit.session_id]
        got = result.load.set_index("location")
        same = got.loc["total", "count"] == planted["lesions"]["count"] and all(
            got.loc[c, "count"] == v["count"] for c, v in planted["lesions"]["by_class"].items()
        )
        exact += bool(same)
        print(f"      {visit.name}: {result!r}{'' if same else '  (differs from truth!)'}",
              flush=True)
    for participant, by_session in masks.items():
        if len(by_session) >= 2:
            tracks.append(match_lesions(by_session, participant_id=participant))
    volumes = pd.concat(volumes, ignore_index=True)
    loads = pd.concat(loads, ignore_index=True)
    tracks = pd.concat(tracks, ignore_index=True) if tracks else pd.DataFrame()
    print(f"      lesion counts per class equal the planted truth at {exact}/{len(study)} visits")
    change = volume_change(volumes)
    figures = []
    last = list(study)[-1]
    if last.has("flair"):
        path = writer.root / "figures" / f"{last.name.replace(' ', '_')}_desc-lesions.png"
        plot_lesions(last.get("flair"), last.get("lesion_mask"), last.get("dseg"), path=path,
                     title=f"{last.name}: T2 lesions by location (FLAIR)")
        figures.append(path)
    if not tracks.empty:
        path = writer.root / "figures" / "group_desc-lesionevolution.png"
        plot_lesion_evolution(tracks, path=path)
        figures.append(path)
    return volumes, loads, tracks, change, figures


def _headline(nawm, sessions, loads, deriv: Path) -> None:
    """The findings a reader looks for first, each with its exact test."""
    import pandas as pd

    from msimaging.stats import compare_visits

    print("\nHeadline findings (exact tests; planted: left-NAWM RD -8% at M6, right unchanged; "
          "a subnetwork rising at M6):")
    table = nawm.merge(sessions[["participant_id", "session_id", "months"]],
                       on=["participant_id", "session_id"], how="left")
    table = table[(table.metric == "rd") & table.roi.isin(["NAWM_left", "NAWM_right"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = compare_visits(table, value="mean", by=["roi"], posthoc="none")
        except MSImagingError as exc:
            print(f"  NAWM RD: not tested ({exc})")
            result = None
    if result is not None:
        changes = result.changes
        last = changes["months"].max()
        for row in result.tests.itertuples():
            pct = changes[(changes.roi == row.roi) & (changes.months == last)]["pct_change"]
            print(f"  {row.roi} RD: median change {pct.median():+.1f}% at month {last:g}; "
                  f"Friedman exact p = {row.p_exact:.4g} (chi-square approx. "
                  f"{row.p_chi2_approx:.3g}), n = {row.n_subjects}")
    components = deriv / "group" / "fmri_nbs_components.tsv"
    if components.is_file():
        first = pd.read_csv(components, sep="\t").iloc[0]
        print(f"  NBS M0 < M6: largest component {int(first.n_edges)} edges, "
              f"{int(first.n_nodes)} nodes, FWER p = {first.p_value:.4g}")
    total = loads[loads.location == "total"].pivot_table(
        index="participant_id", columns="session_id", values="count").astype(int)
    print("  T2 lesion count per patient and visit:")
    for line in total.to_string().splitlines():
        print(f"    {line}")


def _cmd_synth(args: argparse.Namespace) -> int:
    from msimaging.datasets import make_synthetic_study

    root = make_synthetic_study(
        args.output_dir,
        n_subjects=args.n_subjects,
        sessions=args.sessions,
        seed=args.seed,
        preset=args.preset,
        progress=lambda message: print(f"  {message}", flush=True),
    )
    print(f"synthetic study written: {root}")
    print(f"ground truth: {root / 'sourcedata' / 'ground_truth' / 'ground_truth.json'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    import pandas as pd

    from msimaging.datasets import make_synthetic_study
    from msimaging.derivatives import DerivativesWriter
    from msimaging.io import load_dwi

    out = Path(args.output_dir).resolve()
    bids_dir = out / "study"
    print(f"msimaging {__version__} demo -> {out}")
    started = time.perf_counter()
    if (bids_dir / "dataset_description.json").exists():
        print(f"\n[1/7] reusing the synthetic study from a previous run: {bids_dir}")
    else:
        print(
            f"\n[1/7] generating the synthetic MS study ({args.preset} preset: "
            f"{args.n_subjects} patients x "
            "visits M0/M3/M6, planted lesions, RD fall in left NAWM, rising subnetwork)"
        )
        make_synthetic_study(
            bids_dir,
            n_subjects=args.n_subjects,
            preset=args.preset,
            progress=lambda message: print(f"      {message}", flush=True),
        )

    study, present = _inventory(bids_dir)
    print(f"\n[2/7] discovered {study!r}")
    _print_table("Sessions (visit time in months; files found):", present)
    missing = study.missing()
    _print_table("Missing pieces (present elsewhere in the study):", missing)

    print("\n[3/7] validating every diffusion series (load_dwi)")
    rows = []
    for session in study:
        for path in session.files.get("dwi", ()):
            dwi = load_dwi(path)
            rows.append(
                {
                    "participant_id": session.participant_id,
                    "session_id": session.session_id,
                    "months": session.months,
                    "file": Path(path).name,
                    "n_volumes": dwi.n_volumes,
                    "n_b0": int(dwi.b0_mask.sum()),
                }
            )
            print(f"      ok  {dwi!r}")

    truth = _truth_table(bids_dir)
    _print_table("[4/7] planted ground truth (what the analyses must recover):", truth)

    writer = DerivativesWriter(out / "derivatives" / "msimaging", input_datasets=[bids_dir])
    nawm, tracts = _run_dti(study, writer)
    summary = (
        nawm[(nawm.metric == "rd") & (nawm.roi != "NAWM")]
        .assign(RD_um2_ms=lambda t: t["mean"] * 1e3)
        .pivot_table(index=["roi", "session_id"], values="RD_um2_ms", aggfunc="median")
        .round(4)
        .reset_index()
    )
    _print_table(
        "NAWM radial diffusivity, median over patients (planted: left -4% at M3, -8% at M6; "
        "right unchanged):",
        summary,
    )
    tract_fa = (
        tracts[(tracts.metric == "fa") & (tracts.part == "whole")]
        .pivot_table(index="tract", columns="session_id", values="mean", aggfunc="median")
        .round(3)
        .reset_index()
    )
    _print_table("Tract FA, median over patients:", tract_fa)
    fmri, figures = _run_fmri(study, writer, bids_dir)
    volumes, loads, tracks, change, lesion_figures = _run_volumetry(study, writer, bids_dir)
    figures += lesion_figures
    planted_z = (
        fmri.pivot_table(index="session_id", values="planted_mean_z", aggfunc="median")
        .round(3)
        .reset_index()
    )
    _print_table(
        "Planted subnetwork, mean Fisher z of its edges, median over patients (planted: rises "
        "at M6, partly at M3):",
        planted_z,
    )
    per_class = (
        loads[loads.location != "total"]
        .pivot_table(index="location", columns="session_id", values="count", aggfunc="sum")
        .reset_index()
    )
    _print_table("T2 lesions per location, all patients (count):", per_class)
    if not tracks.empty:
        evolution = tracks.groupby("category").size().rename("tracks").reset_index()
        _print_table("Lesion evolution M0 -> M6, all patients (lesion tracks):", evolution)
    brain = (
        change[change.region.isin(["brain", "nawm", "abnormal_wm", "lateral_ventricles"])]
        .pivot_table(index="region", columns="months", values="change_pct", aggfunc="median")
        .round(2)
        .reset_index()
    )
    _print_table("Volume change from baseline, % (median over patients; segmentation-based, "
                 "not SIENA):", brain)
    written = [
        writer.write_group_table(
            present, "sessions", sidecar={"Description": "Sessions found by msimaging.bids.Study"}
        ),
        writer.write_group_table(
            missing, "missing", sidecar={"Description": "Pieces missing per session"}
        ),
        writer.write_group_table(
            pd.DataFrame(rows), "dwi_validation", sidecar={"Description": "Validated DWI series"}
        ),
        writer.write_group_table(
            truth, "ground_truth_summary",
            sidecar={"Description": "Planted truth per visit (from ground_truth.json)"},
        ),
    ]
    written += [
        writer.write_group_table(
            nawm, "dti_nawm", sidecar={"Description": "Tensor metrics in NAWM, all visits"}
        ),
        writer.write_group_table(
            tracts, "dti_tracts", sidecar={"Description": "Tract metrics, all visits"}
        ),
        writer.write_group_table(
            volumes, "volumetry_tissue", sidecar={"Description": "Tissue volumes, all visits"}
        ),
        writer.write_group_table(
            loads, "volumetry_lesion_load",
            sidecar={"Description": "Lesion count, volume and load per class, all visits"},
        ),
        writer.write_group_table(
            tracks, "volumetry_lesion_tracks",
            sidecar={"Description": "Lesion tracks across visits (match_lesions)"},
        ),
        writer.write_group_table(
            fmri, "fmri_planted_subnetwork",
            sidecar={"Description": "Mean Fisher z of the planted subnetwork's edges per visit"},
        ),
        *figures,
    ]
    print("\nDerivatives written (atomically):")
    print(f"  per visit: maps, masks, transforms, streamlines, tables, figures in {writer.root}")
    for path in (writer.root / "dataset_description.json", *written):
        print(f"  {path}")
    _headline(nawm, present, loads, writer.root)
    from msimaging.report import build_report

    report = build_report(writer.root, bids_dir=bids_dir)
    print(f"\nStudy report (one offline HTML file): {report}")
    print(f"\nDone in {time.perf_counter() - started:.0f} s.")
    print(f"Not yet available (later issues): {NOT_YET}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msimaging",
        description=(
            "Longitudinal imaging analysis in multiple sclerosis. Today: 'demo' generates "
            "the synthetic MS study and runs what exists on it, 'synth' only generates it, "
            "'inventory' lists what a BIDS dataset holds per visit."
        ),
    )
    parser.add_argument("--version", action="version", version=f"msimaging {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="generate the synthetic MS study and run on it")
    demo.add_argument(
        "output_dir",
        nargs="?",
        default="demo_output",
        help="where to write (default: %(default)s)",
    )
    demo.add_argument(
        "--preset",
        choices=("default", "tiny"),
        default="default",
        help="size of the synthetic study (default: %(default)s; tiny takes seconds)",
    )
    demo.add_argument(
        "--n-subjects", type=int, default=5, help="patients in the study (default: %(default)s)"
    )
    demo.set_defaults(func=_cmd_demo)
    synth = sub.add_parser(
        "synth", help="only generate a synthetic longitudinal MS study with ground truth"
    )
    synth.add_argument("output_dir", help="new folder for the BIDS dataset")
    synth.add_argument("--preset", choices=("default", "tiny"), default="default")
    synth.add_argument("--n-subjects", type=int, default=5)
    synth.add_argument(
        "--sessions", nargs="+", default=["M0", "M3", "M6"], help="session labels (months)"
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_synth)
    inv = sub.add_parser(
        "inventory", help="list subjects x visits (months) and the files found in a BIDS dataset"
    )
    inv.add_argument("bids_dir", help="root of the BIDS dataset (holds dataset_description.json)")
    inv.set_defaults(func=_cmd_inventory)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
        try:
            return args.func(args)
        except MSImagingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_DATAERR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
