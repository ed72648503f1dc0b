"""The manifest and --classes parsers: clear errors for bad input, only typed errors under fuzzing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from cbpt_guard.errors import ClassListError, ManifestError
from cbpt_guard.intake.manifest import DEFAULT_TEMPLATES, parse_classes_text, parse_manifest_text


def test_full_manifest_parses():
    text = json.dumps({"manifest_version": 1, "classes": ["cat", "dog"], "templates": ["a {} photo."],
                       "description": "pets"})
    manifest = parse_manifest_text(text, "m.json")
    assert manifest.classes == ("cat", "dog")
    assert manifest.templates == ("a {} photo.",)
    assert manifest.source == "m.json"


def test_templates_default_when_absent():
    manifest = parse_manifest_text(json.dumps({"manifest_version": 1, "classes": ["cat"]}), "m.json")
    assert manifest.templates == DEFAULT_TEMPLATES


@pytest.mark.parametrize(
    "document, error, message",
    [
        ({"manifest_version": 1, "classes": []}, ClassListError, "empty"),
        ({"manifest_version": 1}, ClassListError, "must be a list"),
        ({"manifest_version": 2, "classes": ["a"]}, ManifestError, "manifest_version"),
        ({"manifest_version": 1, "classes": ["a"], "extra": 1}, ManifestError, "unknown manifest key"),
        ({"manifest_version": 1, "classes": ["a", "a"]}, ClassListError, "appears twice"),
        ({"manifest_version": 1, "classes": ["  "]}, ClassListError, "non-blank"),
        ({"manifest_version": 1, "classes": ["a\nb"]}, ClassListError, "spans lines"),
        ({"manifest_version": 1, "classes": [3]}, ClassListError, "non-blank string"),
        ({"manifest_version": 1, "classes": ["a"], "templates": ["no field"]}, ManifestError, "exactly one"),
        ({"manifest_version": 1, "classes": ["a"], "templates": ["{0} {}"]}, ManifestError, "exactly one"),
        ({"manifest_version": 1, "classes": ["a"], "templates": ["{"]}, ManifestError, "not a valid format"),
        ({"manifest_version": 1, "classes": ["a"], "templates": ["{x.__class__}"]}, ManifestError, "exactly one"),
        ([1, 2], ManifestError, "JSON object"),
    ],
)
def test_bad_manifests_are_named(document, error, message):
    with pytest.raises(error, match=message):
        parse_manifest_text(json.dumps(document), "m.json")


def test_classes_text_accepts_lines_lists_and_manifests():
    assert parse_classes_text("# animals\ncat\n\n dog \n", "c.txt") == ("cat", "dog")
    assert parse_classes_text('["cat", "dog"]', "c.json") == ("cat", "dog")
    assert parse_classes_text('{"manifest_version": 1, "classes": ["cat"]}', "m.json") == ("cat",)


def test_deeply_nested_json_is_a_typed_error():
    with pytest.raises(ClassListError):
        parse_classes_text("[" * 100_000, "deep.json")


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_class_text_raises_only_typed_errors(text):
    try:
        classes = parse_classes_text(text, "fuzz")
    except (ClassListError, ManifestError):
        return
    assert classes and all(isinstance(name, str) and name.strip() for name in classes)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=16,
)


@settings(max_examples=2000, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "manifest_version": st.integers(0, 2) | _values,
            "classes": st.lists(st.text(max_size=12), max_size=5) | _values,
            "templates": st.lists(st.sampled_from(["a {}.", "{}", "{0}", "{", "}", "x"]) | st.text(max_size=6),
                                  max_size=3) | _values,
            "description": _values,
            "other": _values,
        },
    )
)
def test_fuzzed_manifests_raise_only_typed_errors(document):
    try:
        parse_manifest_text(json.dumps(document), "fuzz")
    except (ClassListError, ManifestError):
        pass
