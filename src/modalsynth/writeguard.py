"""The one check every command runs before it writes: no output may replace an input, another output, or take a name
whose ending says another format.

Paths are compared as files, not strings: an existing file by device and inode (a symbolic or hard link to an input is
that input), a new one by its resolved path. A clash is a one-line `UserError` before any work starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Output:
    """A path a command is about to write: what it is, the option that named it, and the endings it may have (empty:
    any, e.g. a folder)."""

    path: Path
    what: str
    option: str
    endings: tuple[str, ...] = ()


def check_writes(reads: Iterable[Path | None], outputs: Iterable[Output]) -> None:
    """A `UserError` when an output would replace a file the command reads or another output, or when its name does
    not end as what is written there does."""
    taken = {_identity(Path(p)): Path(p) for p in reads if p is not None and Path(p).exists()}
    mine: dict[tuple, Output] = {}
    for out in outputs:
        path = Path(out.path)
        key = _identity(path)
        if key in taken:
            raise UserError(
                f"{out.option} {path}: is an input ({taken[key]}); writing there would replace it, "
                f"choose another {out.option}"
            )
        if out.endings and not str(path).lower().endswith(out.endings):
            raise UserError(f"{out.option} {path}: {out.what} is written there; give a name ending in {out.endings[0]}")
        if key in mine:
            raise UserError(
                f"{out.option} {path}: is also {mine[key].option} ({mine[key].what}); give each output its own path"
            )
        mine[key] = out


def check_outside(folder: Path, output: Path, option: str, why: str) -> None:
    """A `UserError` when `output` is `folder` or lies inside it (`why`: what would go wrong there)."""
    inner, outer = Path(output).resolve(), Path(folder).resolve()
    if inner == outer or outer in inner.parents:
        raise UserError(f"{option} {output}: is inside {folder}; {why}, so choose a folder outside it")


def check_run_folders(data: Path, folders: Iterable[tuple[Path | None, str]]) -> None:
    """Folders a command fills (a run, a cache, a benchmark) must not be its data or lie inside a data folder,
    where they would be read back as subjects: one line per clash, before any work."""
    data = Path(data)
    for folder, option in folders:
        if folder is None:
            continue
        if data.is_dir():
            check_outside(data, Path(folder), option, "it would be read back as a subject of the data")
        else:
            check_writes([data], [Output(Path(folder), "a folder", option)])


def files_under(root: Path) -> list[Path]:
    """Every file a command reading `root` may read: the file itself, or every file below a folder."""
    root = Path(root)
    if root.is_file():
        return [root]
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []


def _identity(path: Path) -> tuple:
    if path.exists():
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    return ("path", str(path.resolve()))
