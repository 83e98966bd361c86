"""Command line: the BIDS App and its helpers.

``msimaging BIDS_DIR OUTPUT_DIR participant|group [options]`` (BIDS-App convention),
``msimaging demo [OUTPUT_DIR]`` (generate the synthetic study and run everything on it),
``msimaging synth OUTPUT_DIR`` (only generate) and ``msimaging inventory BIDS_DIR``.

Exit codes: 0 success; 1 some participant tasks failed (the rest completed, see
``failures.tsv``); 16 the input is not a usable BIDS dataset; 17 a participant or session
label is invalid or not in the dataset; 18 the output folder cannot be used (inside the input
dataset, has a link into it, not writable, or used by another run: see --wait); 64
command-line usage error (also an unreachable --scheduler); 65 other invalid input; 130
interrupted (Ctrl-C: finished tasks are kept, temporary files removed, the lock released).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from msimaging._version import __version__
from msimaging.derivatives import DerivativesLayout
from msimaging.errors import BIDSError, InputError, LabelError, MSImagingError, OutputError

__all__ = ["main"]

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_BIDS = 16
EXIT_LABEL = 17
EXIT_OUTPUT = 18
EXIT_USAGE = 64
EXIT_DATAERR = 65
_COMMANDS = ("demo", "synth", "inventory")

_EPILOG = """\
other commands:
  msimaging demo [OUTPUT_DIR]     generate the synthetic 5-patient study (M0/M3/M6) and run the
                                  participant and group levels on it, printing the headline
                                  findings and the report's path
  msimaging synth OUTPUT_DIR      only generate the synthetic study (with its ground truth)
  msimaging inventory BIDS_DIR    per visit: the files found, which analyses can run and, for
                                  each missing input, the tool that makes it and its BIDS path

examples:
  msimaging /data/trial /data/trial-msimaging participant --n-workers 2
  msimaging /data/trial /data/trial-msimaging participant --participant-label 01 02 \\
      --modalities dti volumetry
  msimaging /data/trial /data/trial-msimaging group --nbs-tail right
  msimaging /data/trial /out participant --scheduler tcp://10.0.0.5:8786   # a Dask cluster
  msimaging /data/trial /out participant --bids-filter dwi:dir=AP bold:task=rest,run=1

choosing inputs when a visit has several files of a kind (e.g. DWI dir-AP and dir-PA):
  --bids-filter NAME:ENTITY=VALUE[,ENTITY=VALUE] ...   NAME: t1w flair dwi bold dseg probseg
                                  lesion_mask; ENTITY: task acq ce rec dir run echo space res
                                  den desc label
  --bids-filter-file FILE.json    fMRIPrep's spelling: {"dwi": {"direction": "AP"}}
  --config: [inputs.dwi] dir = "AP"   (the command line wins over the file, the file over
                                  the config)
Options, config keys and values, labels and input choices are all checked before any work.

Re-running skips every task whose outputs exist with the same inputs, parameters and version
(--force recomputes). Failed visits are listed in OUTPUT_DIR/failures.tsv; logs are in
OUTPUT_DIR/logs/.

exit codes: 0 ok; 1 some tasks failed (others completed); 16 input is not a usable BIDS
dataset; 17 invalid or unknown participant/session label; 18 output folder unusable (inside
the input or linked into it, not writable, or locked by another run: --wait waits);
64 usage error (unknown option, atlas, config key or value, unreachable --scheduler); 65 other
invalid input (e.g. several files match an input and no filter chooses); 130 interrupted.

One run at a time per output folder: a run holds OUTPUT_DIR/.msimaging.lock (pid, host); a
lock left by a killed run is taken over with a warning, and the temporary files
(.<hex>.tmp.<name>) a killed run left are removed at start-up.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 64 (sysexits EX_USAGE)
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _print_table(title: str, frame) -> None:
    print(f"\n{title}")
    if frame is None or frame.empty:
        print("  (none)")
    else:
        print(frame.to_string(index=False))


# --------------------------------------------------------------------------------------------
# BIDS App
# --------------------------------------------------------------------------------------------


def build_app_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="msimaging",
        description=(
            "Longitudinal imaging analysis in multiple sclerosis, as a BIDS App. The "
            "participant level runs, for every subject and visit, DTI (tensor maps, NAWM and "
            "tract metrics), fMRI (cleaned node time series and connectivity matrices) and "
            "volumetry (tissue volumes, lesions by location), each visit an independent task on "
            "Dask. The group level gathers the study tables, tracks lesions across visits, "
            "runs the Network-Based Statistic (repeated-measures F over every visit, or the "
            "design chosen with --nbs-design) and the exact longitudinal statistics, and "
            "writes one HTML report."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bids_dir", help="root of the BIDS dataset (raw data + derivatives "
                        "such as fMRIPrep and a segmentation); never written to")
    parser.add_argument("output_dir", help="where msimaging writes its derivatives")
    parser.add_argument("analysis_level", choices=("participant", "group"),
                        help="participant: per-visit tasks; group: study tables, NBS, report")
    parser.add_argument("--participant-label", "--participant_label", nargs="+",
                        metavar="LABEL", dest="participant_label",
                        help="subjects to run (e.g. 01 02, with or without 'sub-'; default all)")
    parser.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                        dest="session_label",
                        help="sessions to run (e.g. M0 M6; default all); each must exist")
    parser.add_argument("--modalities", nargs="+", choices=("dti", "fmri", "volumetry"),
                        default=["dti", "fmri", "volumetry"], help="default: all three")
    parser.add_argument("--atlas", default=None,
                        help="fMRI node atlas: seitzman2018, power2011, dosenbach2010 (MNI152 "
                        "coordinates: need space-MNI152* BOLD) or a label image path "
                        "(default: seitzman2018)")
    parser.add_argument("--bids-filter", nargs="+", metavar="NAME:ENTITY=VALUE",
                        help="choose inputs by BIDS entities when several match, e.g. "
                        "dwi:dir=AP bold:task=rest,space=MNI152NLin2009cAsym")
    parser.add_argument("--bids-filter-file", metavar="FILE",
                        help='JSON filters (fMRIPrep spelling), e.g. {"dwi": {"dir": "AP"}}')
    parser.add_argument("--n-workers", type=_positive_int, default=None, metavar="N",
                        help="worker processes of the embedded Dask cluster (default: one per "
                        "core; 1 runs in this process)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="use an existing Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--config", metavar="FILE",
                        help="JSON or TOML file of parameters per modality, e.g. "
                        '{"fmri": {"strategy": "scrubbing"}, "group": {"nbs_tail": "right"}}')
    parser.add_argument("--nbs-tail", choices=("both", "right", "left"), default=None,
                        help="group level: 'right' tests an increase (later > earlier visit) "
                        "in the paired, pairwise and trend designs (default: both)")
    parser.add_argument("--nbs-design", default=None,
                        choices=("auto", "repeated_measures", "trend", "paired", "pairwise"),
                        help="group level NBS design (default auto: repeated-measures F over "
                        "every visit when >= 3 visits with >= 3 complete subjects, else paired "
                        "first vs last; the report says which ran and why)")
    parser.add_argument("--nbs-method", default=None, choices=("nbs", "tfnbs", "constrained"),
                        help="group level NBS inference: components of supra-threshold edges "
                        "(default), threshold-free NBS, or constrained NBS per network pair")
    parser.add_argument("--force", action="store_true",
                        help="recompute tasks whose outputs are already up to date (does not "
                        "override another run's lock on the output folder)")
    parser.add_argument("--wait", action="store_true",
                        help="when another msimaging run uses OUTPUT_DIR, wait for it to "
                        "finish instead of stopping (exit 18)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--version", action="version", version=f"msimaging {__version__}")
    return parser


def _positive_int(text: str) -> int:
    """argparse type of --n-workers: a whole number >= 1 (else a usage error, exit 64)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{value} workers: give 1 or more (1 runs in this process; leave it out for one "
            "per core)")
    return value


def _regular_file(path: str, option: str) -> Path:
    """``path`` if it is a regular file; refuses folders, FIFOs and devices before reading
    (a FIFO would block forever)."""
    import stat

    file = Path(path)
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{option} {path!r} does not exist; check the path.") from None
    except (OSError, RuntimeError) as exc:  # permissions, a symlink loop
        raise InputError(f"{option} {path!r} cannot be opened: {exc}.") from exc
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO or device)"
        raise InputError(f"{option} {path!r} is {kind}; pass a JSON or TOML file.")
    return file


def _read_config(path: str | None) -> dict[str, Any]:
    """The --config file, every section, key and value checked (ConfigError: exit 64)."""
    from msimaging.pipeline.options import check_config

    if path is None:
        return {}
    file = _regular_file(path, "--config")
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            config = tomllib.loads(file.read_text(encoding="utf-8"))
        else:
            config = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--config {path!r} cannot be parsed: {exc}") from exc
    return check_config(config, f"--config {path!r}")


def check_options(args: argparse.Namespace) -> dict[str, Any]:
    """Every option of a BIDS-App run checked, without reading the dataset (< 1 s).

    Returns ``{"params": per-modality parameters, "group": group parameters, "filters":
    input filters}``; raises ConfigError (exit 64) or LabelError (exit 17).
    """
    from msimaging.pipeline import check_labels
    from msimaging.pipeline.inputs import merge_filters, parse_filter_args, read_filter_file
    from msimaging.pipeline.options import check_atlas

    config = _read_config(args.config)
    params = {k: dict(v) for k, v in config.items() if k not in ("group", "inputs")}
    if args.atlas is not None:  # the command line wins over the config file
        params.setdefault("fmri", {})["atlas"] = check_atlas(args.atlas)
    if args.bids_filter_file:
        _regular_file(args.bids_filter_file, "--bids-filter-file")
    filters = merge_filters(
        config.get("inputs", {}),
        read_filter_file(args.bids_filter_file) if args.bids_filter_file else {},
        parse_filter_args(args.bids_filter),
    )
    group = dict(config.get("group", {}))
    if args.nbs_tail:
        group["nbs_tail"] = args.nbs_tail
    if args.nbs_design:
        group["nbs_design"] = args.nbs_design
    if args.nbs_method:
        group["nbs_method"] = args.nbs_method
    check_labels(args.participant_label, "participant label", "sub-")
    check_labels(args.session_label, "session label", "ses-")
    return {"params": params, "group": group, "filters": filters}


def _run_app(args: argparse.Namespace) -> int:
    from msimaging.pipeline import run_group, run_participant

    options = check_options(args)
    bids_dir, output_dir = Path(args.bids_dir), Path(args.output_dir)
    if args.analysis_level == "participant":
        run = run_participant(
            bids_dir, output_dir, participant_label=args.participant_label,
            session_label=args.session_label, modalities=args.modalities,
            params=options["params"], filters=options["filters"], n_workers=args.n_workers,
            scheduler=args.scheduler, force=args.force, progress=not args.no_progress,
            wait=args.wait,
        )
        _print_table("Participant tasks:", run.summary())
        print(f"\nlog: {run.log}")
        if not run.ok:
            _print_table(f"{len(run.failures)} task(s) failed (details in the log; listed in "
                         f"{output_dir / 'failures.tsv'}):", run.failures)
            return EXIT_TASKS_FAILED
        return EXIT_OK
    result = run_group(bids_dir, output_dir, progress=not args.no_progress, wait=args.wait,
                       **options["group"])
    _print_group(result)
    return EXIT_OK


def _print_group(result) -> None:
    print("\nGroup tables:")
    for name, path in result.tables.items():
        print(f"  {name}: {path}")
    if not result.excluded.empty:
        _print_table("Excluded from the group level:", result.excluded)
    for note in result.notes:
        print(f"note: {note}")
    if result.report:
        print(f"\nStudy report (one offline HTML file): {result.report}")


# --------------------------------------------------------------------------------------------
# demo, synth, inventory
# --------------------------------------------------------------------------------------------


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
    from msimaging.pipeline.inputs import (
        inventory,
        merge_filters,
        parse_filter_args,
        read_filter_file,
    )
    from msimaging.pipeline.options import check_atlas

    config = _read_config(args.config)
    atlas = check_atlas(args.atlas) if args.atlas else config.get("fmri", {}).get(
        "atlas", "seitzman2018")
    filters = merge_filters(
        config.get("inputs", {}),
        read_filter_file(args.bids_filter_file) if args.bids_filter_file else {},
        parse_filter_args(args.bids_filter),
    )
    study, present = _inventory(Path(args.bids_dir))
    print(repr(study))
    _print_table("Sessions (visit time in months; files found):", present)
    visits, missing = inventory(study, modalities=args.modalities, filters=filters, atlas=atlas,
                                params=config)
    _print_table("Analyses per visit (ready, or what is missing):", visits)
    if missing.empty:
        print("\nEvery selected analysis can run at every visit.")
    else:
        print("\nMissing inputs: the tool that usually produces each, and where BIDS expects it "
              "(relative to the dataset root):")
        for row in missing.itertuples():
            where = f"{row.participant_id} {row.session_id or ''}".strip()
            if row.input:
                print(f"  {where} {row.modality}: {row.input} - from {row.produced_by}\n"
                      f"      expected at {row.expected_path}")
            else:
                print(f"  {where} {row.modality}: {row.problem}")
    if study.problems:
        print("\nFiles found but not usable:")
        for problem in study.problems:
            print(f"  {problem}")
    return EXIT_OK


def _cmd_synth(args: argparse.Namespace) -> int:
    from msimaging.datasets import make_synthetic_study

    root = make_synthetic_study(
        args.output_dir, n_subjects=args.n_subjects, sessions=args.sessions, seed=args.seed,
        preset=args.preset, progress=lambda message: print(f"  {message}", flush=True),
    )
    print(f"synthetic study written: {root}")
    print(f"ground truth: {root / 'sourcedata' / 'ground_truth' / 'ground_truth.json'}")
    return EXIT_OK


def _truth_table(root: Path):
    """One row per subject and visit: the planted truth a user can check results against."""
    import pandas as pd

    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    rows = []
    for sub, subject in truth["subjects"].items():
        for ses, visit in subject["sessions"].items():
            regions = visit["dwi"]["regions"]
            rows.append({
                "participant_id": sub, "session_id": ses, "months": visit["months"],
                "lesions": visit["lesions"]["count"],
                "lesion_volume_ml": round(visit["lesions"]["volume_mm3"] / 1000, 2),
                "NAWM_ml": round(visit["tissue_volumes_ml"]["NAWM"], 1),
                "RD_NAWM_left_um2_ms": round(regions["NAWM_left"]["rd"] * 1e3, 4),
                "RD_NAWM_right_um2_ms": round(regions["NAWM_right"]["rd"] * 1e3, 4),
                "planted_delta_r": round(visit["func"]["planted_delta_r"], 3),
            })
    return pd.DataFrame(rows), truth


def _cmd_demo(args: argparse.Namespace) -> int:
    from msimaging.datasets import make_synthetic_study
    from msimaging.pipeline import run_group, run_participant

    out = Path(args.output_dir).resolve()
    bids_dir = out / "study"
    deriv = out / "derivatives" / "msimaging"
    print(f"msimaging {__version__} demo -> {out}")
    started = time.perf_counter()
    if (bids_dir / "dataset_description.json").exists():
        print(f"\n[1/4] reusing the synthetic study from a previous run: {bids_dir}")
    else:
        print(f"\n[1/4] generating the synthetic MS study ({args.preset} preset: "
              f"{args.n_subjects} patients x visits M0/M3/M6, planted lesions, RD fall in left "
              "NAWM, a subnetwork whose connectivity rises)")
        make_synthetic_study(bids_dir, n_subjects=args.n_subjects, preset=args.preset,
                             progress=lambda m: print(f"      {m}", flush=True))
    generated = time.perf_counter()
    study, _ = _inventory(bids_dir)
    print(f"      {study!r}")
    truth_table, truth = _truth_table(bids_dir)
    _print_table("      planted ground truth (what the analyses must recover):", truth_table)

    print("\n[2/4] participant level: DTI + tracts, fMRI connectome and volumetry per visit "
          "(one Dask task each)")
    run = run_participant(bids_dir, deriv, n_workers=args.n_workers, progress=True)
    _print_table("      tasks:", run.summary())
    participant_done = time.perf_counter()
    print("\n[3/4] group level: study tables, lesion tracks, NBS (repeated-measures F over "
          "every visit; paired visit pairs one-sided, the pre-specified hypothesis being a rise "
          "in connectivity), exact statistics, report")
    group = run_group(bids_dir, deriv, nbs_tail="right", progress=False)
    _print_group(group)
    print("\n[4/4] checks against the planted truth and headline findings")
    _check_against_truth(deriv, truth)
    _headline(deriv, group, truth)
    done = time.perf_counter()
    print(f"\nTimes: study generation {generated - started:.0f} s, participant level "
          f"{participant_done - generated:.0f} s ({run.n_workers} workers), group level "
          f"{done - participant_done:.0f} s; total {done - started:.0f} s.")
    if group.report:
        print(f"Study report: {group.report}")
    return EXIT_OK if run.ok else EXIT_TASKS_FAILED


def _check_against_truth(deriv: Path, truth: dict) -> None:
    import pandas as pd

    load = DerivativesLayout(deriv).group_table("volumetry_lesion_load")
    if load.is_file():
        table = pd.read_csv(load, sep="\t").set_index(["participant_id", "session_id",
                                                       "location"])
        exact = total = 0
        for sub, subject in truth["subjects"].items():
            for ses, visit in subject["sessions"].items():
                total += 1
                lesions = visit["lesions"]
                same = table.loc[(sub, ses, "total"), "count"] == lesions["count"] and all(
                    table.loc[(sub, ses, c), "count"] == v["count"]
                    for c, v in lesions["by_class"].items()
                )
                exact += bool(same)
        print(f"  lesion counts per class equal the planted truth at {exact}/{total} visits")
    tracks = DerivativesLayout(deriv).group_table("volumetry_lesion_tracks")
    if tracks.is_file():
        got = pd.read_csv(tracks, sep="\t")["category"].value_counts().sort_index()
        planted = pd.Series(
            [{"disappearing": "disappeared"}.get(lesion["category"], lesion["category"])
             for subject in truth["subjects"].values() for lesion in subject["lesions"]]
        ).value_counts().sort_index()
        same = got.to_dict() == planted.to_dict()
        print(f"  lesion evolution categories {'equal' if same else 'DIFFER from'} the planted "
              f"ones: {got.to_dict()}")


def _headline(deriv: Path, group, truth: dict) -> None:
    import pandas as pd

    from msimaging.stats import compare_visits

    print("\n  Headline findings (exact tests; planted: left-NAWM RD -8% at M6, right "
          "unchanged; a subnetwork rising at M6):")
    nawm_path = DerivativesLayout(deriv).group_table("dti_nawm")
    if nawm_path.is_file():
        nawm = pd.read_csv(nawm_path, sep="\t")
        table = nawm[(nawm.metric == "rd") & nawm.roi.isin(["NAWM_left", "NAWM_right"])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = compare_visits(table, value="mean", by=["roi"], posthoc="none")
        changes = result.changes
        last = changes["months"].max()
        for row in result.tests.itertuples():
            pct = changes[(changes.roi == row.roi) & (changes.months == last)]["pct_change"]
            print(f"    {row.roi} RD: median change {pct.median():+.1f}% at month {last:g}; "
                  f"Friedman exact p = {row.p_exact:.4g} (chi-square approx. "
                  f"{row.p_chi2_approx:.3g}), n = {row.n_subjects}")
    nbs_sidecar = DerivativesLayout(deriv).group_table("fmri_nbs_components").with_suffix(".json")
    design = (json.loads(nbs_sidecar.read_text(encoding="utf-8")).get("Design", "NBS")
              if nbs_sidecar.is_file() else "NBS")
    if group.nbs is not None and group.nbs.components:
        best = group.nbs.components[0]
        planted = set(truth.get("func", {}).get("planted_nodes", []))
        inside = sum(int(i) in planted and int(j) in planted for i, j in best.edges)
        hubs = group.nbs.node_table(0).head(3)
        named = "; ".join(f"{row.name} · {row.network}" for row in hubs.itertuples())
        print(f"    NBS ({design}): most significant component {best.n_edges} edges, "
              f"{best.n_nodes} nodes, FWER p = {best.p_value:.4g} (smallest attainable "
              f"{group.nbs.smallest_p:.4g}); {100 * inside / best.n_edges:.0f} % of its edges "
              f"join planted nodes; hubs {named}")
    elif group.nbs is not None:
        print(f"    NBS ({design}): no suprathreshold component")
    load_path = DerivativesLayout(deriv).group_table("volumetry_lesion_load")
    if load_path.is_file():
        loads = pd.read_csv(load_path, sep="\t")
        total = loads[loads.location == "total"].pivot_table(
            index="participant_id", columns="session_id", values="count").astype(int)
        print("    T2 lesion count per patient and visit:")
        for line in total.to_string().splitlines():
            print(f"      {line}")


def build_command_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="msimaging", description="msimaging helper commands.",
                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="generate the synthetic MS study and run everything")
    demo.add_argument("output_dir", nargs="?", default="demo_output",
                      help="where to write (default: %(default)s)")
    demo.add_argument("--preset", choices=("default", "tiny"), default="default",
                      help="size of the synthetic study (default: %(default)s; tiny is fast)")
    demo.add_argument("--n-subjects", type=int, default=5,
                      help="patients in the study (default: %(default)s)")
    demo.add_argument("--n-workers", type=int, default=None,
                      help="Dask workers (default: one per core)")
    demo.set_defaults(func=_cmd_demo)
    synth = sub.add_parser("synth", help="only generate a synthetic longitudinal MS study")
    synth.add_argument("output_dir", help="new folder for the BIDS dataset")
    synth.add_argument("--preset", choices=("default", "tiny"), default="default")
    synth.add_argument("--n-subjects", type=int, default=5)
    synth.add_argument("--sessions", nargs="+", default=["M0", "M3", "M6"],
                       help="session labels (months)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_synth)
    inv = sub.add_parser("inventory", help="per visit: files found, analyses that can run, and "
                         "where each missing input comes from")
    inv.add_argument("bids_dir", help="root of the BIDS dataset")
    inv.add_argument("--modalities", nargs="+", choices=("dti", "fmri", "volumetry"),
                     default=["dti", "fmri", "volumetry"])
    inv.add_argument("--atlas", default=None, help="as for the participant level")
    inv.add_argument("--bids-filter", nargs="+", metavar="NAME:ENTITY=VALUE")
    inv.add_argument("--bids-filter-file", metavar="FILE")
    inv.add_argument("--config", metavar="FILE")
    inv.set_defaults(func=_cmd_inventory)
    return parser


def _exit_code(exc: MSImagingError) -> int:
    from msimaging.pipeline.options import ConfigError

    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, OutputError):
        return EXIT_OUTPUT
    if isinstance(exc, LabelError):
        return EXIT_LABEL
    if isinstance(exc, BIDSError):
        return EXIT_BIDS
    return EXIT_DATAERR


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        build_app_parser().print_help()
        return EXIT_USAGE
    if argv[0] in _COMMANDS:
        args = build_command_parser().parse_args(argv)
    else:
        args = build_app_parser().parse_args(argv)
        args.func = _run_app
    previous_format = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
        try:
            return args.func(args)
        except MSImagingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return _exit_code(exc)
        except KeyboardInterrupt:
            print("interrupted: finished tasks are kept; run the same command again to resume",
                  file=sys.stderr)
            return 130
        finally:
            warnings.formatwarning = previous_format  # main() may be called from Python


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
