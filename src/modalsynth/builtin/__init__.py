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
        sha256="04390582396a119a5734219e7078c7c2188a82073bf42344372a5c3c2de6f61b",
        source="flair",
        target="t1",
        description="3D GAN generator, skull-stripped FLAIR -> T1 (v2): the simulator prior trained on 11 real "
        "subjects (BraTS 2018, BraTS 2023, a BrainLesion case, Ljubljana MS) with an edge term; raw scans that predict "
        "strips itself go to builtin:flair-t1-raw",
        raw_twin="flair-t1-raw",
    ),
    "flair-t1-raw": BuiltinModel(
        name="flair-t1-raw",
        sha256="dd19d7b6938a2f50822aab679ab081457728e21767317640ab31ef070c81e2ab",
        source="flair",
        target="t1",
        description="builtin:flair-t1's recipe with a dark shell around half the training brains, so deepbet's looser "
        "mask of a raw head changes little: what predict uses for the FLAIRs it skull-strips itself",
    ),
    "flair-t2-t1": BuiltinModel(
        name="flair-t2-t1",
        sha256="fd8774ab72b88054c49d5a11dbe9142daf78f2be81495e212dfc7502bace24bf",
        source="flair,t2",
        target="t1",
        description="the same 3D GAN generator from skull-stripped FLAIR + T2 (or either alone) -> T1: trained "
        "on the 11 real subjects, 5 of them with T2, with source dropout",
    ),
    "sim-flair-t1": BuiltinModel(
        name="sim-flair-t1",
        sha256="ad4173074b38e060ab61f3d59f7f14a40601300cbaea5b29e8b2aed89bae588e",
        source="flair",
        target="t1",
        description="the same 3D GAN generator trained on simulated pairs only: the default start of gan3d "
        "FLAIR -> T1 training",
    ),
}
DEFAULT = "flair-t1"


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
    if not is_builtin(spec):
        return None
    model = MODELS.get(DEFAULT if spec is None else str(spec)[len(PREFIX) :])
    return None if model is None or model.raw_twin is None else resolve(f"{PREFIX}{model.raw_twin}")


def resolve(spec: str | Path | None) -> Path:
    """`builtin:NAME` (or nothing: the default model) -> its verified weights file; any other value is a path."""
    if not is_builtin(spec):
        return Path(spec)  # type: ignore[arg-type]
    name = DEFAULT if spec is None else str(spec)[len(PREFIX) :]
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
