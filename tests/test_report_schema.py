"""The committed JSON Schema of the Verdict: generated from the model, and real Verdicts validate against it."""

from __future__ import annotations

import json

import jsonschema
import pytest
import verdict_samples as samples

from cbpt_guard.report.schema import SCHEMA_FILE, committed_schema, verdict_schema, verdict_schema_text


def validator() -> jsonschema.Draft202012Validator:
    schema = committed_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_exactly_what_the_model_generates():
    # Regenerate with `python -m cbpt_guard.report.schema` after changing cbpt_guard/verdict.py.
    assert SCHEMA_FILE.read_text(encoding="utf-8") == verdict_schema_text()
    assert committed_schema() == verdict_schema()


@pytest.mark.parametrize("name", sorted(samples.ALL) + ["hostile", "many"])
def test_real_verdicts_validate_against_the_committed_schema(name):
    verdict = {"hostile": samples.hostile, "many": lambda: samples.many_classes(count=500)}.get(
        name, samples.ALL.get(name))()
    validator().validate(json.loads(verdict.to_json()))
    validator().validate(json.loads(verdict.to_json(include_timings=False)))


@pytest.mark.parametrize("breakage", [
    lambda d: d.pop("decision"),
    lambda d: d.update(schema_version=2),
    lambda d: d["decision"].update(action="allow"),
    lambda d: d["checkpoint"].update(surprise=True),
    lambda d: d["detection"]["families"][0].update(histogram=["many"]),
])
def test_the_schema_refuses_what_the_reader_refuses(breakage):
    data = json.loads(samples.backdoored_purified().to_json())
    breakage(data)
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(data)
