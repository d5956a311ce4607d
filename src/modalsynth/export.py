"""A gan3d generator as one ONNX file with its preprocessing contract, and prediction through ONNX Runtime.

The file holds the generator (a batch of windows in [-1, 1] -> the target in [-1, 1]) and, in its metadata, what a
runtime needs around it: the input's orientation, spacing and crop, the intensity scaling in and out, and the sliding
windows (`modalsynth.contract`, human-readable JSON), plus the settings and target intensities modalsynth itself
rebuilds its Predictor from (`modalsynth.config`, `modalsynth.intensity`). `modalsynth predict --onnx` runs the same
preprocessing, windows and postprocessing as with the checkpoint, with each window batch run by ONNX Runtime
(`OnnxRuntimeMethod` stands in for the method).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from .checkpoints import FORMAT_VERSION
from .config import InferenceConfig, config_from_checkpoint
from .data.preprocess import IntensityRecord, PreprocessConfig, grid_spacing
from .errors import UserError
from .inference import Predictor
from .inferers import Inferer, SlidingWindowInferer
from .io import atomic_write
from .methods import Method, build_method, method_class
from .writeguard import Output, check_writes

#: the methods whose generator exports (a 3D network applied in sliding windows)
EXPORTABLE_METHODS = ("gan3d",)
OPSET = 18
INSTALL_HINT = "install the optional ONNX support: pip install 'modalsynth[onnx]'"


def preprocessing_contract(predictor: Predictor) -> dict[str, Any]:
    """What a runtime must do to a volume before and after the network, in words and numbers (the ONNX metadata)."""
    pre, how, intensity = (
        predictor.config.preprocess,
        predictor.method.application(predictor.inference),
        predictor.intensity,
    )
    return {
        "source": predictor.config.source,
        "target": predictor.config.target,
        "orientation": "reorient to RAS (nibabel's canonical) and index the array (z, y, x), i.e. S, A, R from slowest "
        "to fastest; the output goes back to the input's own grid, affine and header",
        "spacing_mm": _spacing(pre),
        "crop": {
            "grid": pre.grid if isinstance(pre.grid, str) else list(pre.grid),
            "margin_voxels": pre.margin,
            "multiple_of": 2**pre.depth,
            "fill": "the cropped volume's minimum",
            "auto": "the foreground's bounding box plus margin_voxels, each axis padded evenly to multiple_of",
        },
        "intensity_in": {
            "foreground": "voxels unlike the dominant background value (skull-stripped input)",
            "percentiles": [pre.lower_percentile, pre.upper_percentile],
            "maps_to": [-1.0, 1.0],
            "clip": pre.clip,
        },
        "intensity_out": {
            "from": [-1.0, 1.0],
            "to": [intensity.low, intensity.high],
            "background": intensity.low if intensity.background is None else intensity.background,
            "background_where": "outside the input's foreground",
        },
        "windows": _windows_contract(how),
        "input": f"float32 (N, {predictor.method.input_channels}, D, H, W), N windows"
        + (
            ""
            if len(predictor.config.sources) == 1
            else ": the sources in the order of 'source' (a missing one "
            "zero), then one constant channel each, 1 where that source is given, else 0"
        ),
        "output": "float32 (N, 1, D, H, W) in [-1, 1]",
    }


def twin_path(path: Path) -> Path:
    """Where a built-in's twin for raw scans goes beside its ONNX file: NAME-raw.onnx."""
    return Path(path).with_name(Path(path).stem + "-raw.onnx")


def export_onnx(predictor: Predictor, path: Path) -> Path:
    """Write the predictor's generator as an ONNX file (dynamic window batch, fixed window size) with its contract;
    a built-in's twin for raw scans goes beside it (`twin_path`), named in the file's metadata."""
    outputs = [Output(Path(path), "the ONNX model", "--onnx", (".onnx",))]
    if predictor.raw is not None:
        outputs.append(Output(twin_path(path), "the ONNX model for raw scans", "--onnx", (".onnx",)))
    check_writes([m.origin for m in (predictor, predictor.raw) if m is not None and m.origin is not None], outputs)
    _require_onnx()
    extra = {}
    if predictor.raw is not None:
        extra["modalsynth.raw_twin"] = _export_one(predictor.raw, twin_path(path), {}).name
    return _export_one(predictor, Path(path), extra)


def _export_one(predictor: Predictor, path: Path, extra: dict[str, str]) -> Path:
    """One generator as an ONNX file with its contract and settings (and `extra`) in the metadata."""
    import onnx

    if predictor.config.method not in EXPORTABLE_METHODS:
        raise UserError(
            f"{predictor.origin}: is a {predictor.config.method} model; --onnx exports "
            f"{', '.join(EXPORTABLE_METHODS)} models only"
        )
    how = predictor.method.application(predictor.inference)
    if not isinstance(how, SlidingWindowInferer):
        raise UserError(
            f"{predictor.origin}: predicts whole volumes of varying size, not fixed windows; train it with "
            "`inference.window` set (e.g. [64, 64, 64]) to export it"
        )
    generator = predictor.method.nets["generator"].eval().float()
    example = torch.zeros(2, predictor.method.input_channels, *how.window)
    batch = torch.export.Dim("windows", min=1, max=1024)
    with _quiet_exporter():
        program = torch.onnx.export(
            generator,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["source"],
            output_names=["target"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    assert program is not None  # dynamo export returns the program
    model = program.model_proto
    config = dataclasses.replace(predictor.config, inference=predictor.inference)  # as it predicts now
    metadata = {
        "modalsynth.contract": json.dumps(preprocessing_contract(predictor), indent=1),
        "modalsynth.config": json.dumps(config.to_dict()),
        "modalsynth.format_version": str(FORMAT_VERSION),
        "modalsynth.intensity": json.dumps(dataclasses.asdict(predictor.intensity)),
        **extra,
    }
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "modalsynth"
    return atomic_write(Path(path), ".onnx", lambda tmp: onnx.save_model(model, tmp))


def onnx_function(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch of windows -> the generator's output, run by an ONNX Runtime session."""
    name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {name: array})[0])

    return run


def onnx_predictor(path: Path) -> Predictor:
    """A Predictor whose windows run through ONNX Runtime: settings and intensities from the file's metadata."""
    session = _session(path, torch.get_num_threads())
    meta = session.get_modelmeta().custom_metadata_map
    if "modalsynth.config" not in meta:
        raise UserError(
            f"{path}: has no modalsynth metadata; export it with `modalsynth export --checkpoint C --onnx "
            f"{Path(path).name}`"
        )
    try:
        saved = json.loads(meta["modalsynth.config"])
        version = int(meta["modalsynth.format_version"])
        intensity = IntensityRecord(**json.loads(meta["modalsynth.intensity"]))
        if not isinstance(saved, dict):
            raise TypeError("the settings are not a mapping")
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(
            f"{path}: its modalsynth metadata is damaged ({type(exc).__name__}: {exc}); export the model again with "
            "`modalsynth export`"
        ) from exc
    config = config_from_checkpoint(saved, version, method_class, str(path))
    method = build_method(config, training=False)
    method.train_mode(False)
    runtime = OnnxRuntimeMethod(method, onnx_function(session))
    twin = meta.get("modalsynth.raw_twin")
    twin_file = Path(path).parent / twin if twin is not None else None
    if twin_file is not None and not twin_file.is_file():
        raise UserError(
            f"{path}: its model for raw scans, {twin}, is not beside it; keep the two files `modalsynth export` wrote "
            "together"
        )
    return Predictor(
        cast(Method, runtime),  # a Method in all but its generator
        config,
        intensity,
        config.inference,
        origin=Path(path),
        raw=onnx_predictor(twin_file) if twin_file is not None else None,
    )


class OnnxRuntimeMethod:
    """A built method with its generator replaced by an ONNX Runtime session, for the `Predictor`: float32 (the file's
    precision), each window batch run by the session on its own threads (no second split across torch threads);
    everything else (settings, the application's windows) is the method's."""

    def __init__(self, method: Method, run: Callable[[torch.Tensor], torch.Tensor]):
        self._method, self._run = method, run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._method, name)

    def inference_function(
        self, inference: InferenceConfig, gen: torch.Generator | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._run

    def application(self, inference: InferenceConfig) -> Inferer:
        return dataclasses.replace(self._method.application(inference), parallel=False)

    def predicts_in_bf16(self, inference: InferenceConfig) -> bool:
        return False

    def inference_autocast(self, inference: InferenceConfig) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def _windows_contract(how: Inferer) -> dict[str, Any]:
    """The sliding windows of the contract (size None: the whole volume in one pass)."""
    if not isinstance(how, SlidingWindowInferer):
        return {"size": None}
    return {
        "size": list(how.window),
        "min_overlap": how.overlap,
        "placement": "evenly spread per axis",
        "blend": "Gaussian",
        "sigma_fraction": how.sigma,
    }


def _spacing(pre: PreprocessConfig) -> str | list[float]:
    """The voxel size (z, y, x) in mm the network sees, or 'native' when the input is not resampled."""
    if pre.spacing is not None:
        return [float(v) for v in pre.spacing]
    return "native (no resampling)" if pre.grid == "auto" else list(grid_spacing(pre.grid))


def _session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session on `path`; a missing runtime or an unreadable file is a `UserError`."""
    _require_onnx()
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: file not found; export one with `modalsynth export --checkpoint C --onnx {path.name}`"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for every bad file
        raise UserError(f"{path}: not a readable ONNX model; write it again with `modalsynth export --onnx`") from exc


def _require_onnx() -> None:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"ONNX support is not installed ({module} is missing); {INSTALL_HINT}") from None


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines and warnings (missing torchvision ops, deprecations) stay off the console."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
