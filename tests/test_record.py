"""Run-record schema and I/O (zsqbench.record.io) and the config helpers of zsqbench.protocols."""
import copy
import json
import os

import pytest

from zsqbench.protocols import apply_overrides, canonical_hash, deep_merge, load_protocol_file, parse_value
from zsqbench.record.io import load_json, validate_record, validation_errors, write_json_atomic
from zsqbench.spine.errors import UserError

H64 = "0123456789abcdef" * 4


def component(name):
    return {"name": name, "provider": "zsqbench", "config": {}}


def valid_record():
    return {
        "schema_version": 1,
        "status": "ok",
        "diverged": None,
        "method": {"name": "gdfq", "provider": "zsqbench", "synthesizer": component("gdfq-generator"),
                   "distiller": component("kd"), "quantizer": component("minmax-ema")},
        "model": "resnet20",
        "dataset": "fmnist",
        "wbits": 4,
        "abits": 4,
        "seed": 0,
        "protocol": {"name": "smoke", "version": 1, "hash": H64},
        "off_protocol": [],
        "config": {"train": {"steps": 6}, "eval": {"every": 3}},
        "config_hash": H64,
        "teacher": {"source": "embedded", "sha256": H64},
        "fp_top1": 91.5,
        "final_top1": 80.25,
        "best_top1_selected_on_test": 81.0,
        "eval_history": [{"step": 3, "top1": 81.0}, {"step": 6, "top1": 80.25}],
        "eval_samples": 1000,
        "train_metrics": {"ce": 0.5},
        "diagnostics": {},
        "timing": {"total_s": 1.5, "phases_s": {"distill": 1.0}, "mean_step_s": 0.1, "steps": 6},
        "memory": {"peak_rss_mb": 300.0, "peak_cuda_mb": None},
        "device": {"type": "cpu", "name": "cpu", "threads": 2},
        "versions": {"python": "3.12", "torch": "2.x", "zsqbench": "0.1"},
        "plugins": [{"entry_point": "builtin", "distribution": "zsqbench", "version": "0.1", "status": "ok"}],
        "git": {"commit": None, "dirty": None},
        "created": "2025-01-01T00:00:00+00:00",
    }


# --- schema -------------------------------------------------------------------------------------------------

def test_valid_record_has_no_errors():
    assert validation_errors(valid_record()) == []
    validate_record(valid_record())


def test_diverged_record_is_valid():
    r = valid_record()
    r.update(status="diverged", diverged={"phase": "distill", "step": 3, "what": "loss"}, final_top1=None)
    assert validation_errors(r) == []


@pytest.mark.parametrize("key", ["seed", "config_hash", "final_top1", "created", "eval_history"])
def test_missing_required_key(key):
    r = valid_record()
    del r[key]
    errors = validation_errors(r)
    assert len(errors) == 1
    assert errors[0].startswith("(root): ") and f"'{key}' is a required property" in errors[0]
    with pytest.raises(UserError, match=f"invalid run record: .*'{key}' is a required property"):
        validate_record(r)


def test_missing_nested_required_key():
    r = valid_record()
    del r["method"]["distiller"]["config"]
    errors = validation_errors(r)
    assert errors == ["method/distiller: 'config' is a required property"]


@pytest.mark.parametrize("path,value,fragment", [
    (("wbits",), "4", "'4' is not of type 'integer'"),
    (("seed",), 1.5, "1.5 is not of type 'integer'"),
    (("model",), 20, "20 is not of type 'string'"),
    (("off_protocol",), "none", "'none' is not of type 'array'"),
    (("timing", "steps"), "6", "'6' is not of type 'integer'"),
    (("eval_history", 1, "top1"), "80", "'80' is not of type 'number'"),
])
def test_wrong_type(path, value, fragment):
    r = valid_record()
    node = r
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    errors = validation_errors(r)
    assert len(errors) == 1, errors
    where, msg = errors[0].split(": ", 1)
    assert where == "/".join(map(str, path)) and fragment in msg


@pytest.mark.parametrize("key,value", [("final_top1", 100.5), ("fp_top1", -0.1), ("best_top1_selected_on_test", 250),
                                       ("final_top1", -3)])
def test_top1_out_of_range(key, value):
    r = valid_record()
    r[key] = value
    errors = validation_errors(r)
    assert len(errors) == 1 and errors[0].startswith(f"{key}: ")
    assert "maximum of 100" in errors[0] or "minimum of 0" in errors[0]


@pytest.mark.parametrize("key,value", [("final_top1", 0), ("final_top1", 100), ("fp_top1", 100.0)])
def test_top1_bounds_inclusive(key, value):
    r = valid_record()
    r[key] = value
    assert validation_errors(r) == []


@pytest.mark.parametrize("mutate,fragment", [
    (lambda r: r.update(schema_version=3), "schema_version"),
    (lambda r: r.update(schema_version=2), "'digest' is a required property"),  # version 2 carries its digest
    (lambda r: r.update(status="crashed"), "status"),
    (lambda r: r.update(extra_field=1), "Additional properties are not allowed"),
    (lambda r: r.update(wbits=0), "wbits"),
    (lambda r: r.update(config_hash="abc"), "config_hash"),
    (lambda r: r["protocol"].update(hash=H64.upper()), "protocol/hash"),
    (lambda r: r.update(eval_samples=0), "eval_samples"),
    (lambda r: r.update(diverged={"phase": "distill"}), "diverged"),
])
def test_other_constraints(mutate, fragment):
    r = valid_record()
    mutate(r)
    errors = validation_errors(r)
    assert errors and any(fragment in e for e in errors), errors


def test_several_errors_reported_and_sorted():
    r = valid_record()
    del r["seed"]
    r["wbits"] = "x"
    r["final_top1"] = 101
    errors = validation_errors(r)
    assert len(errors) == 3
    assert errors[0].startswith("(root)")  # root-level errors first (empty path sorts first)
    assert {e.split(":")[0] for e in errors} == {"(root)", "wbits", "final_top1"}


# --- atomic JSON writes -------------------------------------------------------------------------------------

def test_write_json_atomic_writes_valid_json_and_no_temp(tmp_path):
    path = tmp_path / "sub" / "dir" / "record.json"  # parents are created
    obj = {"b": 1, "a": [1.5, None, "x"], "nested": {"z": True}}
    write_json_atomic(path, obj)
    assert json.loads(path.read_text()) == obj
    assert load_json(path) == obj
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]
    # keys sorted, indented: the file is stable for diffs
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"') < text.index('"nested"') and "\n  " in text


def test_write_json_atomic_replaces_existing(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"v": 1})
    write_json_atomic(path, {"v": 2})
    assert load_json(path) == {"v": 2}
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_json_atomic_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})  # not serialisable, fails midway
    assert load_json(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_load_json_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="is not JSON"):
        load_json(bad)


def test_valid_record_roundtrips_through_disk(tmp_path):
    path = tmp_path / "rec.json"
    write_json_atomic(path, valid_record())
    assert validation_errors(load_json(path)) == []


# --- overrides ----------------------------------------------------------------------------------------------

BASE = {"train": {"steps": 100, "lr": 0.1, "milestones": [0.5], "optimizer": "sgd"},
        "eval": {"every": 10, "limit": None},
        "distiller": {"temperature": 20.0, "alpha": 1.0},
        "synthesizer": {"lr": 0.01}}


def test_override_int_and_float():
    out = apply_overrides(BASE, ["train.steps=5", "distiller.temperature=4.5"])
    assert out["train"]["steps"] == 5 and type(out["train"]["steps"]) is int
    assert out["distiller"]["temperature"] == 4.5 and type(out["distiller"]["temperature"]) is float
    # the rest is untouched and the input not modified
    assert out["train"]["lr"] == 0.1 and out["distiller"]["alpha"] == 1.0
    assert BASE["train"]["steps"] == 100 and BASE["distiller"]["temperature"] == 20.0


def test_override_lists_bools_null_strings():
    out = apply_overrides(BASE, ["train.milestones=[0.3, 0.6]", "eval.limit=null", "train.optimizer=adam",
                                 "synthesizer.init=gaussian noise", "quantizer.range_rule=ema-official",
                                 "distiller.use_ce=false", "synthesizer.shape=[1,2,[3]]"])
    assert out["train"]["milestones"] == [0.3, 0.6]
    assert out["eval"]["limit"] is None
    assert out["train"]["optimizer"] == "adam"
    assert out["synthesizer"]["init"] == "gaussian noise"
    assert out["quantizer"] == {"range_rule": "ema-official"}  # a component section may be created
    assert out["distiller"]["use_ce"] is False
    assert out["synthesizer"]["shape"] == [1, 2, [3]]


def test_override_value_may_contain_equals_and_spaces_around_key():
    out = apply_overrides(BASE, ["synthesizer.expr=a=b", " train.steps =7"])
    assert out["synthesizer"]["expr"] == "a=b"
    assert out["train"]["steps"] == 7


def test_override_applied_in_order():
    assert apply_overrides(BASE, ["train.steps=5", "train.steps=9"])["train"]["steps"] == 9


def test_component_sections_accept_new_keys_nested():
    out = apply_overrides(BASE, ["distiller.weights.kl=2"])
    assert out["distiller"]["weights"] == {"kl": 2}


@pytest.mark.parametrize("item,match", [
    ("steps=5", "must start with train"),
    ("model.steps=5", "must start with train"),
    ("train.stepz=5", "not a known setting"),
    ("eval.unknown=1", "not a known setting"),
    ("train.steps", "expects KEY=VALUE"),
    ("", "expects KEY=VALUE"),
    ("train.steps.x=1", "is not a section"),
])
def test_override_errors(item, match):
    with pytest.raises(UserError, match=match):
        apply_overrides(BASE, [item])


def test_unknown_train_key_lists_known_ones():
    with pytest.raises(UserError) as e:
        apply_overrides(BASE, ["train.stepz=5"])
    assert "train has: steps, warmup_steps, batch_size, optimizer, lr, momentum" in str(e.value)


def test_parse_value():
    assert parse_value("5") == 5 and parse_value("4.5") == 4.5 and parse_value("1e-3") == 1e-3
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2] and parse_value('{"a": 1}') == {"a": 1}
    assert parse_value("adam") == "adam" and parse_value("") == "" and parse_value('"5"') == "5"


# --- hashing and merging ------------------------------------------------------------------------------------

def test_canonical_hash_key_order_independent():
    a = {"train": {"steps": 5, "lr": 0.1}, "eval": {"every": 1}, "list": [1, {"y": 2, "x": 1}]}
    b = {"list": [1, {"x": 1, "y": 2}], "eval": {"every": 1}, "train": {"lr": 0.1, "steps": 5}}
    assert canonical_hash(a) == canonical_hash(b)
    h = canonical_hash(a)
    assert len(h) == 64 and all(c in "0123456789abcdef" for c in h)


def test_canonical_hash_sensitive_to_values_and_list_order():
    a = {"train": {"steps": 5}}
    assert canonical_hash(a) != canonical_hash({"train": {"steps": 6}})
    assert canonical_hash(a) != canonical_hash({"train": {"steps": "5"}})
    assert canonical_hash([1, 2]) != canonical_hash([2, 1])
    assert canonical_hash(a) == canonical_hash(copy.deepcopy(a))


def test_canonical_hash_is_sha256_of_compact_sorted_json():
    import hashlib
    obj = {"b": [1, 2], "a": "x"}
    assert canonical_hash(obj) == hashlib.sha256(b'{"a":"x","b":[1,2]}').hexdigest()


def test_deep_merge():
    base = {"train": {"steps": 1, "lr": 0.1}, "eval": {"every": 2}}
    over = {"train": {"steps": 5}, "distiller": {"alpha": 2}}
    out = deep_merge(base, over)
    assert out == {"train": {"steps": 5, "lr": 0.1}, "eval": {"every": 2}, "distiller": {"alpha": 2}}
    assert base == {"train": {"steps": 1, "lr": 0.1}, "eval": {"every": 2}}
    out["distiller"]["alpha"] = 3
    assert over["distiller"]["alpha"] == 2  # no aliasing


def test_protocol_file_hash_ignores_key_order_and_stored_hash(tmp_path):
    proto = {"name": "p", "version": 1, "description": "d", "models": ["resnet20@fmnist"], "bits": [[4, 4]],
             "seeds": [0], "train": {"steps": 1}, "eval": {"every": 1}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(proto))
    b.write_text(json.dumps({**dict(reversed(list(proto.items()))), "hash": "stale"}))
    pa, pb = load_protocol_file(a), load_protocol_file(b)
    computed = {k: v for k, v in proto.items() if k not in ("description", "notes", "seeds", "resources")}
    assert pa["hash"] == pb["hash"] == canonical_hash(computed)
    # prose and the seed list stay outside the hash: a corrected note or seeds 3-4 added keep every job done
    for key, value in (("description", "other words"), ("notes", "a corrected note"), ("seeds", [0, 1, 2, 3, 4])):
        b.write_text(json.dumps({**proto, key: value}))
        assert load_protocol_file(b)["hash"] == pa["hash"], key
    b.write_text(json.dumps({**proto, "train": {"steps": 2}}))
    assert load_protocol_file(b)["hash"] != pa["hash"]
    del proto["seeds"]
    a.write_text(json.dumps(proto))
    with pytest.raises(UserError, match="lacks seeds"):
        load_protocol_file(a)


def test_override_of_a_setting_the_protocol_leaves_out():
    """A protocol may leave out a setting that has a default (momentum, average_from, eval.split); --set still names
    it, because the keys are checked against the settings models, not against the protocol file."""
    out = apply_overrides(BASE, ["train.momentum=0.5", "train.average_from=0.5", "eval.split=dev"])
    assert (out["train"]["momentum"], out["train"]["average_from"], out["eval"]["split"]) == (0.5, 0.5, "dev")
