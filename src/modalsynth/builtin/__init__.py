"""Models that ship inside the package, so `modalsynth predict` works without training first.

Each is one weights file beside this module (a generator-only, half-precision `Checkpoint`), its sha256 checked at
load, its model card (`<name>.md`) beside it, and the script that reproduces it in `scripts/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..io import file_digest

PREFIX = "builtin:"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BuiltinModel:
    """A shipped model: its name, weights file, expected sha256, what it maps, and a one-line description."""

    name: str
    sha256: str
    source: str
    target: str
    description: str
    raw_twin: str | None = None  # the built-in that predicts the brains `predict` strips from raw scans itself

    @property
    def path(self) -> Path:
        return HERE / f"{self.name}.pt"

    @property
    def card(self) -> Path:
        return HERE / f"{self.name}.md"


MODELS: dict[str, BuiltinModel] = {
    "flair-t1": BuiltinModel(
        name="flair-t1",
        sha256="0886e5fdf48655371018be1067db4cea84a2f51a51c5d8da952954b46159e250",
        source="flair",
        target="t1",
        description="3D GAN generator, skull-stripped FLAIR -> T1 (v2): the simulator prior trained on 11 real "
        "subjects (BraTS 2018, BraTS 2023, a BrainLesion case, Ljubljana MS) with an edge term; raw scans that predict "
        "strips itself go to builtin:flair-t1-raw",
        raw_twin="flair-t1-raw",
    ),
    "flair-t1-raw": BuiltinModel(
        name="flair-t1-raw",
        sha256="ec60cb3bce8335d15d22f4684f3d8877e365b8b82a5eafde7a52002abc920e4b",
        source="flair",
        target="t1",
        description="builtin:flair-t1's recipe with a dark shell around half the training brains, so deepbet's looser "
        "mask of a raw head changes little: what predict uses for the FLAIRs it skull-strips itself",
    ),
    "flair-t2-t1": BuiltinModel(
        name="flair-t2-t1",
        sha256="ab244706882683ab389c429ea64b46abdf3239f32ec1a7a975f764c7aef14141",
        source="flair,t2",
        target="t1",
        description="the same 3D GAN generator from skull-stripped FLAIR + T2 (or either alone) -> T1: trained "
        "on the 11 real subjects, 5 of them with T2, with source dropout",
    ),
    "sim-flair-t1": BuiltinModel(
        name="sim-flair-t1",
        sha256="24e13df33f9e18b5938ad1993121445307fc56f3d1a39d4a7f830b250b169c09",
        source="flair",
        target="t1",
        description="the same 3D GAN generator trained on simulated pairs only: the default start of gan3d "
        "FLAIR -> T1 training",
    ),
}
DEFAULT = "flair-t1"


def _name(spec: str | Path | None) -> str:
    """The model name of a `builtin:NAME` spec (None: the default model's)."""
    return DEFAULT if spec is None else str(spec)[len(PREFIX) :]


def is_builtin(spec: str | Path | None) -> bool:
    return spec is None or str(spec).startswith(PREFIX)


def spec_of(path: Path | None) -> str | None:
    """`builtin:NAME` when `path` is a shipped model's weights file, else the path as text (None stays None)."""
    if path is None:
        return None
    found = next((m.name for m in MODELS.values() if Path(path).resolve() == m.path), None)
    return str(path) if found is None else f"{PREFIX}{found}"


def raw_twin(spec: str | Path | None) -> Path | None:
    """The verified weights of the built-in that predicts brains stripped from raw scans for `spec`, if it has one."""
    model = MODELS.get(_name(spec)) if is_builtin(spec) else None
    return None if model is None or model.raw_twin is None else resolve(f"{PREFIX}{model.raw_twin}")


def resolve(spec: str | Path | None) -> Path:
    """`builtin:NAME` (or nothing: the default model) -> its verified weights file; any other value is a path."""
    if not is_builtin(spec):
        return Path(spec)  # type: ignore[arg-type]
    name = _name(spec)
    if name not in MODELS:
        raise UserError(f"{spec}: no such built-in model; `modalsynth models` lists them ({', '.join(MODELS)})")
    model = MODELS[name]
    if not model.path.is_file():
        raise UserError(
            f"{model.path}: the built-in model's weights are missing from this installation; reinstall modalsynth"
        )
    found = file_digest(model.path)
    if found != model.sha256:
        raise UserError(
            f"{model.path}: sha256 {found[:12]}... does not match the model card's {model.sha256[:12]}...; "
            "the file is damaged or replaced: reinstall modalsynth"
        )
    return model.path
