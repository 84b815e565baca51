"""A run record's content digest and the rules its numbers obey beyond the JSON Schema.

* **Digest.** A record of schema version 2 carries ``digest``: the sha256 of its canonical JSON (sorted keys, no
  whitespace, every field but ``digest`` itself: results, configuration and provenance), written when the run
  creates it. A hand edit that does not recompute it fails ``zsqbench validate`` and keeps the record out of
  leaderboards and comparisons. It is tamper-*evidence* against edits and corruption, not a signature: anyone can
  recompute a sha256. A version-2 record without a digest is invalid; a version-1 record (made before digests
  existed) is valid but reported as legacy (nothing shows whether it was edited).
* **Consistency.** ``final_top1`` is the last evaluation of an ``ok`` run (null for a diverged one);
  ``best_top1_selected_on_test`` is the best evaluation; evaluations are in step order, within the run's steps, the
  last one at the run's last step; the steps timed are the configured steps; the averaged window of the final
  evaluation is the one ``train.average_from`` gives for those steps; ``eval_samples`` is within ``eval.limit``.
* **Finite numbers** everywhere outside the free-form ``diagnostics`` and ``train_metrics`` (see
  :func:`zsqbench.record.io.nonfinite_errors`).
"""
from __future__ import annotations

import hashlib
import json

DIGEST_FIELD = "digest"
SCHEMA_VERSION = 2


def record_digest(record: dict) -> str:
    """sha256 over the record's canonical JSON without its ``digest`` field (the record as read back from its file:
    what is hashed is what is stored)."""
    body = {k: v for k, v in record.items() if k != DIGEST_FIELD}
    body = json.loads(json.dumps(body))  # tuples -> lists, int keys -> str: the form the file holds
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(record: dict) -> dict:
    """The record with its schema version set to the current one and its digest (re)computed (in place)."""
    record["schema_version"] = SCHEMA_VERSION
    record.pop(DIGEST_FIELD, None)
    record[DIGEST_FIELD] = record_digest(record)
    return record


def is_legacy(record: dict) -> bool:
    return record.get("schema_version") == 1


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def averaged_steps(steps: int, average_from) -> int:
    """How many steps the final student averages (as loop.WeightAverage counts them): 0 when averaging is off."""
    if average_from is None or steps <= 0:
        return 0
    return steps - min(steps - 1, int(round(average_from * steps)))


def consistency_errors(rec: dict) -> list[str]:
    """The rules across a schema-valid record's fields (see the module docstring)."""
    errors = []
    history = rec["eval_history"]
    tops = [h["top1"] for h in history]
    train = rec["config"].get("train") or {}
    evalc = rec["config"].get("eval") or {}
    steps = train.get("steps")
    if rec["status"] == "ok":
        if rec.get("diverged") is not None:
            errors.append("diverged: set on a run whose status is ok")
        if not history:
            errors.append("eval_history: empty on a run whose status is ok (its final top-1 comes from somewhere)")
        elif rec["final_top1"] is None or not _close(rec["final_top1"], tops[-1]):
            errors.append(f"final_top1: {rec['final_top1']} is not the last evaluation ({tops[-1]} at step "
                          f"{history[-1]['step']})")
    else:
        if rec["final_top1"] is not None:
            errors.append(f"final_top1: {rec['final_top1']} on a diverged run (must be null)")
        if rec.get("diverged") is None:
            errors.append("diverged: missing on a run whose status is diverged")
    best = rec["best_top1_selected_on_test"]
    if tops and (best is None or not _close(best, max(tops))):
        errors.append(f"best_top1_selected_on_test: {best} is not the best evaluation ({max(tops)})")
    if not tops and best is not None:
        errors.append(f"best_top1_selected_on_test: {best} without any evaluation")
    marks = [h["step"] for h in history]
    if any(b <= a for a, b in zip(marks, marks[1:])):
        errors.append(f"eval_history: steps {marks} are not in increasing order")
    if isinstance(steps, int) and not isinstance(steps, bool):
        if any(not 0 <= s <= steps for s in marks):
            errors.append(f"eval_history: steps {marks} outside the run's 0..{steps}")
        if rec["status"] == "ok":
            if marks and marks[-1] != steps:
                errors.append(f"eval_history: the last evaluation is at step {marks[-1]}, not at the run's last "
                              f"step {steps}")
            if rec["timing"]["steps"] != steps:
                errors.append(f"timing/steps: {rec['timing']['steps']} steps timed, but train.steps is {steps}")
            if history:
                want = averaged_steps(steps, train.get("average_from"))
                got = history[-1].get("averaged_steps", 0)
                if got != want:
                    errors.append(f"eval_history: the final student averages {got} steps, but train.average_from "
                                  f"= {train.get('average_from')} over {steps} steps gives {want}")
    limit = evalc.get("limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and rec["eval_samples"] > limit:
        errors.append(f"eval_samples: {rec['eval_samples']} images, above eval.limit {limit}")
    return errors


def digest_errors(rec: dict) -> list[str]:
    if rec.get("schema_version") == SCHEMA_VERSION:
        have = rec.get(DIGEST_FIELD)
        if not have:
            return ["digest: missing (a record of schema version 2 carries the digest of its content)"]
        if have != record_digest(rec):
            return ["digest: the content does not match the digest written when the run made it (edited by hand "
                    "or corrupted): re-run it"]
    return []
