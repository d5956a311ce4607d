"""A small BIDS dataset for the BIDS App tests: three subjects from real-dev volumes (every second voxel) or, where
real-dev is absent, from blob volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from .conftest import REAL_DEV, blob_volume

#: file in the tree -> (real-dev subject, sequence); blob seeds stand in without real-dev
LAYOUT = {
    "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz": ("brats2018-case0", "flair"),
    "sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz": ("brats2018-case1", "flair"),
    "sub-02/anat/sub-02_FLAIR.nii.gz": ("brats2018-case2", "flair"),
    "sub-02/anat/sub-02_T1w.nii.gz": ("brats2018-case2", "t1"),
    "sub-03/anat/sub-03_acq-ax_run-1_FLAIR.nii.gz": ("brats-brainles-case", "flair"),
    "sub-03/anat/sub-03_acq-ax_run-1_T2w.nii.gz": ("brats-brainles-case", "t2"),
}


def _image(subject: str, sequence: str, index: int) -> nib.Nifti1Image:
    path = REAL_DEV / subject / f"{sequence}.nii.gz"
    if path.is_file():
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)[::3, ::3, ::3]
        affine = img.affine.copy()
        affine[:3, :3] *= 3
    else:
        data, affine = blob_volume((30, 36, 30), seed=index) * 10, np.diag([3.0, 3.0, 3.0, 1.0])
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    out.header.set_xyzt_units("mm", "sec")
    return out


def make_bids_tree(root: Path) -> Path:
    """Write the dataset (dataset_description.json, README, participants.tsv and the images) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "modalsynth test dataset", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (root / "README").write_text("Three subjects for the modalsynth BIDS App tests, from public brain MRI.\n")
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n")
    for index, (name, (subject, sequence)) in enumerate(LAYOUT.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(_image(subject, sequence, index), str(path))
    return root
