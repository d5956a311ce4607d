"""The HTML QC report: self-contained pages, their size, and the viewer in a real headless Chromium (offline)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from modalsynth import qc_report
from modalsynth.bids_app import BidsOptions, report_derivatives, run_bids
from modalsynth.errors import UserError

from .bids_tree import make_bids_tree
from .conftest import blob_volume

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: headless Chromium with WebGL on the CPU (SwiftShader through ANGLE), nothing fetched in the background
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def derivatives(tmp_path_factory) -> Path:
    """sub-02 (FLAIR and a real T1w: synthetic, real, difference, measures) and sub-03 through the built-in model."""
    raw = make_bids_tree(tmp_path_factory.mktemp("bids") / "raw")
    out = raw / "derivatives" / "modalsynth"
    options = BidsOptions(participant_labels=("02", "03"), all_subjects=True, skip_bids_validation=True)
    run_bids(raw, out, "participant", options)
    run_bids(raw, out, "group", options)
    return out


def _embedded(page: Path) -> list[dict]:
    text = page.read_text()
    start = text.index('<script id="volumes" type="application/json">') + len(
        '<script id="volumes" type="application/json">'
    )
    return json.loads(text[start : text.index("</script>", start)])


def test_pages_are_self_contained_and_small(derivatives):
    page = derivatives / "sub-02.html"
    text = page.read_text()
    assert page.stat().st_size <= qc_report.MAX_PAGE_BYTES
    assert "http://" not in text.split("<script>")[0] and "src='http" not in text and 'src="http' not in text
    [item] = _embedded(page)
    assert [v["label"] for v in item["volumes"]] == ["FLAIR", "synthetic", "real", "|synthetic - real| (0-1)"]
    synthetic = nib.load(derivatives / "sub-02" / "anat" / "sub-02_desc-synthetic_T1w.nii.gz")
    assert all(v["dims"] == list(synthetic.shape) for v in item["volumes"])
    assert "against the real image: SSIM 3D, brain" in text and "PSNR (dB), whole volume" in text
    assert "What it does" in text and "builtin:flair-t1" in text  # the model card's summary
    assert "data:image/png;base64," in text  # the static fallback
    index = (derivatives / "index.html").read_text()
    assert "sub-02.html" in index and "sub-03.html" in index


def test_a_page_over_the_limit_is_rebuilt_at_half_resolution(derivatives, tmp_path, monkeypatch):
    monkeypatch.setattr(qc_report, "MAX_PAGE_BYTES", (derivatives / "sub-03.html").stat().st_size - 1)
    copy = tmp_path / "out"
    shutil.copytree(derivatives, copy)
    description = json.loads((copy / "dataset_description.json").read_text())
    description["DatasetLinks"]["raw"] = (derivatives / "../..").resolve().as_uri()
    (copy / "dataset_description.json").write_text(json.dumps(description))
    report_derivatives(copy)
    assert (copy / "sub-03.html").stat().st_size <= qc_report.MAX_PAGE_BYTES
    assert "1/2 resolution" in (copy / "sub-03.html").read_text()
    full = [v["dims"] for v in _embedded(derivatives / "sub-03.html")[0]["volumes"]]
    half = [v["dims"] for v in _embedded(copy / "sub-03.html")[0]["volumes"]]
    assert half == [[(n + 1) // 2 for n in dims] for dims in full]


def test_predict_folder_pages(tmp_path):
    data, pred = tmp_path / "data", tmp_path / "pred"
    for subject in ("a", "b"):
        for name, seed in (("flair", 0), ("t1", 1)):
            (data / subject).mkdir(parents=True, exist_ok=True)
            volume = np.random.default_rng(seed).random((16, 18, 16)).astype(np.float32) + 1
            nib.save(nib.Nifti1Image(volume, np.eye(4)), str(data / subject / f"{name}.nii.gz"))
        (pred / subject).mkdir(parents=True)
        shutil.copy(data / subject / "t1.nii.gz", pred / subject / "t1.nii.gz")
    pages = qc_report.report_predictions(pred, data)
    assert [p.name for p in pages] == ["a.html", "b.html", "index.html"]
    (pred / "b" / "t1.json").write_text("{not json")
    with pytest.raises(UserError, match=r"b/t1\.json: not the record `predict` writes"):
        qc_report.report_predictions(pred, data)
    [item] = _embedded(pred / "a.html")
    assert [v["label"] for v in item["volumes"]] == ["flair", "synthetic", "real", "|synthetic - real| (0-1)"]


def _canvas_is_blank(png: bytes) -> bool:
    import matplotlib.image as mpimg

    pixels = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    return float(pixels.std()) < 0.02


def test_report_opens_in_headless_chromium_offline(derivatives, tmp_path):
    if CHROMIUM is None and os.environ.get("MODALSYNTH_REQUIRE_TOOLS"):
        pytest.fail("Chromium is not installed, and CI requires it: .ci/run installs it with apt-get")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; CI installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    page_path = derivatives / "sub-02.html"
    expected = {v["id"]: v["dims"] for item in _embedded(page_path) for v in item["volumes"]}
    own, outside = page_path.resolve().as_uri(), []

    def guard(route):
        if route.request.url == own:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route("**/*", guard)
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(own)
            page.wait_for_function("window.modalsynthStatus && window.modalsynthStatus.ready", timeout=120_000)
            status = page.evaluate("window.modalsynthStatus")
            page.wait_for_timeout(300)
            page.screenshot(path=str(tmp_path / "sub-02.png"), full_page=True)
            canvases = {vid: page.locator(f"#{vid}").screenshot() for vid in expected}
            box = page.locator("#v0_0").bounding_box()  # a click on the first canvas's axial plane
            page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.75)
            page.wait_for_timeout(300)
            cursors = page.evaluate("window.modalsynthViewers.map((nv) => Array.from(nv.scene.crosshairPos))")
        finally:
            browser.close()
    assert status["errors"] == []
    assert {v["id"]: v["dims"] for v in status["loaded"]} == expected  # every volume loaded, dimensions as embedded
    assert not [vid for vid, png in canvases.items() if _canvas_is_blank(png)]
    assert cursors[0] != [0.5, 0.5, 0.5] and all(c == pytest.approx(cursors[0]) for c in cursors)  # linked
    assert outside == [] and all(url == own or url.startswith(("data:", "blob:")) for url in requests)
    assert (tmp_path / "sub-02.png").stat().st_size > 10_000


def test_predict_report_writes_the_pages(tmp_path):
    from typer.testing import CliRunner

    from modalsynth.cli import app

    data = tmp_path / "data"
    for subject, seed in (("s1", 0), ("s2", 1)):
        (data / subject).mkdir(parents=True)
        for name in ("flair", "t1"):
            volume = nib.Nifti1Image(blob_volume((24, 28, 24), seed=seed), np.diag([2.0, 2.0, 2.0, 1.0]))
            nib.save(volume, str(data / subject / f"{name}.nii.gz"))
    one = ["predict", "--input", str(data / "s1" / "flair.nii.gz"), "--output", str(tmp_path / "t1.nii.gz")]
    refused = CliRunner().invoke(app, [*one, "--report"])
    assert isinstance(refused.exception, UserError) and not (tmp_path / "t1.nii.gz").exists()
    result = CliRunner().invoke(app, ["predict", "--input", str(data), "--output", str(tmp_path / "pred"), "--report"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "pred").glob("*.html")} == {"s1.html", "s2.html", "index.html"}
    text = (tmp_path / "pred" / "s1.html").read_text()
    assert "builtin:flair-t1" in text and "What it does" in text
    [item] = _embedded(tmp_path / "pred" / "s1.html")
    assert [v["label"] for v in item["volumes"]] == ["flair", "synthetic", "real", "|synthetic - real| (0-1)"]


def test_without_webgl_the_page_opens_its_static_images(derivatives):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; CI installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    no_webgl = [arg for arg in CHROMIUM_ARGS if "swiftshader" not in arg and "gpu" not in arg] + ["--disable-webgl"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=no_webgl)
        try:
            page = browser.new_page()
            page.goto((derivatives / "sub-03.html").resolve().as_uri())
            page.wait_for_function("window.modalsynthStatus && window.modalsynthStatus.ready", timeout=60_000)
            status = page.evaluate("window.modalsynthStatus")
            opened = page.evaluate("Array.from(document.querySelectorAll('details.static')).every((d) => d.open)")
            shown = page.evaluate("document.querySelector('details.static img').naturalWidth")
        finally:
            browser.close()
    assert status["errors"] == ["no WebGL2"] and opened and shown > 100


def test_report_command_rewrites_a_derivatives_folders_pages(derivatives):
    from typer.testing import CliRunner

    from modalsynth.cli import app

    result = CliRunner().invoke(app, ["report", str(derivatives)])
    assert result.exit_code == 0, result.output
    assert [line.split("/")[-1] for line in result.output.splitlines()] == ["sub-02.html", "sub-03.html", "index.html"]
