"""The README's quality figure: one subject's FLAIR, each recipe's prediction from the fold model that left the subject
out (benchmarks/quality_cv.py's predictions) and the real T1, in three planes through the brain's centre.

    python benchmarks/quality_figure.py --data $REAL11 --out runs/quality --recipes v1,v2 \
        --subject brats2023-gli-00000 --png docs/quality.png

Every image is scaled as `modalsynth evaluate` scores it: clipped to its own 0.5-99.5 % inside the brain, on [0, 1].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from quality_cv import ORIGINS  # noqa: E402  (this folder is on the path when the script runs)

from modalsynth.data.preprocess import foreground_mask, to_zyx  # noqa: E402
from modalsynth.io import load_volume  # noqa: E402
from modalsynth.metrics import PLANE_AXES, scale_to_unit  # noqa: E402
from modalsynth.report import centre_slice, crop_to_mask  # noqa: E402


def columns(data: Path, out: Path, recipes: list[str], subject: str, source: str) -> dict[str, np.ndarray]:
    """{column title: (z, y, x) volume on [0, 1]}: the source, each recipe's prediction, the real T1, cropped to the
    brain."""
    real = to_zyx(load_volume(data / subject / "t1.nii.gz"))[0]
    brain = foreground_mask(real)
    paths = {f"input {source.upper()}": data / subject / f"{source}.nii.gz"}
    paths |= {f"{recipe} (fold model)": out / "predictions" / recipe / subject / "t1.nii.gz" for recipe in recipes}
    shown = {name: scale_to_unit(to_zyx(load_volume(path))[0], brain) for name, path in paths.items()}
    shown["real T1"] = scale_to_unit(real, brain)
    return crop_to_mask({name: np.where(brain, v, 0.0) for name, v in shown.items()}, brain)


def draw(volumes: dict[str, np.ndarray], title: str, png: Path) -> Path:
    """Three rows (axial, coronal, sagittal) by one column per volume, slices through the real T1's brain centre."""
    names = list(volumes)
    fig, axes = plt.subplots(3, len(names), figsize=(2.3 * len(names), 7.2), squeeze=False)
    for r, plane in enumerate(PLANE_AXES):
        index = centre_slice(volumes["real T1"], plane)
        for c, name in enumerate(names):
            ax = axes[r, c]
            ax.imshow(
                np.take(volumes[name], index, axis=PLANE_AXES[plane]), cmap="gray", vmin=0, vmax=1, origin="lower"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(plane, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the folder of the real subjects")
    parser.add_argument("--out", type=Path, required=True, help="quality_cv.py's --out")
    parser.add_argument("--recipes", default="v1,v2", help="comma-separated recipe names, in column order")
    parser.add_argument("--subject", default="brats2023-gli-00000")
    parser.add_argument("--source", default="flair")
    parser.add_argument("--png", type=Path, default=Path("docs/quality.png"))
    args = parser.parse_args()
    recipes = [r for r in args.recipes.split(",") if r]
    volumes = columns(args.data, args.out, recipes, args.subject, args.source)
    name = ORIGINS.get(args.subject, args.subject)
    print(draw(volumes, f"{name}, tested by the fold models that did not train on it", args.png))


if __name__ == "__main__":
    main()
