"""Tensor fitting: msimaging ``fit_tensor`` against dipy ``TensorModel`` (the anchor), same run.

1. Speed and agreement: a 96 x 96 x 60 volume, 1 b0 + 64 directions at b = 1000 s/mm²,
   random tensors (eigenvalues 0.1-2.0e-3 mm²/s) in a brain-like ellipsoid mask, Rician noise
   at SNR 20 (float32 data). Timed: ``fit_tensor(img, bvals, bvecs, mask, method="wls")``
   (everything included: validation, mask check, chunked fit, output images) against
   ``TensorModel(gtab, fit_method="WLS").fit(data, mask=mask)`` on the float64 array
   (``img.get_fdata()``, as users call it; the conversion is not timed), and the same for OLS.
   Best of 3 (ours) and best of 2 (dipy). BLAS is limited to one thread for both (as in
   ANCHORS.md), because multi-threaded OpenBLAS is erratic on a shared 2-core machine.
2. Memory: in a fresh subprocess, an HCP-sized series (145 x 174 x 145 x 288, int16, 18 b0 +
   3 shells x 90 directions) is generated slab by slab: random tensors (S0 2000, SNR 20)
   inside a brain-like ellipsoid mask of about 0.84 M voxels, Rayleigh noise elsewhere. It is
   held as the int16 array (2.1 GB, every page resident) and fitted with
   ``fit_tensor(..., mask=ellipsoid)`` (WLS, default ``chunk_voxels``). The peak resident set
   size of the fit (VmHWM, reset after the data are generated) is reported over the bytes of
   the int16 input array.

Run: ``python -m benchmarks dti_fit`` or ``python -m benchmarks.bench_dti_fit``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

try:
    from benchmarks._machine import write_result
except ModuleNotFoundError:  # run as a plain script: python benchmarks/bench_dti_fit.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._machine import write_result

from msimaging.datasets.synthetic.diffusion import gradient_scheme, simulate_signal
from msimaging.dti.tensor import fit_tensor

SHAPE = (96, 96, 60)
HCP_SHAPE = (145, 174, 145)
SNR = 20.0
OURS_REPEATS = 3
DIPY_REPEATS = 2

_MEMORY_CHILD = r"""
import json, sys, time, warnings
import numpy as np, nibabel as nib
from msimaging.datasets.synthetic.diffusion import gradient_scheme, simulate_signal
from msimaging.dti.tensor import fit_tensor

def status(key):
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None

shape = tuple(int(v) for v in sys.argv[1:4])
bvals, bvecs = gradient_scheme(n_b0=18, n_directions=90, bvals_s_mm2=(1000.0, 2000.0, 3000.0))
grid = np.indices(shape, dtype=np.float32).reshape(3, -1).T
centre = (np.array(shape, np.float32) - 1) / 2
radii = np.array(shape, np.float32) * np.array([0.38, 0.40, 0.36], np.float32)
inside = np.sum(((grid - centre) / radii) ** 2, axis=1) <= 1.0
del grid
mask = inside.reshape(shape)
where = np.nonzero(mask)
n = where[0].size
data = np.empty((*shape, bvals.size), np.int16)
rng = np.random.default_rng(0)
start = time.perf_counter()
# Background: Rayleigh noise (sigma = S0 / SNR), as in magnitude images; it also makes every
# page of the array resident, as after reading a file.
for x in range(shape[0]):
    data[x] = np.rint(rng.rayleigh(100.0, data.shape[1:]))
for first in range(0, n, 50_000):
    part = tuple(axis[first:first + 50_000] for axis in where)
    m = part[0].size
    evals = -np.sort(-rng.uniform(0.1e-3, 2.0e-3, (m, 3)), axis=1)
    evecs = np.linalg.qr(rng.normal(size=(m, 3, 3)))[0]
    signal = simulate_signal(evals, evecs, bvals, bvecs, np.full(m, 2000.0), snr=20.0,
                             rng=rng)
    data[part] = np.clip(np.rint(signal), 0, 32767).astype(np.int16)
generate_s = time.perf_counter() - start
del evals, evecs, signal
img = nib.Nifti1Image(data, np.diag([1.25, 1.25, 1.25, 1.0]))
mask_img = nib.Nifti1Image(mask.astype(np.uint8), img.affine)
before_fit = status("VmRSS")
peak_generation = status("VmHWM")
try:
    with open("/proc/self/clear_refs", "w") as stream:
        stream.write("5")  # reset VmHWM so that it measures the fit alone
    reset = True
except OSError:
    reset = False
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fit = fit_tensor(img, bvals, bvecs, mask_img, method="wls")
fit_s = time.perf_counter() - start
print(json.dumps({
    "shape": list(data.shape), "dtype": str(data.dtype), "input_bytes": int(data.nbytes),
    "mask_voxels": int(n), "generate_seconds": generate_s, "fit_seconds": fit_s,
    "rss_before_fit_bytes": before_fit, "peak_rss_generation_bytes": peak_generation,
    "peak_rss_fit_bytes": status("VmHWM"), "peak_reset_before_fit": reset,
    "n_floored": fit.n_floored,
}))
"""


def _single_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's stack
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _volume() -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray, nib.Nifti1Image]:
    bvals, bvecs = gradient_scheme(n_b0=1, n_directions=64, bvals_s_mm2=(1000.0,), seed=0)
    grid = np.indices(SHAPE).reshape(3, -1).T - (np.array(SHAPE) - 1) / 2
    radii = np.array(SHAPE) * np.array([0.42, 0.45, 0.45])
    inside = np.sum((grid / radii) ** 2, axis=1) <= 1.0
    rng = np.random.default_rng(1)
    n = inside.size
    evals = -np.sort(-rng.uniform(0.1e-3, 2.0e-3, (n, 3)), axis=1)
    evecs = np.linalg.qr(rng.normal(size=(n, 3, 3)))[0]
    s0 = np.where(inside, 1000.0, 0.0)
    signal = simulate_signal(
        evals, evecs, bvals, bvecs, s0, snr=SNR, noise_reference=1000.0, rng=2
    )
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(signal.reshape(*SHAPE, -1), affine)
    mask = nib.Nifti1Image(inside.reshape(SHAPE).astype(np.uint8), affine)
    return img, bvals, bvecs, mask


def _best(function, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def _compare(ours, theirs, mask: np.ndarray) -> dict[str, float]:
    out = {}
    for name in ("fa", "md", "ad", "rd"):
        a = np.asanyarray(getattr(ours, name).dataobj).astype(np.float64)[mask]
        b = np.asarray(getattr(theirs, name))[mask]
        if name == "fa":
            out["max_abs_delta_fa"] = float(np.max(np.abs(a - b)))
        else:
            out[f"max_rel_delta_{name}"] = float(np.max(np.abs(a - b) / np.abs(b)))
    return out


def _speed() -> dict:
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    img, bvals, bvecs, mask_img = _volume()
    mask = np.asanyarray(mask_img.dataobj).astype(bool)
    data64 = img.get_fdata()
    gtab = gradient_table(bvals, bvecs=bvecs)
    rows = {}
    with _single_thread():
        for ours_name, dipy_name in (("wls", "WLS"), ("ols", "OLS")):
            ours_s, ours = _best(
                lambda m=ours_name: fit_tensor(img, bvals, bvecs, mask_img, method=m),
                OURS_REPEATS,
            )
            model = TensorModel(gtab, fit_method=dipy_name)
            dipy_s, theirs = _best(lambda m=model: m.fit(data64, mask=mask), DIPY_REPEATS)
            n = int(mask.sum())
            rows[ours_name] = {
                "msimaging_seconds": ours_s,
                "dipy_seconds": dipy_s,
                "msimaging_voxels_per_s": n / ours_s,
                "dipy_voxels_per_s": n / dipy_s,
                "ratio_dipy_over_msimaging": dipy_s / ours_s,
                **_compare(ours, theirs, mask),
            }
    return {
        "shape": [*SHAPE, int(bvals.size)],
        "mask_voxels": int(mask.sum()),
        "scheme": "1 b0 + 64 directions, b=1000 s/mm²",
        "snr": SNR,
        "input_dtype": str(img.get_data_dtype()),
        "blas_threads": 1,
        "methods": rows,
    }


def _memory() -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, *map(str, HCP_SHAPE)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["peak_rss_fit_over_input"] = result["peak_rss_fit_bytes"] / result["input_bytes"]
    result["voxels_per_s"] = result["mask_voxels"] / result["fit_seconds"]
    return result


def main() -> dict:
    speed = _speed()
    memory = _memory()
    payload = {
        "benchmark": "dti_fit",
        "description": (
            "msimaging fit_tensor (vectorised WLS/OLS, chunked) vs dipy TensorModel "
            "WLS/OLS on the same synthetic data; peak RSS of a chunked fit of an HCP-sized "
            "int16 series"
        ),
        "speed": speed,
        "memory": memory,
        "targets": {"ratio_wls": ">= 10", "peak_rss_over_input": "< 2"},
    }
    path = write_result("dti_fit", payload)

    print(f"{speed['shape']} volume, {speed['mask_voxels']} voxels in mask, 1 BLAS thread")
    print(
        f"{'method':<8}{'ours s':>9}{'dipy s':>9}{'ratio':>8}{'max|dFA|':>11}{'max rel dMD':>13}"
    )
    for name, row in speed["methods"].items():
        print(
            f"{name:<8}{row['msimaging_seconds']:>9.3f}{row['dipy_seconds']:>9.3f}"
            f"{row['ratio_dipy_over_msimaging']:>7.1f}x{row['max_abs_delta_fa']:>11.1e}"
            f"{row['max_rel_delta_md']:>13.1e}"
        )
    gib = 1024**3
    print(
        f"HCP-sized {memory['shape']} {memory['dtype']}: input {memory['input_bytes'] / gib:.2f} "
        f"GiB, {memory['mask_voxels']} voxels fitted in {memory['fit_seconds']:.1f} s; peak RSS "
        f"{memory['peak_rss_fit_bytes'] / gib:.2f} GiB = "
        f"{memory['peak_rss_fit_over_input']:.2f}x the input array (RSS before the fit "
        f"{memory['rss_before_fit_bytes'] / gib:.2f} GiB)"
    )
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
