"""Find and load run records and leaderboards.

A path is a file or a directory. Directories are searched recursively for ``*.json`` (a sweep directory holds
``<jobdir>/record.json`` + ``<jobdir>/log.txt``): JSON that does not look like a run record (job specs, caches,
leaderboards) is skipped silently; JSON that looks like one but fails the schema is reported, one line each.
A file named explicitly must be a run record or a leaderboard.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from zsqbench.record.io import load_json, record_errors
from zsqbench.spine.errors import UserError

LEADERBOARD_KIND = "zsqbench-leaderboard"


@dataclass
class Collected:
    records: list[tuple[str, dict]] = field(default_factory=list)       # (path, record)
    leaderboards: list[tuple[str, dict]] = field(default_factory=list)  # (path, leaderboard)
    errors: list[str] = field(default_factory=list)                     # one line per bad file


def looks_like_record(obj) -> bool:
    return isinstance(obj, dict) and "final_top1" in obj and "schema_version" in obj and "protocol" in obj


def looks_like_leaderboard(obj) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == LEADERBOARD_KIND


def _first_error(errors: list[str]) -> str:
    return errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")


def collect(paths, *, allow_leaderboards: bool = False) -> Collected:
    out = Collected()
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*.json") if f.is_file() and not f.name.startswith("."))
            explicit = False
        elif p.is_file():
            files, explicit = [p], True
        else:
            raise UserError(f"no such file or directory: {p}")
        for f in files:
            key = f.resolve()
            if key in seen:
                continue
            seen.add(key)
            if explicit:
                obj = load_json(f)  # unreadable / not JSON -> UserError naming the file
            else:
                try:
                    obj = json.loads(f.read_text())
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                    out.errors.append(f"{f}: not readable JSON ({type(e).__name__})")
                    continue
            if looks_like_record(obj):
                errors = record_errors(obj)  # schema, finite numbers, consistency, content digest
                if errors:
                    out.errors.append(f"{f}: invalid run record: {_first_error(errors)}")
                else:
                    out.records.append((str(f), obj))
            elif looks_like_leaderboard(obj) and explicit:
                if not allow_leaderboards:
                    raise UserError(f"{f} is a leaderboard, not a run record; give the records it was built from")
                out.leaderboards.append((str(f), obj))
            elif explicit:
                raise UserError(f"{f} is neither a run record nor a zsqbench leaderboard")
    return out


def require_clean(c: Collected, paths) -> None:
    """Refuse invalid records (one line naming them) and an empty result."""
    if c.errors:
        raise UserError(f"{len(c.errors)} invalid file(s): " + "; ".join(c.errors[:5])
                        + (" …" if len(c.errors) > 5 else ""))
    if not c.records and not c.leaderboards:
        raise UserError("no run records found in " + ", ".join(map(str, paths)))
