"""An on-disk cache of every subject's network-grid arrays: preprocessed once, in parallel, then read by memory map.

Layout: CACHE/manifest.json and CACHE/subjects/<subject>/{source,target,mask}.npy (source: one channel per input
sequence). As in nnU-Net v2's preprocessed
folder, there is one entry per case, keyed by its identifier (never by content: a volume repeated under another name
is another entry), beside the records that undo the preprocessing; as in MONAI's PersistentDataset, an entry is
written under a temporary name and renamed into place. The manifest (written last, atomically) records the settings
the arrays depend on and each input file's size, mtime and SHA-256, so a warm start stats the files and hashes only
those whose size or mtime changed. Arrays are float16 (the measured error is in benchmarks/RESULTS.md) in plain .npy
files: a memory map reads only the pages a patch touches, with nothing to decode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..io import atomic_write, file_digest, file_identity, plain
from .datasets import PreparedSubject, prepare_pair
from .pairs import Pair, source_list
from .preprocess import GridRecord, IntensityRecord, PreprocessConfig

log = logging.getLogger(__name__)

CACHE_FORMAT = "modalsynth-cache-2"  # 2: source arrays hold a channel axis (several sequences)
MANIFEST = "manifest.json"
#: where `train` keeps its cache when `--cache` is not given: this variable's folder, else beside the run folder
CACHE_ENV = "MODALSYNTH_CACHE"
ARRAYS = ("source", "target", "mask")
#: on-disk types: intensities in [-1, 1] as float16 (about 3 decimal digits), the foreground as one byte per voxel
DTYPES = {"source": np.float16, "target": np.float16, "mask": np.bool_}
#: the manifest is rewritten at most this often during a build (and always at its end)
SAVE_EVERY_S = 5.0


@dataclass(frozen=True)
class CacheSettings:
    """What the cached arrays depend on besides the input files: the pair's modalities and the preprocessing."""

    source: str
    target: str
    resample_target: bool
    preprocess: PreprocessConfig

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def default_cache_dir(data: Path, out: Path, source: str, target: str) -> Path:
    """`$MODALSYNTH_CACHE/<key>`, else OUT/../.modalsynth-cache/<key>: shared by the runs of one project folder, away
    from a data folder that may be read-only; the key names the data folder and the modality pair."""
    resolved = str(Path(data).resolve())
    key = f"{Path(data).name}-{source}-{target}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"
    root = (
        Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else Path(out).resolve().parent / ".modalsynth-cache"
    )
    return root / key


def _entry_dir(cache: Path, subject: str) -> Path:
    return cache / "subjects" / quote(subject, safe="")


def _inputs(pair: Pair) -> dict[str, Path]:
    sources = [("source" if i == 0 else f"source{i}", p) for i, p in enumerate(pair.sources)]
    roles = [*sources, ("target", pair.target), ("mask", pair.mask)]
    return {role: Path(p) for role, p in roles if p}


def _same_stat(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("path", "size", "mtime_ns"))


def _write_entry(pair: Pair, preprocess: PreprocessConfig, cache: Path) -> tuple[str, dict[str, Any]]:
    """Preprocess one pair and write its arrays into a temporary folder renamed into place (runs in a worker);
    returns the subject and its manifest entry, input hashes included. Reading the volumes checks every voxel (NaN,
    Inf, blank, truncated: a one-line `UserError`), which is why training checks only the headers of its inputs."""
    files = {role: {**file_identity(p), "sha256": file_digest(p)} for role, p in _inputs(pair).items()}
    prepared = prepare_pair(pair, preprocess)
    final = _entry_dir(cache, pair.subject)
    tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    arrays = {"source": prepared.source, "target": prepared.target, "mask": prepared.mask}
    for name, array in arrays.items():
        if array is not None:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array, dtype=DTYPES[name]))
    if final.exists():
        old = final.parent / f".tmp-{uuid.uuid4().hex}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    entry = {
        "files": files,
        "shape": list(prepared.mask.shape),
        "has_target": prepared.target is not None,
        "grid": plain(prepared.grid),
        "target_intensity": asdict(prepared.target_intensity) if prepared.target_intensity else None,
        "registration": prepared.registrations,
        "present": list(prepared.present),
    }
    return pair.subject, entry


def read_manifest(cache: Path) -> dict[str, Any] | None:
    """CACHE's manifest, None when there is none yet; a damaged one is a one-line `UserError`."""
    path = cache / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: corrupt cache manifest ({exc}); delete {cache} and run again to rebuild it") from exc
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("modalsynth-cache-"):
        raise UserError(f"{path}: not a modalsynth cache manifest; choose another --cache folder or delete {cache}")
    problem = _manifest_problem(manifest)
    if problem:
        raise UserError(f"{path}: damaged cache manifest ({problem}); delete {cache} and run again to rebuild it")
    return manifest


#: the manifest's shape: each subject entry's keys and the types their values have
ENTRY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "files": dict,
    "shape": list,
    "has_target": bool,
    "grid": dict,
    "target_intensity": (dict, type(None)),
}


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's shape (a hand-edited or foreign file), or None."""
    if not isinstance(manifest.get("settings"), dict) or not isinstance(manifest["settings"].get("source"), str):
        return "'settings' is not a mapping naming its source"
    if not isinstance(manifest.get("subjects"), dict):
        return "'subjects' is missing or not a mapping"
    for name, entry in manifest["subjects"].items():
        if not isinstance(entry, dict):
            return f"subject {name} is not a mapping"
        for key, kind in ENTRY_FIELDS.items():
            if not isinstance(entry.get(key), kind):
                return f"subject {name} has no valid '{key}'"
        if len(entry["shape"]) != 3 or not all(isinstance(n, int) and n > 0 for n in entry["shape"]):
            return f"subject {name} has no valid 'shape'"
    return None


def open_cache_folder(cache: Path) -> None:
    """Make CACHE/subjects, or a one-line `UserError` saying why it cannot be (a file there, no permission)."""
    cache = Path(cache)
    if cache.exists() and not cache.is_dir():
        raise UserError(f"--cache {cache}: is a file, not a folder; give a folder (it is made if missing)")
    try:
        (cache / "subjects").mkdir(parents=True, exist_ok=True)
        probe = cache / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"--cache {cache}: cannot write there ({exc.strerror or type(exc).__name__}); give a writable folder, "
            f"or set {CACHE_ENV}"
        ) from exc


def _save_manifest(cache: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True)
    atomic_write(cache / MANIFEST, ".json", lambda tmp: Path(tmp).write_text(text))


def _up_to_date(cache: Path, pair: Pair, entry: dict[str, Any] | None) -> bool | None:
    """True: the entry matches its inputs; False: rebuild it; None: an input's size or mtime changed (hash to know)."""
    if entry is None or not _entry_dir(cache, pair.subject).is_dir():
        return False
    inputs = _inputs(pair)
    if set(inputs) != set(entry["files"]):
        return False
    names = [n for n in ARRAYS if n != "target" or entry["has_target"]]
    if not all((_entry_dir(cache, pair.subject) / f"{n}.npy").is_file() for n in names):
        return False
    return True if all(_same_stat(file_identity(p), entry["files"][r]) for r, p in inputs.items()) else None


def _content_unchanged(pair: Pair, entry: dict[str, Any]) -> bool:
    """After a size or mtime change: whether every input still has its recorded hash (its stat is then updated)."""
    fresh = {role: {**file_identity(p), "sha256": file_digest(p)} for role, p in _inputs(pair).items()}
    if any(fresh[r]["sha256"] != entry["files"][r]["sha256"] for r in fresh):
        return False
    entry["files"] = fresh
    return True


def build_cache(
    pairs: list[Pair], settings: CacheSettings, cache: Path, workers: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Bring CACHE up to date for `pairs` (missing or changed subjects are preprocessed in `workers` processes);
    returns the manifest. A cache made with other settings is rebuilt, saying so in one line."""
    cache = Path(cache)
    wanted = settings.to_dict()
    manifest = read_manifest(cache)
    if manifest is not None and manifest["format"] != CACHE_FORMAT:
        log.warning(f"{cache}: made by another version of modalsynth ({manifest['format']}); rebuilding it")
        shutil.rmtree(cache / "subjects", ignore_errors=True)
        manifest = None
    if manifest is not None and manifest.get("settings") != wanted:
        differ = sorted(
            k
            for k in set(wanted) | set(manifest.get("settings", {}))
            if manifest.get("settings", {}).get(k) != wanted.get(k)
        )
        log.warning(f"{cache}: made with other settings ({', '.join(differ)}); rebuilding it")
        shutil.rmtree(cache / "subjects", ignore_errors=True)
        manifest = None
    if manifest is None:
        manifest = {"format": CACHE_FORMAT, "settings": wanted, "subjects": {}}
    open_cache_folder(cache)
    for leftover in (cache / "subjects").glob(".tmp-*"):  # an interrupted build's unfinished entries
        shutil.rmtree(leftover, ignore_errors=True)
    entries = manifest["subjects"]
    todo, changed, restated = [], [], False
    for pair in pairs:
        state = _up_to_date(cache, pair, entries.get(pair.subject))
        if state is None:
            state = restated = _content_unchanged(pair, entries[pair.subject])
        if not state:
            todo.append(pair)
            if pair.subject in entries:
                changed.append(pair.subject)
            entries.pop(pair.subject, None)  # nothing counts as done until the new entry is written
    if changed:
        log.warning(
            f"{cache}: {len(changed)} subject(s) changed since they were cached ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}); preprocessing them again"
        )
    if todo:
        _build(todo, settings.preprocess, cache, manifest, workers, progress)
    elif restated or not (cache / MANIFEST).exists():
        _save_manifest(cache, manifest)
    return manifest


def available_cpus() -> int:
    """The CPUs this process may use (its affinity, where the system tells it)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _build(
    todo: list[Pair],
    preprocess: PreprocessConfig,
    cache: Path,
    manifest: dict[str, Any],
    workers: int | None,
    progress: bool,
) -> None:
    """Preprocess `todo` in a process pool; each finished entry joins the manifest, saved every few seconds and at
    the end (also when interrupted), so the entries written so far count on the next start."""
    workers = max(1, min(workers or available_cpus(), len(todo)))
    # a bar on a terminal; a log file gets one line at the end instead (and an input error stays its only line)
    bar = tqdm(
        total=len(todo),
        desc=f"caching ({workers} processes)",
        unit="subject",
        disable=not (progress and sys.stderr.isatty()),
    )
    saved = started = time.monotonic()
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = {pool.submit(_write_entry, pair, preprocess, cache) for pair in todo}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        subject, entry = future.result()  # an unreadable input: its UserError, here
                        manifest["subjects"][subject] = entry
                        bar.update(1)
                    if time.monotonic() - saved > SAVE_EVERY_S:
                        _save_manifest(cache, manifest)
                        saved = time.monotonic()
            finally:
                for future in pending:  # stop at the first failure (or Ctrl-C) instead of building the rest
                    future.cancel()
        if progress and bar.disable:
            log.info(
                f"{cache}: cached {len(todo)} subject(s) in {time.monotonic() - started:.0f} s ({workers} processes)"
            )
    finally:
        bar.close()
        _save_manifest(cache, manifest)


@dataclass
class CachedSubject:
    """One cache entry: its arrays open as read-only memory maps on each access, so holding it costs no memory."""

    name: str
    folder: Path
    shape: tuple[int, int, int]  # the grid; the source array is (sources, *shape)
    sources: int
    has_target: bool
    grid: GridRecord
    target_intensity: IntensityRecord | None
    present: tuple[bool, ...] = ()  # which sources the subject has (empty: all)

    def array(self, name: str) -> np.ndarray:
        """The memory-mapped array `name` (source, target or mask); a damaged file is a one-line `UserError`."""
        path = self.folder / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise corrupt(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        shape = (self.sources, *self.shape) if name == "source" else self.shape
        if array.shape != shape or array.dtype != DTYPES[name]:
            raise corrupt(
                path, f"holds {array.dtype}{list(array.shape)}, the manifest says {np.dtype(DTYPES[name])}{list(shape)}"
            )
        return array

    @property
    def source(self) -> np.ndarray:
        return self.array("source")

    @property
    def target(self) -> np.ndarray | None:
        return self.array("target") if self.has_target else None

    @property
    def mask(self) -> np.ndarray:
        return self.array("mask")

    def check(self) -> None:
        """Open every array once (headers and sizes only): a damaged entry stops the run before its first step."""
        for name in ARRAYS:
            if name != "target" or self.has_target:
                self.array(name)

    def check_values(self) -> None:
        """Read every voxel: values that are not finite (a cache file changed on disk) are a one-line `UserError`."""
        for name in ARRAYS:
            if (name != "target" or self.has_target) and not np.isfinite(self.array(name)).all():
                raise corrupt(self.folder / f"{name}.npy", "values that are not finite")

    def load(self) -> PreparedSubject:
        """The entry in memory as float32 (validation and closed-form fits)."""
        target = self.target
        return PreparedSubject(
            self.name,
            np.asarray(self.source, dtype=np.float32),
            None if target is None else np.asarray(target, dtype=np.float32),
            np.asarray(self.mask),
            self.grid,
            self.target_intensity,
            present=self.present,
        )


def corrupt(path: Path, reason: str) -> UserError:
    """The one-line error for a damaged cache file: what it is and how to rebuild it."""
    return UserError(f"{path}: corrupt cache entry ({reason}); delete {path.parent} and run again to rebuild it")


def open_subjects(cache: Path, manifest: dict[str, Any], names: list[str]) -> list[CachedSubject]:
    """The cache entries of `names`, in that order (each must be in the manifest, in this version's format)."""
    if manifest["format"] != CACHE_FORMAT:
        raise UserError(
            f"{cache}: made by another version of modalsynth ({manifest['format']}); run modalsynth "
            "prepare (or train) to rebuild it"
        )
    sources = len(source_list(manifest["settings"]["source"]))
    out = []
    for name in names:
        entry = manifest["subjects"].get(name)
        if entry is None:
            raise UserError(
                f"{cache}: subject {name} is not in the cache; run modalsynth prepare (or train) again to add it"
            )
        try:
            grid = GridRecord(
                **{  # type: ignore[arg-type]  # the manifest's plain lists, made tuples where the record holds tuples
                    k: tuple(v) if isinstance(v, list) and k not in ("original_affine", "orientation") else v
                    for k, v in entry["grid"].items()
                }
            )
            intensity = IntensityRecord(**entry["target_intensity"]) if entry["target_intensity"] else None
        except TypeError as exc:
            raise UserError(
                f"{cache / MANIFEST}: damaged cache manifest (subject {name}: {exc}); delete {cache} and run again"
            ) from exc
        out.append(
            CachedSubject(
                name,
                _entry_dir(cache, name),
                tuple(entry["shape"]),
                sources,
                entry["has_target"],
                grid,
                intensity,
                tuple(entry.get("present", ())),
            )
        )
    return out


class LoadedSubjects:
    """A list of cache entries that loads each one (float32) only while it is iterated: bounded memory."""

    def __init__(self, subjects: list[CachedSubject]):
        self.subjects = subjects

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[PreparedSubject]:
        return (s.load() for s in self.subjects)


def cache_size_bytes(cache: Path) -> int:
    """Bytes of the cache's array files on disk."""
    return sum(p.stat().st_blocks * 512 for p in Path(cache).glob("subjects/*/*.npy"))
