"""Every renderer accepts any valid Verdict: random text, non-finite numbers and missing stages never crash one."""

from __future__ import annotations

import json

import verdict_samples as samples
from hypothesis import HealthCheck, given, settings, strategies as st

from cbpt_guard.report import render
from cbpt_guard.report.markdown import MAX_BYTES
from cbpt_guard.verdict import Verdict

# Fields whose values are enumerations in the model: left as they are so the Verdict stays valid.
FIXED = {"action", "enforced", "state", "schema_version", "images"}
OPTIONAL_STAGES = ("data", "detection", "purification", "export")
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2))


def _like(value, key: str = ""):
    """A strategy for values shaped like ``value``: same structure, arbitrary leaves."""
    if key in FIXED:
        return st.just(value)
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(0, 10**9)
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, str):
        return TEXT
    if isinstance(value, dict):
        return st.fixed_dictionaries({k: _like(v, k) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return st.tuples(*(_like(v) for v in value))
    return st.just(value)


def _verdicts():
    shapes = [factory().model_dump() for factory in samples.ALL.values()]
    for shape in shapes:  # a few points per loss curve are enough to vary
        if shape["purification"]:
            shape["purification"]["curves"] = {k: v[:6] for k, v in shape["purification"]["curves"].items()}

    @st.composite
    def build(draw):
        data = draw(_like(draw(st.sampled_from(shapes))))
        for stage in OPTIONAL_STAGES:
            if draw(st.booleans()) and draw(st.booleans()):
                data[stage] = None
        return Verdict.model_validate(data)

    return build()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(_verdicts())
def test_every_format_renders_any_valid_verdict(verdict):
    page = render(verdict, "html")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert len(render(verdict, "md").encode("utf-8")) <= MAX_BYTES
    log = json.loads(render(verdict, "sarif"))
    assert log["version"] == "2.1.0"
    assert render(verdict, "json")
