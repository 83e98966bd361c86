"""Connectomes of one patient at M0 and M6 and the three classic figures of their change.

Usage::

    python examples/connectome_figures.py [OUTPUT_DIR]

Generates a one-patient synthetic study (default preset, visits M0 and M6, planted rise of the
left default-mode / parietal / right parahippocampal subnetwork at M6), extracts the Seitzman
2018 node time series with the "simple" confound strategy, builds Fisher-z correlation
connectomes, and draws the change M6 - M0 with the planted subnetwork highlighted: weighted
adjacency matrix ordered by network, circular connectogram, glass brain (node size = degree)
and the interactive 3-D view (self-contained HTML). The PNGs in ``docs/figures/`` come from
this script (default OUTPUT_DIR).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from msimaging.bids import Study
from msimaging.datasets import make_synthetic_study
from msimaging.fmri import (
    Connectome,
    connectivity,
    extract_timeseries,
    plot_adjacency,
    plot_connectogram,
    plot_glass_brain,
    view_connectome_html,
)


def main(output_dir: Path) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_study(Path(tmp) / "study", n_subjects=1, sessions=("M0", "M6"))
        truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
        planted = np.asarray(truth["func"]["planted_edges"], dtype=int)
        connectomes = {}
        for visit in Study(root):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                series = extract_timeseries(
                    visit.get("bold_preproc"), "seitzman2018", confounds=visit.get("confounds"),
                    strategy="simple", mask=visit.get("bold_mask"),
                )
            connectomes[visit.session_id] = connectivity(series, fisher_z=True)
    before, after = connectomes["ses-M0"], connectomes["ses-M6"]
    change = Connectome(after.matrix - before.matrix, after.nodes, kind="correlation",
                        fisher_z=True, participant_id="sub-01", session_id="M6-M0")
    z_change = change.matrix[planted[:, 0], planted[:, 1]]
    print(f"planted subnetwork: {len(planted)} edges, mean Fisher z change M6 - M0 = "
          f"{np.nanmean(z_change):+.3f} (other edges: "
          f"{np.nanmean(change.matrix[np.triu_indices_from(change.matrix, 1)]):+.3f})")
    paths = [output_dir / name for name in ("change_adjacency.png", "change_connectogram.png",
                                            "change_glassbrain.png", "change_connectome.html")]
    plot_adjacency(change, highlight_edges=planted, path=paths[0])
    plot_connectogram(change, highlight_edges=planted, path=paths[1])
    plot_glass_brain(change, highlight_edges=planted, path=paths[2])
    view_connectome_html(change, paths[3], highlight_edges=planted)
    for path in paths:
        print(f"written: {path}")
    return paths


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "docs" / "figures"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
