"""Leave-one-out test of the built-in model's former "looks like a T1, not a FLAIR" check, on every real FLAIR and T1
at hand and on simulated pairs whose sequence timings vary well beyond the simulator's own jitter.

The check (removed from modalsynth.input_checks after this test, RESULTS.md §13) warned when, inside the brain and
scaled to its 1-99 % range, the median was >= 0.55 and the dark half (p50 - p10) >= 0.235: thresholds set just below
the lowest of the 7 real T1s. Here each volume is held out in turn, the two thresholds are fitted the same way on the
other real volumes (just below their lowest T1: dark spread - 0.01, median - 0.04, the margins the shipped thresholds
had), and the held-out volume is classified; simulated volumes are classified by the thresholds fitted on all real
ones. The margin is the held-out volume's distance to the dark-spread threshold, positive on the right side.

    python benchmarks/input_check_loo.py --simulated 12 --json /tmp/input_check_loo.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import numpy as np
from scipy import ndimage

import modalsynth.data.simulate as simulate
from modalsynth.data.preprocess import foreground_mask
from modalsynth.io import load_volume

DARK_MARGIN, MEDIAN_MARGIN = 0.01, 0.04
SHIPPED = {"median": 0.55, "dark_spread": 0.235}


def brain_intensity_profile(data: np.ndarray) -> tuple[float, float]:
    """(median, p50 - p10) of the foreground intensities scaled to their 1-99 % range, away from the brain's edge (the
    former check's features, as modalsynth.input_checks computed them)."""
    coarse = np.asarray(data[::2, ::2, ::2], dtype=np.float32)
    values = coarse[ndimage.binary_erosion(foreground_mask(coarse), iterations=2)]
    lo, p10, p50, hi = np.percentile(values, [1, 10, 50, 99])
    span = max(float(hi - lo), 1e-8)
    return float(p50 - lo) / span, float(p50 - p10) / span


def fit(volumes: list[dict[str, Any]]) -> dict[str, float]:
    """The thresholds as they were fitted: just below the lowest T1 of `volumes` on each feature."""
    t1s = [v for v in volumes if v["kind"] == "t1"]
    return {
        "median": min(v["median"] for v in t1s) - MEDIAN_MARGIN,
        "dark_spread": min(v["dark_spread"] for v in t1s) - DARK_MARGIN,
    }


def flagged(volume: dict[str, Any], thresholds: dict[str, float]) -> bool:
    return volume["median"] >= thresholds["median"] and volume["dark_spread"] >= thresholds["dark_spread"]


def varied_timing(rng: np.random.Generator):
    """The simulator's parameter draw with the T1w and FLAIR timings redrawn from wide ranges (2D and 3D protocols,
    short and long TE, TI mistuned by up to 10 %)."""
    draw = simulate._draw_parameters

    def wrapped(subject_rng: np.random.Generator, template: Any) -> dict[str, Any]:
        params = draw(subject_rng, template)
        params["t1w"] = {"tr_ms": float(rng.uniform(350, 900)), "te_ms": float(rng.uniform(4, 20))}
        tr = float(rng.uniform(4800, 11000))
        ti = simulate.null_inversion_time(params["tissues"]["csf"]["t1_ms"], tr) * float(rng.uniform(0.9, 1.1))
        params["flair"] = {"tr_ms": tr, "te_ms": float(rng.uniform(70, 150)), "ti_ms": float(ti)}
        return params

    return wrapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=pathlib.Path, required=True, help="folder of real subjects, one folder each")
    ap.add_argument("--simulated", type=int, default=12, help="simulated pairs with varied timing")
    ap.add_argument("--json", type=pathlib.Path, default=pathlib.Path("input_check_loo.json"))
    args = ap.parse_args()
    real = []
    for subject in sorted(p.name for p in args.data.iterdir() if p.is_dir()):
        for kind in ("flair", "t1"):
            median, dark = brain_intensity_profile(load_volume(args.data / subject / f"{kind}.nii.gz").data)
            real.append(
                {"name": f"{subject} {kind}", "kind": kind, "origin": "real", "median": median, "dark_spread": dark}
            )
    for i, volume in enumerate(real):  # leave one out
        thresholds = fit(real[:i] + real[i + 1 :])
        volume.update(thresholds=thresholds, loo_flagged=flagged(volume, thresholds))
    simulated = []
    simulate._draw_parameters = varied_timing(np.random.default_rng(123))
    all_real = fit(real)
    for i in range(args.simulated):
        subject = simulate.simulate_subject(1000 + i, grid=(144, 192, 160))
        for kind, key in (("flair", "flair"), ("t1", "t1w")):
            median, dark = brain_intensity_profile(getattr(subject, kind))
            timing = ", ".join(f"{k[:-3].upper()} {v:.0f}" for k, v in subject.params[key].items())
            simulated.append(
                {
                    "name": f"sim {i} {kind} ({timing} ms)",
                    "kind": kind,
                    "origin": "simulated",
                    "median": median,
                    "dark_spread": dark,
                    "thresholds": all_real,
                    "loo_flagged": flagged({"median": median, "dark_spread": dark}, all_real),
                }
            )
    rows = real + simulated
    print(
        "\n| volume | median | dark spread | threshold (median / dark) | margin | flagged (held out) | flagged "
        "(shipped) |"
    )
    print("|---|---|---|---|---|---|---|")
    for v in rows:
        t = v["thresholds"]
        sign = 1 if v["kind"] == "t1" else -1
        v["margin"] = sign * (v["dark_spread"] - t["dark_spread"])
        v["shipped_flagged"] = flagged(v, SHIPPED)
        print(
            f"| {v['name']} | {v['median']:.3f} | {v['dark_spread']:.3f} | {t['median']:.3f} / {t['dark_spread']:.3f} "
            f"| {v['margin']:+.3f} | {'yes' if v['loo_flagged'] else 'no'} | "
            f"{'yes' if v['shipped_flagged'] else 'no'} |"
        )
    for origin in ("real", "simulated"):
        for kind in ("flair", "t1"):
            mine = [v for v in rows if v["origin"] == origin and v["kind"] == kind]
            print(
                f"{origin} {kind}: {sum(v['loo_flagged'] for v in mine)} of {len(mine)} flagged held out, "
                f"{sum(v['shipped_flagged'] for v in mine)} by the shipped thresholds"
            )
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
