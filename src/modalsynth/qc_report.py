"""The HTML QC report: one self-contained page per subject and an index page, viewable offline.

Each page holds NiiVue (BSD-2, `viewer/niivue.umd.js.gz`, inlined) and every volume it shows as a gzipped uint8 NIfTI
in base64: the source(s), the synthetic image and, when the real one is known and on the same grid, the real image and
the absolute difference of the two on the evaluation's [0, 1] scale. Each volume has its own canvas with three planes;
the cursors of one image's canvases are linked. Static PNGs of the three planes stand in where WebGL is missing; the
model card's summary and, with a real image, the measures `evaluate` computes sit beside them. Nothing is fetched at
view time. A page over MAX_PAGE_BYTES is rebuilt at half resolution (every second voxel) until it fits.
"""

from __future__ import annotations

import base64
import gzip
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from . import __version__
from .data.pairs import canonical_modality, compare_grids, discover_subjects
from .data.preprocess import foreground_mask, to_zyx
from .errors import UserError
from .io import Volume, atomic_write, load_volume, sidecar_path

log = logging.getLogger(__name__)

VIEWER = Path(__file__).resolve().parent / "viewer" / "niivue.umd.js.gz"
MAX_PAGE_BYTES = 25 * 1024 * 1024
#: display range of the embedded uint8 volumes (each scaled so its 99.5th percentile in the foreground is 250)
TOP = 250
HEADLINE = ("ssim_brain", "psnr_brain", "mae_brain", "gw_contrast_ratio")  # the measures a page shows first
CARD_SUMMARY = ("**What it does", "**How good it is")  # the card paragraphs a page shows
SEQUENCES = ("flair", "t1", "t2", "pd", "t1ce")  # what a data folder's files may be shown as sources
DIFF_SCALE = TOP  # an absolute difference of 1 on the [0, 1] scale is shown at full brightness


@dataclass(frozen=True)
class ReportModel:
    """The model a page names: its name and sha256, its card (a built-in model's) and the settings of the run."""

    name: str
    sha256: str = ""
    card: Path | None = None
    settings: dict = field(default_factory=dict)


@dataclass
class ReportItem:
    """One synthetic image on a page: its title, file, sources (label -> file), the real image and mask if known."""

    title: str
    synthetic: Path
    sources: dict[str, Path]
    reference: Path | None = None
    mask: Path | None = None
    model: ReportModel | None = None


@dataclass
class _Shown:
    label: str
    data: np.ndarray  # uint8, on the file's own grid
    affine: np.ndarray
    colormap: str = "gray"


def _as_uint8(volume: Volume) -> np.ndarray:
    """The volume scaled so its foreground's 99.5th percentile is TOP, as uint8 (what the viewer needs to look)."""
    data = np.nan_to_num(np.asarray(volume.data, dtype=np.float32))
    foreground = foreground_mask(data)
    low = float(min(0.0, data.min()))
    high = float(np.percentile(data[foreground], 99.5)) if foreground.any() else float(data.max())
    scale = TOP / max(high - low, 1e-6)
    return np.clip((data - low) * scale, 0, 255).astype(np.uint8)


def _difference(synthetic: Volume, real: Volume, mask: np.ndarray) -> np.ndarray:
    """|synthetic - real| on the evaluation's scale (each clipped to its 0.5-99.5 % range in the brain, to [0, 1])."""
    from .metrics import scale_to_unit

    diff = np.abs(scale_to_unit(synthetic.data, mask) - scale_to_unit(real.data, mask))
    return np.clip(np.where(mask, diff, 0) * DIFF_SCALE, 0, 255).astype(np.uint8)


def _nifti_b64(shown: _Shown, step: int) -> tuple[str, list[int]]:
    """The volume as a gzipped NIfTI in base64 (every `step`-th voxel, the affine kept true), and its dimensions."""
    data, affine = shown.data, shown.affine.copy()
    if step > 1:
        data = data[::step, ::step, ::step]
        affine[:3, 3] = (shown.affine @ np.array([(step - 1) / 2] * 3 + [1]))[:3]
        affine[:3, :3] = shown.affine[:3, :3] * step
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["cal_min"], img.header["cal_max"] = 0, 255
    raw = img.to_bytes()
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii"), list(data.shape)


def _png_b64(shown: list[_Shown]) -> str:
    """One PNG: a row per volume, its axial, coronal and sagittal planes through the middle of its foreground."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(shown), 3, figsize=(6.6, 2.2 * len(shown)), squeeze=False)
    for row, item in zip(axes, shown):
        zyx = to_zyx(Volume(item.data.astype(np.float32), item.affine, nib.Nifti1Header()))[0]
        box = np.argwhere(zyx > 0)
        centre = ((box.min(0) + box.max(0)) // 2) if len(box) else np.array(zyx.shape) // 2
        planes = (zyx[centre[0]], zyx[:, centre[1]], zyx[:, :, centre[2]])
        for ax, plane, name in zip(row, planes, ("axial", "coronal", "sagittal")):
            ax.imshow(plane, cmap="hot" if item.colormap == "hot" else "gray", origin="lower", vmin=0, vmax=255)
            ax.set_axis_off()
            ax.set_title(f"{item.label}, {name}", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def model_summary(name: str, sha256: str = "", settings: dict | None = None) -> ReportModel:
    """A page's model: a built-in model (by name or by its weights' sha256) brings its card."""
    from . import builtin

    card = next(
        (m.card for m in builtin.MODELS.values() if name == f"{builtin.PREFIX}{m.name}" or sha256 == m.sha256), None
    )
    return ReportModel(name=name, sha256=sha256, card=card, settings=settings or {})


def measures(item: ReportItem) -> dict[str, float] | None:
    """The measures `evaluate` computes for the synthetic image against the real one (None without a real one on the
    same grid)."""
    from .evaluation import load_subject, score_subject

    if item.reference is None:
        return None
    ref = {"t1": item.reference}
    if item.mask is not None:
        ref["brain_mask"] = item.mask
    try:
        return score_subject(load_subject(item.title, {"t1": item.synthetic}, ref, "t1", None))
    except UserError as exc:  # a volume too small for the measures: the page still shows the images
        log.warning(f"no measures for {item.synthetic}: {exc}")
        return None


def _shown_volumes(item: ReportItem) -> tuple[list[_Shown], str | None]:
    """The volumes a page section shows, as uint8 on their own grids, and a note when the real image cannot be
    compared (another grid)."""
    synthetic = load_volume(item.synthetic, allow_constant=True)
    sources = {label: load_volume(path) for label, path in item.sources.items()}
    shown = [_Shown(label, _as_uint8(volume), volume.affine) for label, volume in sources.items()]
    shown.append(_Shown("synthetic", _as_uint8(synthetic), synthetic.affine))
    note = None
    if item.reference is not None:
        real = load_volume(item.reference)
        if compare_grids(real.shape, real.affine, synthetic.shape, synthetic.affine) is None:
            mask = load_volume(item.mask, allow_constant=True).data > 0 if item.mask else foreground_mask(real.data)
            shown.append(_Shown("real", _as_uint8(real), real.affine))
            shown.append(_Shown("|synthetic - real| (0-1)", _difference(synthetic, real, mask), real.affine, "hot"))
        else:
            note = f"the real image {item.reference.name} is on another grid: no difference map or measures"
    return shown, note


def _model_html(model: ReportModel | None) -> str:
    if model is None:
        return ""
    summary = ""
    if model.card is not None and Path(model.card).is_file():
        text = Path(model.card).read_text()
        paragraphs = [p for p in text.split("\n\n") if p.startswith(CARD_SUMMARY)]
        summary = "".join(f"<p>{html.escape(p.replace('**', ''))}</p>" for p in paragraphs)
    settings = html.escape(json.dumps(model.settings, indent=1)) if model.settings else ""
    return (
        f"<section class='model'><h2>Model</h2><p><b>{html.escape(model.name)}</b> sha256 "
        f"<code>{html.escape(model.sha256)}</code></p>{summary}"
        + (f"<details><summary>settings</summary><pre>{settings}</pre></details>" if settings else "")
        + "</section>"
    )


def _measures_html(values: dict[str, float] | None) -> str:
    from .metrics import REPORT_LABELS

    if not values:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(REPORT_LABELS.get(k, k))}</td><td>{v:.4g}</td></tr>"
        for k, v in values.items()
        if isinstance(v, int | float) and np.isfinite(v)
    )
    head = ", ".join(f"{REPORT_LABELS[k]} {values[k]:.3g}" for k in HEADLINE if isinstance(values.get(k), int | float))
    return (
        f"<p class='headline'>against the real image: {html.escape(head)}</p><details class='measures'>"
        f"<summary>every measure `evaluate` computes</summary><table>{rows}</table></details>"
    )


def _viewer_script() -> str:
    return gzip.decompress(VIEWER.read_bytes()).decode("utf-8")


def _page(subject: str, blocks: list[dict], model: ReportModel | None, step: int) -> str:
    """The page's HTML: styles, the viewer, every block's canvases, data and static images, the start-up script."""
    parts, data = [], []
    for b, block in enumerate(blocks):
        volumes = []
        canvases = []
        for v, shown in enumerate(block["shown"]):
            vid = f"v{b}_{v}"
            b64, dims = _nifti_b64(shown, step)
            volumes.append({"id": vid, "label": shown.label, "colormap": shown.colormap, "dims": dims, "b64": b64})
            canvases.append(
                f"<figure><figcaption>{html.escape(shown.label)}</figcaption>"
                f"<div class='box'><canvas id='{vid}'></canvas></div></figure>"
            )
        data.append({"title": block["item"].title, "volumes": volumes})
        note = f"<p class='note'>{html.escape(block['note'])}</p>" if block["note"] else ""
        parts.append(
            f"<section class='item'><h2>{html.escape(block['item'].title)}</h2>"
            f"<p class='file'>{html.escape(str(block['item'].synthetic.name))}</p>{note}"
            f"<div class='row'>{''.join(canvases)}</div>{_measures_html(block['measures'])}"
            f"<details class='static'><summary>static images (no WebGL needed)</summary>"
            f"<img alt='three planes of each volume' src='data:image/png;base64,{block['png']}'></details></section>"
        )
    resolution = "" if step == 1 else f"<p class='note'>shown at 1/{step} resolution to keep the page small</p>"
    payload = json.dumps(data).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(subject)}: modalsynth QC</title>
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<style>{STYLE}</style></head>
<body><header><h1>{html.escape(subject)}</h1><p>synthetic images by modalsynth {__version__}: check them before use.
Click a plane to move the cursor of every canvas of that image; scroll to page through slices.</p>{resolution}
<p id="status" class="note">loading the viewer...</p></header>
{"".join(parts)}{_model_html(model)}
<script>{_viewer_script()}</script>
<script id="volumes" type="application/json">{payload}</script>
<script>{START}</script></body></html>
"""


#: the page may run its own inline scripts and read its own data, and fetch nothing
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval' blob:; style-src 'unsafe-inline'; "
    "img-src data: blob:; worker-src blob:; connect-src data: blob:"
)
STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa;color:#222}
.row{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0}figcaption{font-size:0.9em;font-weight:bold}
.box{width:280px;height:280px;background:#000}canvas{width:100%;height:100%}
.note{color:#955}.file{font-family:monospace;font-size:0.85em}
table{border-collapse:collapse}td{border-bottom:1px solid #ddd;padding:2px 8px}
img{max-width:100%}
"""

START = """
(async () => {
  const status = {ready: false, loaded: [], errors: []};
  window.modalsynthStatus = status;
  const label = document.getElementById('status');
  const items = JSON.parse(document.getElementById('volumes').textContent);
  const fail = (message) => {
    status.errors.push(message);
    label.textContent = 'the 3D viewer could not start (' + message + '): the static images below show the planes';
    document.querySelectorAll('details.static').forEach((d) => { d.open = true; });
  };
  if (typeof niivue === 'undefined' || !document.createElement('canvas').getContext('webgl2')) {
    fail('no WebGL2');
    status.ready = true;
    return;
  }
  window.modalsynthViewers = [];
  for (const item of items) {
    const group = [];
    for (const v of item.volumes) {
      try {
        const nv = new niivue.Niivue({backColor: [0, 0, 0, 1], show3Dcrosshair: false, isColorbar: false,
                                       multiplanarShowRender: niivue.SHOW_RENDER.NEVER});
        await nv.attachToCanvas(document.getElementById(v.id));
        const bytes = Uint8Array.from(atob(v.b64), (c) => c.charCodeAt(0));
        const image = await niivue.NVImage.loadFromUrl({url: v.id + '.nii.gz', name: v.id + '.nii.gz',
          buffer: bytes.buffer, colormap: v.colormap, cal_min: 0, cal_max: 255});
        nv.addVolume(image);
        nv.setSliceType(nv.sliceTypeMultiplanar);
        group.push(nv);
        window.modalsynthViewers.push(nv);
        status.loaded.push({id: v.id, dims: Array.from(image.hdr.dims.slice(1, 4))});
      } catch (error) {
        fail(v.label + ': ' + error);
      }
    }
    for (const nv of group) nv.broadcastTo(group.filter((other) => other !== nv), {'2d': true, '3d': true});
  }
  if (!status.errors.length) label.textContent = '';
  status.ready = true;
})();
"""


def write_subject_report(subject: str, items: list[ReportItem], page: Path, model: ReportModel | None = None) -> Path:
    """Write one subject's self-contained QC page (all of `items`) to `page`, under MAX_PAGE_BYTES."""
    blocks = []
    for item in items:
        shown, note = _shown_volumes(item)
        has_real = any(s.label == "real" for s in shown)
        blocks.append(
            {
                "item": item,
                "shown": shown,
                "note": note,
                "png": _png_b64(shown),
                "measures": measures(item) if has_real else None,
            }
        )
    step = 1
    while True:
        text = _page(subject, blocks, model or (items[0].model if items else None), step)
        if len(text.encode("utf-8")) <= MAX_PAGE_BYTES or step >= 8:
            break
        step *= 2
    return atomic_write(Path(page), ".html", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_index(path: Path, pages: list[Path], title: str = "modalsynth QC") -> Path:
    """An index page linking every subject's page (relative links, so the folder can move)."""
    path = Path(path)
    rows = "".join(
        f"<li><a href='{html.escape(Path(p).relative_to(path.parent).as_posix())}'>{html.escape(Path(p).stem)}</a></li>"
        for p in sorted(pages)
    )
    text = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(pages)} subject page(s) written by modalsynth {__version__}.</p><ul>{rows}</ul></body></html>\n"
    )
    return atomic_write(path, ".html", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def recorded_model(prediction: Path) -> ReportModel | None:
    """The model `predict` recorded beside a folder prediction (<target>.json), or None when there is no record."""
    record = sidecar_path(prediction)
    try:
        made_by = json.loads(record.read_text())["Model"]
        return model_summary(made_by["Name"], made_by["Sha256"] or "")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{record}: not the record `predict` writes ({exc}); delete it or predict again") from exc


def report_predictions(
    pred_root: Path, data: Path | None, target: str = "t1", model: ReportModel | None = None
) -> list[Path]:
    """QC pages for a `predict` folder PRED/<subject>/<target>.nii.gz: PRED/<subject>.html and PRED/index.html, with
    the sources and real images found in the data folder `data` (without it, the synthetic images alone)."""
    pred_root = Path(pred_root)
    key = canonical_modality(target)
    predictions = sorted(pred_root.glob(f"*/{key}.nii.gz"))
    if not predictions:
        raise UserError(f"{pred_root}: no <subject>/{key}.nii.gz predictions; give the folder `predict` wrote")
    inputs = discover_subjects(data) if data is not None else {}
    pages = []
    for prediction in predictions:
        subject = prediction.parent.name
        files = inputs.get(subject, {})
        sources = {name: path for name, path in files.items() if name in SEQUENCES and name != key}
        made_by = recorded_model(prediction) or model
        item = ReportItem(subject, prediction, sources, files.get(key), None, made_by)
        pages.append(write_subject_report(subject, [item], pred_root / f"{subject}.html", made_by))
    return [*pages, write_index(pred_root / "index.html", pages)]
