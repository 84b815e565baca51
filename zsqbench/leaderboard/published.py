"""Published baselines: the papers' top-1 figures (``baselines/published.json``), validated on load.

``load_published()`` checks the file against ``zsqbench/record/schema/published.schema.json`` (syntax), then the
rules a schema cannot say (semantics): no two entries for the same (method, model, dataset, wbits, abits, source),
a model/dataset pair zsqbench knows, and ``fp_top1 >= top1`` unless the entry carries the flag ``above_fp``. Any
failure is a :class:`~zsqbench.spine.errors.UserError` with one line naming the entry and the problem.

The published figures are the papers' best epoch selected on the test set: compare them with a record's
``best_top1_selected_on_test``, not with its headline ``final_top1``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from zsqbench.record.io import validation_errors
from zsqbench.spine.errors import UserError

SCHEMA = "published"
# baselines/ sits beside the package in the source tree; an installed wheel does not carry it.
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "baselines" / "published.json"
MODEL_DATASETS = {"resnet20": {"cifar10", "cifar100"}, "resnet18": {"imagenet"},
                  "mobilenetv1": {"imagenet"}, "mobilenetv2": {"imagenet"}}
MAX_ERRORS = 3  # shown in the one-line message; the rest are counted

_cache: dict[tuple[str, int, int], dict] = {}


def source_key(entry: dict) -> str:
    """``reported_by:table`` or ``reported_by:README`` — one published table."""
    src = entry["source"]
    return f"{src['reported_by']}:{src['table'] if 'table' in src else 'README'}"


def entry_key(entry: dict) -> tuple:
    return (entry["method"], entry["model"], entry["dataset"], entry["wbits"], entry["abits"], source_key(entry))


def _describe(i: int, e: dict) -> str:
    return (f"entries/{i} ({e['method']} {e['model']}@{e['dataset']} W{e['wbits']}A{e['abits']}, "
            f"{source_key(e)})")


def semantic_errors(doc: dict) -> list[str]:
    """Problems a JSON Schema cannot express; ``doc`` must already be schema-valid."""
    errors: list[str] = []
    seen: dict[tuple, int] = {}
    for i, e in enumerate(doc["entries"]):
        where = _describe(i, e)
        key = entry_key(e)
        if key in seen:
            errors.append(f"{where}: duplicate of entries/{seen[key]}")
        else:
            seen[key] = i
        if not 0 <= e["top1"] <= 100:
            errors.append(f"{where}: top1 {e['top1']} is outside [0, 100]")
        if e["dataset"] not in MODEL_DATASETS[e["model"]]:
            errors.append(f"{where}: zsqbench has no {e['model']}@{e['dataset']} teacher")
        fp = e["fp_top1"]
        if fp is not None and e["top1"] > fp and "above_fp" not in e.get("flags", []):
            errors.append(f"{where}: top1 {e['top1']} exceeds fp_top1 {fp} (flag it above_fp if published so)")
    return errors


def validate_published(doc: object, path: str | Path = "published.json") -> dict:
    """Raise UserError (one line) unless ``doc`` is a valid published-baselines document; return it."""
    errors = validation_errors(doc, SCHEMA) if isinstance(doc, dict) else ["(root): not a JSON object"]
    if not errors:
        errors = semantic_errors(doc)
    if errors:
        more = f" (+{len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        raise UserError(f"invalid published baselines {path}: " + "; ".join(errors[:MAX_ERRORS]) + more)
    return doc


def load_published_document(path: str | Path | None = None) -> dict:
    """The whole validated document (``notes`` and ``entries``); a fresh copy on every call."""
    p = Path(path).expanduser() if path is not None else DEFAULT_PATH
    try:
        st = p.stat()
    except OSError:
        hint = ("it ships with the zsqbench source tree, not the installed package: run from a checkout or pass "
                "its path" if path is None else "check the path")
        raise UserError(f"published baselines not found: {p} ({hint})") from None
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _cache:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"cannot read published baselines {p}: {e.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"published baselines {p} is not JSON: {e}") from None
        _cache[key] = validate_published(doc, p)
    return copy.deepcopy(_cache[key])


def load_published(path: str | Path | None = None) -> list[dict]:
    """The validated entries of ``baselines/published.json`` (or ``path``)."""
    return load_published_document(path)["entries"]


def published_rows(method: str, model: str, dataset: str | None = None, wbits: int | None = None,
                   abits: int | None = None, path: str | Path | None = None) -> list[dict]:
    """Published entries for one setting, one per source (possibly none).

    ``model`` may be ``arch@dataset`` (then ``dataset`` may be left out); ``abits`` defaults to ``wbits``;
    ``wbits=None`` returns every bit-width.
    """
    if "@" in model:
        model, at = model.split("@", 1)
        if dataset is not None and dataset != at:
            raise UserError(f"model {model}@{at} and dataset {dataset} disagree")
        dataset = at
    if abits is None:
        abits = wbits
    return [e for e in load_published(path)
            if e["method"] == method and e["model"] == model
            and (dataset is None or e["dataset"] == dataset)
            and (wbits is None or e["wbits"] == wbits) and (abits is None or e["abits"] == abits)]
