"""Destination checks: no command overwrites or deletes an input, or anything it did not create.

Every writer calls one of these before any work (before a teacher loads, before records are read in bulk):

* :func:`check_output_dir` — a folder the command writes new files into (``run --out``, ``sweep -o``): not a file,
  not below a regular file, writable;
* :func:`check_output_file` — a file the command replaces (``leaderboard build -o``): not a folder, not below a file,
  not one of the command's inputs, writable, and if it exists, a file of the kind the command writes;
* :func:`check_replaced_dir` — a folder the command replaces as a whole (``leaderboard site -o``): it holds only
  what the tool made (every file listed in its marker file), holds none of the inputs, and is not the current folder
  or above it.

Each raises :class:`~zsqbench.spine.errors.UserError` with one line: what is wrong and what to do. The writes themselves
stay atomic (a temporary file or folder beside the destination, moved into place when complete).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from zsqbench.spine.errors import UserError


def _abs(path: str | Path) -> Path:
    """Absolute and normalised without following the last component (a symlink destination is judged as given)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _check_parents(path: Path, option: str) -> Path:
    """The nearest existing ancestor of ``path``, which must be a writable folder."""
    anc = _nearest_existing(path.parent)
    if not anc.is_dir():
        raise UserError(f"{option} {path} is below {anc}, which is a file, not a folder: give a path in a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {anc} (permission denied): give a writable path")
    return anc


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """A folder the command creates files in (made if missing): not a file, not below a file, writable."""
    p = _abs(path)
    if os.path.lexists(p):
        if not p.is_dir():
            raise UserError(f"{option} {path} is a file, not a folder: give a folder (it is made if missing)")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: cannot write in it (permission denied): give a writable folder")
        return p
    _check_parents(p, option)
    return p


def check_output_file(path: str | Path, option: str, inputs: Iterable[str | Path] = (),
                      replaceable: Callable[[Path], bool] | None = None, kind: str = "file") -> Path:
    """A file the command writes (replacing it if it exists): not a folder, not below a file, writable, none of
    ``inputs`` (compared by the file they name, symlinks resolved), and — when it exists — ``replaceable(path)``
    (a file of the kind the command writes); else one line."""
    p = _abs(path)
    if os.path.lexists(p) and p.is_dir():
        raise UserError(f"{option} {path} is a folder: give the {kind} file to write")
    _check_parents(p, option)
    target = _real(p)
    for item in inputs:
        q = _abs(item)
        if q.is_file() and (target == _real(q) or (p.exists() and os.path.samefile(p, q))):
            raise UserError(f"{option} {path} is one of this command's inputs ({item}): writing there would destroy "
                            f"it; give another {option} path")
    if p.exists():
        if not p.is_file():
            raise UserError(f"{option} {path} exists and is not a regular file: give another path")
        if not os.access(p, os.W_OK):
            raise UserError(f"{option} {path}: cannot replace it (permission denied): give a writable path")
        if replaceable is not None and not replaceable(p):
            raise UserError(f"{option} {path} exists and is not a {kind} this tool wrote: not replaced; give a new "
                            "path, or move that file away first")
    return p


def check_replaced_dir(path: str | Path, option: str, marker: str, listed: Callable[[Path], set[str] | None],
                       inputs: Iterable[str | Path] = (), kind: str = "folder") -> Path:
    """A folder the command replaces as a whole. Allowed: a new path, an empty folder, or a folder this tool made
    (``marker`` in it, and ``listed(folder)`` — the files its marker lists — covering every file in it). Refused:
    a file; a path below a file; a folder that holds any of ``inputs`` or the current folder; a folder with files
    the tool did not write."""
    p = _abs(path)
    if os.path.lexists(p) and not p.is_dir():
        raise UserError(f"{option} {path} is a file; give a folder for the {kind}")
    _check_parents(p, option)
    real = _real(p)
    for item in inputs:
        q = _abs(item)
        if _inside(q, p) or _inside(_real(q), real):
            raise UserError(f"{option} {path} holds {item}, an input of this command: the {kind} folder is replaced "
                            "as a whole, so it would be deleted; give another folder")
    cwd = Path.cwd()
    if _inside(cwd, p) or _inside(_real(cwd), real):
        raise UserError(f"{option} {path} is the current folder or above it: the {kind} folder is replaced as a "
                        "whole; give a folder of its own, e.g. site/")
    if not p.is_dir() or not any(p.iterdir()):
        return p
    if not (p / marker).is_file():
        raise UserError(f"{option} {path} is a non-empty folder that is not a zsqbench {kind} (no {marker}); "
                        "give a new or empty folder")
    files = listed(p)
    if files is None:
        raise UserError(f"{option} {path}: its {marker} is unreadable, so what the folder holds cannot be told from "
                        "what this tool wrote; give a new or empty folder")
    extra = sorted(f.relative_to(p).as_posix() for f in p.rglob("*")
                   if (f.is_file() or f.is_symlink()) and f.relative_to(p).as_posix() not in files | {marker})
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise UserError(f"{option} {path} holds files this tool did not write ({', '.join(extra[:3])}{more}): the "
                        f"{kind} folder is replaced as a whole, so they would be deleted; move them away or give "
                        "another folder")
    return p
