"""Tables (CSV, JSON, Markdown) and figures (Figure-4 style montage, metric distributions, through-plane profiles)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .data.preprocess import bounding_box  # noqa: E402
from .metrics import BEST_AT_ONE, HIGHER_IS_BETTER, PLANE_AXES, REPORT_LABELS  # noqa: E402

#: Table 1 of a benchmark: (summary key, column label); brain-masked figures lead, as the evaluation protocol says.
#: The ↑ / ↓ / →1 after each label comes from `HIGHER_IS_BETTER` and `BEST_AT_ONE`.
TABLE1_METRICS = {
    "ssim_brain": "SSIM brain",
    "mae_brain": "MAE brain",
    "rmse_brain": "RMSE brain",
    "psnr_brain": "PSNR brain",
    "ssim_lesion": "SSIM lesion",
    "ssim_volume": "SSIM whole",
    "ssim2d_brain_coronal": "SSIM coronal",
    "ssim2d_brain_sagittal": "SSIM sagittal",
    "streak_ratio": "slice streaks",
    "slice_jitter": "slice jitter ×1000",
    "gw_contrast_ratio": "grey/white contrast kept",
    "lesion_contrast_error": "lesion contrast err",
    "calibration_ratio": "calibration",
    "tissue_dice_gm": "tissue Dice GM",
    "tissue_dice_wm": "tissue Dice WM",
    "tissue_dice_csf": "tissue Dice CSF",
}
DISTRIBUTION_METRICS = (
    "ssim_brain",
    "psnr_brain",
    "mae_brain",
    "rmse_brain",
    "ssim_lesion",
    "ssim_healthy",
    "ssim_volume",
    "ssim2d_axial_slices",
    "ssim2d_brain_coronal",
    "ssim2d_brain_sagittal",
    "gradz_mae_brain",
    "gradz_ratio",
    "slice_jitter",
    "streak_ratio",
    "gw_contrast_ratio",
    "lesion_contrast_error",
    "calibration_ratio",
    "tissue_dice_csf",
    "tissue_dice_gm",
    "tissue_dice_wm",
)


# ---------------------------------------------------------------- tables


def summarise(rows: Sequence[Mapping[str, float]], metrics: Sequence[str] = tuple(REPORT_LABELS)) -> dict[str, dict]:
    """Per metric: mean, sample sd, median and n over the subjects where it is defined (NaN values skipped;
    an infinite PSNR of a perfect prediction is kept, so the mean becomes inf)."""
    summary: dict[str, dict] = {}
    for name in metrics:
        values = np.array([row[name] for row in rows if name in row and not math.isnan(row[name])], dtype=np.float64)
        if values.size == 0:
            summary[name] = {"mean": math.nan, "sd": math.nan, "median": math.nan, "n": 0}
            continue
        finite = np.isfinite(values).all()
        sd = float(np.std(values, ddof=1)) if values.size > 1 and finite else math.nan
        summary[name] = {
            "mean": float(np.mean(values)),
            "sd": sd,
            "median": float(np.median(values)),
            "n": int(values.size),
        }
    return summary


def format_value(name: str, value: float) -> str:
    """A metric value as text: inf/NaN spelt out, PSNR with 2 decimals, ratios 3, the rest 4."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    digits = 2 if name.startswith(("psnr", "fid")) else 3 if name.endswith("ratio") else 4
    return f"{value:.{digits}f}"


def markdown_table(summary: Mapping[str, Mapping], fid: Mapping | None = None, title: str | None = None) -> str:
    """A Markdown table of a summary (brain-masked figures first, as ordered in REPORT_LABELS), FID rows after."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | mean ± sd | median | n | better |", "| --- | --- | --- | --- | --- |"]
    for name, stats in summary.items():
        label = REPORT_LABELS.get(name, name)
        if stats["n"] == 0:
            lines.append(f"| {label} | n/a | n/a | 0 | |")
            continue
        lines.append(
            f"| {label} | {format_value(name, stats['mean'])} ± {format_value(name, stats['sd'])} | "
            f"{format_value(name, stats['median'])} | {stats['n']} | {_better(name)} |"
        )
    fid = fid or {}
    if isinstance(fid.get("reason"), str):
        lines.append(f"| FID, 2D slices | unavailable: {fid['reason']} | | | |")
    for key, entry in fid.items():
        if not isinstance(entry, Mapping):
            continue
        if "value" in entry:
            planes = "+".join(entry["planes"])
            lines.append(
                f"| FID, 2D slices ({planes}; {entry['n_pred_slices']} predicted / {entry['n_ref_slices']} real) | "
                f"{format_value('fid', entry['value'])} | | | lower |"
            )
        elif "reason" in entry:
            lines.append(f"| FID ({key}) | unavailable: {entry['reason']} | | | |")
    return "\n".join(lines) + "\n"


#: per `_better` answer, a sort key that puts the best value first
_BEST_FIRST = {"higher": lambda v: -v, "lower": lambda v: v, "closer to 1": lambda v: abs(v - 1)}


def _better(name: str) -> str:
    """'higher', 'lower' or 'closer to 1': which way a metric improves."""
    if name in BEST_AT_ONE:
        return "closer to 1"
    return "higher" if HIGHER_IS_BETTER.get(name) else "lower"


def table1_markdown(rows: Sequence[Mapping], budget_text: str, n_test: int) -> str:
    """The paper's Table 1 for benchmark runs: per method mean ± sd over the test subjects of `TABLE1_METRICS`
    (the best mean in bold), FID, budget, inference time and size. `rows` are the benchmark's per-method records;
    `budget_text` says what each method was given, e.g. '200 steps per learned method'."""
    arrow = {"higher": "↑", "lower": "↓", "closer to 1": "→1"}
    head = (
        ["method"]
        + [f"{label} {arrow[_better(key)]}" for key, label in TABLE1_METRICS.items()]
        + ["FID axial ↓", "FID 2.5D ↓", "train steps", "train s", "infer s/vol", "params"]
    )
    lines = [
        f"Table 1 on {n_test} held-out subject(s); training budget {budget_text}. Metrics on [0, 1] after the "
        "evaluation protocol's percentile scaling; brain-masked first.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    best = {}
    for key in TABLE1_METRICS:
        means = [r["metrics"].get(key, {}).get("mean") for r in rows]
        defined = [v for v in means if v is not None and not math.isnan(v)]  # an infinite PSNR is the best there is
        if defined:
            best[key] = min(defined, key=_BEST_FIRST[_better(key)])
    for r in rows:
        cells = [r["method"]]
        for key in TABLE1_METRICS:
            stats = r["metrics"].get(key, {})
            text = f"{format_value(key, stats.get('mean'))} ± {format_value(key, stats.get('sd'))}" if stats else "n/a"
            cells.append(f"**{text}**" if stats and key in best and stats.get("mean") == best[key] else text)
        cells += [
            format_value("fid", r["fid"].get("axial")),
            format_value("fid", r["fid"].get("2.5d")),
            str(r["train_steps"]),
            f"{r['train_s']:.0f}",
            f"{r['infer_s_per_volume']:.2f} ({r['device']})",
            f"{r['params'] / 1e6:.2f} M",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(summary: Mapping, figures: bool = True) -> str:
    """The Markdown report of one evaluation (summary.md): table, protocol, FID network and slices, brain-mask
    origin, unmatched subjects."""
    lines = [
        f"# Evaluation: synthetic {summary['target']} vs real",
        "",
        f"Predictions `{summary['pred_dir']}`, references `{summary['ref_dir']}`; "
        f"{len(summary['subjects'])} subject(s): " + ", ".join(summary["subjects"]),
        "",
        markdown_table(summary["metrics"], summary["fid"]),
        "## Protocol",
        "",
        summary["protocol"],
        "",
        "## FID",
        "",
    ]
    fid = summary["fid"]
    if "reason" in fid:
        lines.append(f"FID unavailable: {fid['reason']}")
    for name, entry in fid.items():
        if isinstance(entry, dict) and "value" in entry:
            lines.append(
                f"- {name}: {format_value('fid', entry['value'])} over {entry['n_pred_slices']} predicted and "
                f"{entry['n_ref_slices']} real 2D "
                f"slices ({', '.join(entry['planes'])}; at most {entry['max_slices_per_plane_per_volume']} per plane "
                "and volume, "
                f"slices with at least 25% of the largest brain area). Network: {entry['network']}. {entry['kind']}. "
                "FID from few hundred slices is biased upwards; compare methods only at equal slice counts."
            )
        elif isinstance(entry, dict) and "reason" in entry:
            lines.append(f"- {name}: unavailable ({entry['reason']})")
    lines += ["", "## Brain masks", ""]
    lines += [f"- {subject}: {origin}" for subject, origin in summary["brain_mask"].items()]
    unmatched = summary["unmatched"]
    if any(unmatched.values()):
        lines += ["", "## Not evaluated", ""]
        if unmatched["missing_prediction"]:
            lines.append(f"- no prediction: {', '.join(unmatched['missing_prediction'])}")
        if unmatched["missing_reference"]:
            lines.append(f"- no reference: {', '.join(unmatched['missing_reference'])}")
    if figures:
        lines += [
            "",
            "## Figures",
            "",
            "- `figure4_axial.png`, `figure4_coronal.png`, `figure4_sagittal.png`: source, real, synthetic, |error| "
            "per subject",
            "- `metric_distributions.png`: per-subject distribution of each metric",
            "- `through_plane.png`: error of the step between axial slices vs within them, per subject",
        ]
    lines.append("")
    return "\n".join(lines)


def _json_safe(value):
    """Floats that JSON can hold: NaN -> null, ±inf -> the strings 'inf' / '-inf'."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(data: Mapping, path: Path) -> Path:
    """Write a dict as indented, strictly valid JSON (see `_json_safe` for NaN and inf)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    return path


def write_per_subject_csv(
    rows: Sequence[Mapping[str, float]], path: Path, metrics: Sequence[str] = tuple(REPORT_LABELS)
) -> Path:
    """One line per subject: `subject` then every metric (empty cell where undefined, 'inf' for a perfect PSNR)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", *metrics])
        for row in rows:
            cells = []
            for name in metrics:
                value = row.get(name, math.nan)
                cells.append("" if math.isnan(value) else "inf" if math.isinf(value) else repr(float(value)))
            writer.writerow([row["subject"], *cells])
    return path


# ---------------------------------------------------------------- figures


def crop_to_mask(volumes: Mapping[str, np.ndarray], mask: np.ndarray, margin: int = 4) -> dict[str, np.ndarray]:
    """Cut every volume to the bounding box of `mask` plus a margin (smaller figures, less black), as float32."""
    box = tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(bounding_box(mask), mask.shape)
    )
    return {name: np.asarray(volume[box], dtype=np.float32) for name, volume in volumes.items()}


def _plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    return np.take(volume, index, axis=PLANE_AXES[plane])


def _pixel_aspect(plane: str, spacing: Sequence[float] | None) -> float:
    """Height / width of one pixel in the displayed plane, from the (z, y, x) spacing."""
    if spacing is None:
        return 1.0
    rows_cols = [s for ax, s in enumerate(spacing) if ax != PLANE_AXES[plane]]
    return float(rows_cols[0] / rows_cols[1])


def centre_slice(volume: np.ndarray, plane: str) -> int:
    """The slice through the centre of mass of the non-zero voxels (the middle slice for an empty volume)."""
    axis = PLANE_AXES[plane]
    weights = (np.abs(volume) > 0).sum(axis=tuple(ax for ax in range(3) if ax != axis)).astype(float)
    if weights.sum() == 0:
        return volume.shape[axis] // 2
    return int(round(float((np.arange(volume.shape[axis]) * weights).sum() / weights.sum())))


def figure4_montage(
    rows: Sequence[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray],
    out_png: Path,
    plane: str = "axial",
    row_labels: Sequence[str] | None = None,
    slice_indices: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    error_keys: Sequence[str] | None = None,
    error_max: float = 0.3,
    title: str | None = None,
) -> Path:
    """A grid like the paper's Figure 4: one row per subject, one column per named (D, H, W) volume on [0, 1].

    `rows` is a list of {column name: volume} (or one such dict: a single row, e.g. one column per method).
    Error columns (names starting with '|', or `error_keys`) use a heat colour map on [0, error_max] with a
    colour bar; the others grey on [0, 1]. Slices are shown with anterior / superior up, patient left on the left.
    """
    rows = [rows] if isinstance(rows, Mapping) else list(rows)
    if not rows:
        raise ValueError("figure4_montage needs at least one row")
    columns = list(rows[0])
    errors = set(error_keys) if error_keys is not None else {c for c in columns if c.startswith("|")}
    aspect = _pixel_aspect(plane, spacing)
    first = rows[0][columns[0]]
    plane_shape = [n for ax, n in enumerate(first.shape) if ax != PLANE_AXES[plane]]
    panel_h = 2.4 * min(1.6, max(0.5, plane_shape[0] * aspect / plane_shape[1]))
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(2.4 * len(columns) + 0.6, panel_h * len(rows) + 0.6), squeeze=False
    )
    heat = None
    for r, row in enumerate(rows):
        reference = row[columns[min(1, len(columns) - 1)]]
        index = slice_indices[r] if slice_indices is not None else centre_slice(reference, plane)
        for c, name in enumerate(columns):
            ax = axes[r, c]
            image = _plane_slice(row[name], plane, index)
            if name in errors:
                heat = ax.imshow(
                    image,
                    cmap="inferno",
                    vmin=0.0,
                    vmax=error_max,
                    origin="lower",
                    aspect=aspect,
                    interpolation="nearest",
                )
            else:
                ax.imshow(
                    image, cmap="gray", vmin=0.0, vmax=1.0, origin="lower", aspect=aspect, interpolation="nearest"
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
            if c == 0:
                label = row_labels[r] if row_labels is not None else f"row {r}"
                ax.set_ylabel(f"{label}\n{plane} {index}", fontsize=8)
    fig.suptitle(title or f"{plane} slices", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93 if heat is not None else 1, 1))
    if heat is not None:
        bar_axis = fig.add_axes((0.945, 0.15, 0.015, 0.7))
        fig.colorbar(heat, cax=bar_axis)
        bar_axis.set_title("|error|", fontsize=8)
    return _save(fig, out_png)


def plot_metric_distributions(
    groups: Mapping[str, Sequence[Mapping[str, float]]] | Sequence[Mapping[str, float]],
    out_png: Path,
    metrics: Sequence[str] = DISTRIBUTION_METRICS,
    title: str | None = None,
) -> Path:
    """One panel per metric: box plot and the individual subjects (points) of each group (e.g. method)."""
    groups = {"prediction": list(groups)} if not isinstance(groups, Mapping) else dict(groups)
    metrics = [m for m in metrics if any(m in row for rows in groups.values() for row in rows)]
    n_cols = min(4, len(metrics))
    n_rows = math.ceil(len(metrics) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols, 2.8 * n_rows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes.ravel(), metrics):
        data, notes = [], []
        for label, rows in groups.items():
            values = np.array([row.get(name, math.nan) for row in rows], dtype=np.float64)
            finite = values[np.isfinite(values)]
            data.append(finite)
            if np.isinf(values).any():
                notes.append(f"{label}: {int(np.isinf(values).sum())} inf")
        positions = np.arange(1, len(data) + 1)
        shown = [d for d in data if d.size]
        if shown:
            ax.boxplot(shown, positions=[p for p, d in zip(positions, data) if d.size], widths=0.5, showfliers=False)
        for p, d in zip(positions, data):
            ax.scatter(p + rng.uniform(-0.12, 0.12, d.size), d, s=14, alpha=0.7, zorder=3)
        ax.set_xticks(positions, list(groups), fontsize=8, rotation=20 if len(groups) > 2 else 0)
        ax.set_title(REPORT_LABELS.get(name, name), fontsize=8)
        ax.set_xlim(0.4, len(data) + 0.6)
        if not shown and not notes:
            notes.append("undefined for every subject")
        if notes:
            ax.text(
                0.5,
                0.5,
                "\n".join(notes),
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="tab:red",
            )
    for ax in axes.ravel()[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(
        title or "per-subject metrics (intensities scaled to [0, 1] by the 0.5-99.5 brain percentiles)", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, out_png)


def plot_through_plane(
    profiles: Mapping[str, Mapping[str, np.ndarray]],
    out_png: Path,
    error_map: np.ndarray | None = None,
    error_map_label: str = "",
    spacing: Sequence[float] | None = None,
    error_max: float = 0.2,
) -> Path:
    """Through-plane consistency: per axial position the error of the step to the next slice (solid) against the
    in-plane step error (dashed), one colour per subject or method; optionally a coronal view of the |dz error| map,
    where a slice-wise method shows horizontal stripes."""
    n_panels = 2 if error_map is not None else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(6.5 + 3.5 * (n_panels - 1), 3.6), squeeze=False)
    ax = axes[0, 0]
    for i, (label, profile) in enumerate(profiles.items()):
        colour = f"C{i % 10}"
        z = np.arange(len(profile["gradz_error"])) + 0.5
        ax.plot(z, profile["gradz_error"], color=colour, lw=1.2, label=label)
        ax.plot(np.arange(len(profile["inplane_error"])), profile["inplane_error"], color=colour, lw=0.8, ls="--")
    ax.plot([], [], color="k", lw=1.2, label="solid: step to next axial slice")
    ax.plot([], [], color="k", lw=0.8, ls="--", label="dashed: in-plane steps")
    ax.set_xlabel("axial slice index z")
    ax.set_ylabel("mean |step error| in brain")
    ax.set_title("error of intensity steps between neighbouring voxels", fontsize=9)
    ax.legend(fontsize=6, ncol=2 if len(profiles) > 4 else 1)
    if error_map is not None:
        ax2 = axes[0, 1]
        index = centre_slice(error_map, "coronal")
        shown = ax2.imshow(
            _plane_slice(error_map, "coronal", index),
            cmap="inferno",
            vmin=0,
            vmax=error_max,
            origin="lower",
            aspect=_pixel_aspect("coronal", spacing),
            interpolation="nearest",
        )
        ax2.set_title(f"|dz error|, coronal {index} {error_map_label}", fontsize=9)
        ax2.set_xticks([])
        ax2.set_yticks([])
        fig.colorbar(shown, ax=ax2, fraction=0.046)
    fig.tight_layout()
    return _save(fig, out_png)


def _save(fig: plt.Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
