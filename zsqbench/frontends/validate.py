"""``zsqbench validate``: which kind of zsqbench file a JSON file is (run record, leaderboard, published baselines),
and its errors against that kind's JSON Schema and rules."""
from __future__ import annotations

import json
from pathlib import Path

from zsqbench.spine.errors import UserError

KINDS = ("run record", "leaderboard", "leaderboard notes", "published baselines")


def detect_kind(obj) -> str | None:
    """The kind a parsed JSON document claims to be, from its content (None: not a zsqbench file)."""
    from zsqbench.leaderboard.collect import looks_like_leaderboard, looks_like_record
    if looks_like_leaderboard(obj):
        return "leaderboard"
    if isinstance(obj, dict) and obj.get("kind") == "zsqbench-published":
        return "published baselines"
    if (isinstance(obj, dict) and isinstance(obj.get("protocol"), str) and "kind" not in obj
            and ({"ci_half_width_target", "rows"} & set(obj))):
        return "leaderboard notes"  # leaderboard build --notes (power targets, notes on rows)
    if looks_like_record(obj) or (isinstance(obj, dict) and {"schema_version", "method", "seed"} <= set(obj)):
        return "run record"  # also a record missing its headline fields: validated as one, so they are named
    return None


def find_files(paths) -> list[tuple[Path, bool]]:
    """(file, named explicitly) for each path; directories give their *.json files, recursively."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [(f, False) for f in sorted(p.rglob("*.json")) if f.is_file() and not f.name.startswith(".")]
        elif p.is_file():
            out.append((p, True))
        else:
            raise UserError(f"no such file or directory: {p}")
    return out


def unreadable(errors: list[str]) -> bool:
    """The errors of a file that is not JSON at all (a truncated or corrupt file): invalid even where files of
    unknown kinds are skipped (a directory), since it may be a record cut short."""
    return bool(errors) and errors[0].startswith("is not JSON")


def validate_file(path: Path) -> tuple[str | None, list[str]]:
    """(kind, errors). A file that is not JSON, or JSON of no known kind, is (None, [why])."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, [f"is not JSON ({type(e).__name__}: {str(e)[:120]})"]
    kind = detect_kind(obj)
    if kind == "leaderboard":
        from zsqbench.leaderboard.build import validate_leaderboard
        return kind, validate_leaderboard(obj)
    if kind == "published baselines":
        from zsqbench.leaderboard.published import semantic_errors
        from zsqbench.record.io import validation_errors
        errors = validation_errors(obj, "published")
        return kind, errors or semantic_errors(obj)
    if kind == "leaderboard notes":
        from zsqbench.record.io import validation_errors
        return kind, validation_errors(obj, "leaderboard-notes")
    if kind == "run record":
        from zsqbench.record.check import is_legacy
        from zsqbench.record.io import record_errors
        errors = record_errors(obj)
        if not errors and is_legacy(obj):
            kind = "run record; legacy schema 1: no content digest, so an edit cannot be detected"
        return kind, errors
    return None, [f"not a {', '.join(KINDS[:-1])} or {KINDS[-1]} file"]
