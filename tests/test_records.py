"""The typed run record: committed results.json files load, round-trip and match the published schema."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from clbench.errors import ClbenchError
from clbench.records import (
    RESULTS_SCHEMA_VERSION,
    ExperienceRecord,
    RunProgress,
    RunRecord,
    json_schema,
)

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "results").glob("*.json"))
SCHEMA = Path(__file__).parents[1] / "docs" / "results.schema.json"


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (1 == 1.0, NaN == NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_committed_results_load_and_round_trip(path: Path) -> None:
    data = json.loads(path.read_text())
    record = RunRecord.from_json(data, str(path))
    out = record.to_json()
    if "mechanism" not in data:  # written before the mechanism figures existed: migrated to {}
        assert record.mechanism == {} and out.pop("mechanism") == {}
    assert _same(out, data)
    assert (record.test_time is not None) == (record.scenario.type == "test_time")
    _validate(out, json_schema())


def test_the_published_schema_is_generated_from_the_record() -> None:
    assert json.loads(SCHEMA.read_text()) == json_schema(), \
        "docs/results.schema.json is stale: python -m clbench.records > docs/results.schema.json"


def test_the_schema_rejects_what_the_record_rejects() -> None:
    data = json.loads(FIXTURES[0].read_text())
    for bad in ({**data, "R": "high"}, {**data, "extra": 1}, {**data, "seeds": {"seed": 0}},
                {**data, "cost": {**data["cost"], "optimizer_steps": 1.5}}):
        with pytest.raises(AssertionError):
            _validate(bad, json_schema())


def test_damaged_or_newer_results_get_one_clear_error() -> None:
    data = json.loads(FIXTURES[0].read_text())
    with pytest.raises(ClbenchError, match=r"schema_version 99 is not one this clbench reads \(1..1\)"):
        RunRecord.from_json({**data, "schema_version": 99})
    with pytest.raises(ClbenchError, match=r"results.json.cost.optimizer_steps: expected an integer, got '12'"):
        RunRecord.from_json({**data, "cost": {**data["cost"], "optimizer_steps": "12"}})
    with pytest.raises(ClbenchError, match=r"results.json: unknown field\(s\) extra"):
        RunRecord.from_json({**data, "extra": 1})
    with pytest.raises(ClbenchError, match=r"results.json: missing field 'R'"):
        RunRecord.from_json({k: v for k, v in data.items() if k != "R"})
    with pytest.raises(ClbenchError, match="expected a JSON object, got list"):
        RunRecord.from_json([1, 2])  # type: ignore[arg-type]
    assert RESULTS_SCHEMA_VERSION == data["schema_version"]


def test_progress_survives_a_checkpoint_as_plain_types() -> None:
    p = RunProgress(done=1, R=[[0.5, 0.1]], b=[0.1, 0.1], started_at="t",
                    per_exp=[ExperienceRecord(optimizer_steps=3, train_samples=48, mean_loss=0.25,
                                              method={"kept": 0.5})])
    plain = p.to_checkpoint()
    assert json.loads(json.dumps(plain)) == plain  # nothing but JSON types (weights_only checkpoints)
    assert "domain" not in plain["per_exp"][0]  # fields that do not apply are left out
    assert RunProgress.from_checkpoint(plain) == p


def _validate(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$") -> None:
    """The subset of JSON Schema that json_schema() emits: $ref, anyOf, const, type, properties,
    required, additionalProperties, items."""
    root = root or schema
    if "$ref" in schema:
        return _validate(value, root["$defs"][schema["$ref"].split("/")[-1]], root, path)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return _validate(value, option, root, path)
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: no option matches: {errors}")
    if "const" in schema:
        assert value == schema["const"], path
    if "enum" in schema:
        assert value in schema["enum"], path
    kind = schema.get("type")
    checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
              "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
              "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool)}
    if kind is not None:
        assert checks[kind](value), f"{path}: {value!r} is not {kind}"
    if kind == "object":
        props = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(value), f"{path}: missing {set(schema['required']) - set(value)}"
        for k, v in value.items():
            sub = props.get(k, schema.get("additionalProperties", {}))
            assert sub is not False, f"{path}: unexpected {k}"
            _validate(v, sub, root, f"{path}.{k}")
    if kind == "array":
        for i, v in enumerate(value):
            _validate(v, schema.get("items", {}), root, f"{path}[{i}]")
    return None


def test_the_same_config_gives_the_same_R_as_the_committed_run(tmp_path: Path) -> None:
    """Behaviour did not change: rerunning a committed run's config (written before the typed
    record existed) gives its R and pre-training row, up to float-sum order.

    Exact equality held on the machine that wrote the fixture but not on CI's: another CPU's
    kernels sum in another order, and one test image of 200 (a near tie) flipped (0.95 vs
    0.955). Each cell may therefore differ by at most two test examples (0.01 on 200 per
    task); a behaviour change moves whole cells by far more."""
    from clbench.config import build_run_config
    from clbench.runner import run

    data = json.loads((FIXTURES[0].parent / "split_mnist_naive.json").read_text())
    c = data["config"]
    values: dict[str, Any] = {k: c[k] for k in ("method", "scenario", "model", "seed")}
    for section in ("trainer", "eval", "foundation"):
        values.update({f"{section}.{k}": v for k, v in c[section].items()})
    for section in ("method", "scenario", "model"):
        values.update({f"{section}.{k}": v for k, v in c[f"{section}_options"].items()})
    values.update({"tracking.runs_dir": str(tmp_path), "tracking.mlflow": False, "trainer.progress": False})
    out = run(build_run_config(values))
    got = torch.tensor([*out.R, out.R_pretrain])
    want = torch.tensor([*data["R"], data["R_pretrain"]])
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 0.01 + 1e-9, (got, want)


PROTOCOL_FIXTURES = sorted((Path(__file__).parent / "fixtures" / "protocols").glob("*.json"))


@pytest.mark.parametrize("path", PROTOCOL_FIXTURES, ids=[p.stem for p in PROTOCOL_FIXTURES])
def test_committed_protocol_records_load_and_round_trip(path: Path) -> None:
    from clbench.protocol_records import ProtocolRecord

    data = json.loads(path.read_text())
    record = ProtocolRecord.from_json(data, str(path))
    assert _same(record.to_json(), data)
    assert record.tuning.trials_used == len(record.tuning.trials) and record.evaluation.seeds == [0, 1, 2]
    # a file written before the failure counters, storage and compact results existed still loads
    old = {**data, "tuning": {k: v for k, v in data["tuning"].items() if k not in ("trials_failed", "storage", "study")},
           "evaluation": {k: v for k, v in data["evaluation"].items() if k not in ("results", "acc_mean", "acc_std")}}
    assert ProtocolRecord.from_json(old).tuning.trials_failed == 0
    with pytest.raises(ClbenchError, match=r"protocol.json.tuning.trials\[0\].value: expected a number"):
        bad = {**data, "tuning": {**data["tuning"], "trials": [{**data["tuning"]["trials"][0], "value": "high"}]}}
        ProtocolRecord.from_json(bad)
    with pytest.raises(ClbenchError, match="not a clbench protocol record"):
        ProtocolRecord.from_json({**data, "kind": "other"})


def test_a_board_overwriting_committed_entries_leaves_the_tree_clean(tmp_path: Path) -> None:
    """Entries, pages and configs a board writes never make the commit dirty; code and track
    declarations do."""
    import subprocess

    from clbench.tracking import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    board = tmp_path / "leaderboards" / "t"
    (board / "configs").mkdir(parents=True)
    files = {board / "m.json": "{}", board / "README.md": "x", board / "index.html": "x",
             board / "configs" / "m.yaml": "a: 1", board / "track.yaml": "a: 1", tmp_path / "code.py": "x = 1"}
    for f, text in files.items():
        f.write_text(text)
    git("init", "-q")
    git("-c", "user.email=a@b", "-c", "user.name=a", "add", ".")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "init")
    clean = git_commit(tmp_path)
    assert clean is not None and not clean.endswith("-dirty")
    for f in (board / "m.json", board / "README.md", board / "index.html", board / "configs" / "m.yaml"):
        f.write_text("changed")
    assert git_commit(tmp_path) == clean
    for f in (board / "track.yaml", tmp_path / "code.py"):
        f.write_text("changed: 1")
        assert git_commit(tmp_path) == clean + "-dirty", f
        git("checkout", "--", str(f))
