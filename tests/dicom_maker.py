"""DICOM series made from a NIfTI volume with pydicom, for the DICOM-input tests: classic single-frame MR series, an
enhanced multi-frame one, a localiser, a derived series and a non-image report, all with made-up patient details."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modalsynth.io import Volume

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-123456", "PatientBirthDate": "19700101"}
STUDY_DATE = "20240517"


def _base(modality_uid: str, series: int, description: str, uid_root: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = modality_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = modality_uid
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.StudyInstanceUID = uid_root + ".1"
    ds.SeriesInstanceUID = f"{uid_root}.3.{series}"
    ds.FrameOfReferenceUID = uid_root + ".2"
    ds.SeriesNumber = series
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.MagneticFieldStrength = 3
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Smith^John"
    ds.AccessionNumber = "ACC998877"
    return ds


def _lps_geometry(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Row and column direction cosines, each slice's position (LPS mm) and the spacing, for slices along the third
    array axis; DICOM rows run along the array's second axis, columns along its first."""
    flip = np.diag([-1.0, -1.0, 1.0])
    linear = flip @ volume.affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    row_dir, col_dir = linear[:, 0] / spacing[0], linear[:, 1] / spacing[1]  # along i (a row), along j (a column)
    origin = flip @ volume.affine[:3, 3]
    positions = np.array([origin + k * linear[:, 2] for k in range(volume.shape[2])])
    return row_dir, col_dir, positions, tuple(float(s) for s in spacing)


def _pixels(volume: Volume) -> np.ndarray:
    """uint16 slices (k, rows=j, columns=i) scaled to 0-4000."""
    data = np.clip(np.asarray(volume.data, dtype=np.float64), 0, None)
    data = data / max(float(data.max()), 1e-6) * 4000.0
    return np.round(data).astype(np.uint16).transpose(2, 1, 0)


def write_series(
    volume: Volume,
    folder: Path,
    series: int,
    description: str,
    tr_ms: float,
    te_ms: float,
    ti_ms: float | None = None,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    skip: tuple[int, ...] = (),
    uid_root: str = "1.2.826.0.1.3680043.8.498.41",
    jpeg2000: bool = False,
) -> list[Path]:
    """One classic MR series (one file per slice) of `volume`, leaving out the slice indices in `skip`; `jpeg2000`:
    each slice compressed losslessly (JPEG 2000, by Pillow), as PACS often store them."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir, positions, spacing = _lps_geometry(volume)
    pixels = _pixels(volume)
    written = []
    for k, plane in enumerate(pixels):
        if k in skip:
            continue
        ds = _base(MRImageStorage, series, description, uid_root)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = list(image_type)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (between rows: along j), column spacing (along i)
        ds.SliceThickness = spacing[2]
        ds.SpacingBetweenSlices = spacing[2]
        ds.RepetitionTime, ds.EchoTime = tr_ms, te_ms
        ds.ScanningSequence = "SE\\IR" if ti_ms else "SE"
        ds.SequenceVariant = "SK\\SP\\MP"
        if ti_ms:
            ds.InversionTime = ti_ms
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if jpeg2000:
            ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
            ds.PixelData = encapsulate([_j2k(plane)])
        else:
            ds.PixelData = np.ascontiguousarray(plane).tobytes()
        path = folder / f"IM{series:02d}{k:04d}"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _j2k(plane: np.ndarray) -> bytes:
    """A uint16 slice as a lossless JPEG 2000 codestream."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane)).save(buffer, format="JPEG2000", no_jp2=True)
    return buffer.getvalue()


def write_enhanced(
    volume: Volume, folder: Path, series: int, description: str, tr_ms: float, te_ms: float, ti_ms: float | None = None
) -> Path:
    """One enhanced MR (multi-frame) file holding the whole series, with its per-frame positions."""
    from pydicom.dataset import Dataset
    from pydicom.uid import EnhancedMRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir, positions, spacing = _lps_geometry(volume)
    pixels = _pixels(volume)
    ds = _base(EnhancedMRImageStorage, series, description, "1.2.826.0.1.3680043.8.498.41")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(pixels)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ContentQualification = "PRODUCT"
    shared = Dataset()
    orientation, measures, timing = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
    measures.PixelSpacing = [spacing[1], spacing[0]]
    measures.SliceThickness = spacing[2]
    measures.SpacingBetweenSlices = spacing[2]
    timing.RepetitionTime = tr_ms
    timing.FlipAngle = 90
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    shared.MRTimingAndRelatedParametersSequence = [timing]
    echo = Dataset()
    echo.EffectiveEchoTime = te_ms
    shared.MREchoSequence = [echo]
    if ti_ms:
        modifier = Dataset()
        modifier.InversionRecovery = "YES"
        modifier.InversionTimes = [ti_ms]
        shared.MRModifierSequence = [modifier]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    dimension_uid = generate_uid()
    for k in range(len(pixels)):
        frame, position, content = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in positions[k]]
        content.DimensionIndexValues = [1, k + 1]
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        frame.PlanePositionSequence = [position]
        frame.FrameContentSequence = [content]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    index_stack, index_position = Dataset(), Dataset()
    index_stack.DimensionOrganizationUID = index_position.DimensionOrganizationUID = dimension_uid
    index_stack.DimensionIndexPointer = 0x00209056  # Stack ID
    index_stack.FunctionalGroupPointer = 0x00209111  # Frame Content Sequence
    index_position.DimensionIndexPointer = 0x00209057  # In-Stack Position Number
    index_position.FunctionalGroupPointer = 0x00209111
    ds.DimensionIndexSequence = [index_stack, index_position]
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = [organization]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path = folder / f"EN{series:02d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_report(folder: Path) -> Path:
    """A non-image DICOM object (a basic text structured report) such as a scanner leaves beside the images."""
    from pydicom.uid import BasicTextSRStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = _base(BasicTextSRStorage, 99, "Radiology report", "1.2.826.0.1.3680043.8.498.41")
    ds.Modality = "SR"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    path = folder / "SR0001"
    ds.save_as(path, enforce_file_format=True)
    return path


def downsampled(volume: Volume, step: int = 2) -> Volume:
    """Every `step`-th voxel of a volume (a smaller series for fast tests), its affine scaled to match."""
    affine = volume.affine.copy()
    affine[:3, :3] *= step
    return Volume(np.ascontiguousarray(volume.data[::step, ::step, ::step]), affine, volume.header)
