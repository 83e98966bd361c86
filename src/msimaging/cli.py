"""Command line: ``msimaging demo`` and ``msimaging inventory``.

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

NOT_YET = (
    "DTI tensor fitting and NAWM tables (issue 4), tracts (issue 5), connectomes (issue 6), "
    "NBS (issue 7), volumetry (issue 8), longitudinal statistics and report (issue 9), "
    "the Dask pipeline (issue 10)"
)

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


def _cmd_demo(args: argparse.Namespace) -> int:
    from msimaging.datasets import make_example_layout
    from msimaging.derivatives import DerivativesWriter
    from msimaging.io import load_dwi

    out = Path(args.output_dir).resolve()
    bids_dir = out / "bids"
    print(f"msimaging {__version__} demo -> {out}")
    print(
        "The synthetic MS study with planted effects (issue 3) is not built yet: this demo "
        "runs on the example BIDS layout (2 subjects x 3 visits, tiny images, one piece "
        "deliberately missing) and exercises what exists today: BIDS discovery, validated "
        "loading and the derivatives writer."
    )
    if (bids_dir / "dataset_description.json").exists():
        print(f"\n[1/3] reusing the example BIDS dataset from a previous run: {bids_dir}")
    else:
        make_example_layout(bids_dir, n_subjects=2, missing=[("02", "M3", "bold_preproc")])
        print(f"\n[1/3] wrote example BIDS dataset: {bids_dir}")

    study, present = _inventory(bids_dir)
    print(f"[2/3] discovered {study!r}")
    _print_table("Sessions (visit time in months; files found):", present)
    missing = study.missing()
    _print_table("Missing pieces (present elsewhere in the study):", missing)

    print("\n[3/3] validating every diffusion series (load_dwi)")
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
            print(f"  ok  {dwi!r}")

    import pandas as pd

    writer = DerivativesWriter(out / "derivatives" / "msimaging", input_datasets=[bids_dir])
    inventory_path = writer.write_group_table(
        present, "sessions", sidecar={"Description": "Sessions found by msimaging.bids.Study"}
    )
    missing_path = writer.write_group_table(
        missing, "missing", sidecar={"Description": "Pieces missing per session"}
    )
    dwi_path = writer.write_group_table(
        pd.DataFrame(rows), "dwi_validation", sidecar={"Description": "Validated DWI series"}
    )
    print("\nDerivatives written (atomically):")
    for path in (writer.root / "dataset_description.json", inventory_path, missing_path, dwi_path):
        print(f"  {path}")
    print(f"\nNot yet available (later issues): {NOT_YET}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msimaging",
        description=(
            "Longitudinal imaging analysis in multiple sclerosis. Today: 'demo' runs the "
            "built-in example, 'inventory' lists what a BIDS dataset holds per visit."
        ),
    )
    parser.add_argument("--version", action="version", version=f"msimaging {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="generate the built-in example study and run on it")
    demo.add_argument(
        "output_dir",
        nargs="?",
        default="demo_output",
        help="where to write (default: %(default)s)",
    )
    demo.set_defaults(func=_cmd_demo)
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
