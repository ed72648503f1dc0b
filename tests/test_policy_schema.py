"""The policy schema and its safe loader: ready policies load, every malformed file is a PolicyError
that names the file, the line and the key, and nothing else ever escapes (fuzzed)."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from cbpt_guard.errors import ExitCode, UsageError
from cbpt_guard.policy import (
    BackdoorAction,
    DataTier,
    FailClosedAction,
    Mode,
    PolicyError,
    TriggerFamily,
    load_policy,
    load_policy_text,
    ready_policy_names,
    resolve_policy,
)
from cbpt_guard.policy.load import MAX_DEPTH, MAX_NODES, MAX_POLICY_BYTES

SOURCE = "policies/x.yaml"
DIGEST = "ab" * 32
MINIMAL = "version: 1\nmode: enforce\ndetection:\n  score_threshold: 0.5\n"


def full_document() -> dict:
    """The strict policy as plain data, with one waiver so that waiver keys are covered too."""
    document = resolve_policy("strict").policy.model_dump(mode="json")
    document["waivers"] = [{"id": "W-1", "scope": DIGEST, "reason": "reviewed", "owner": "alice",
                            "expires": "2030-01-01"}]
    return document


def problems_of(text: str) -> list[tuple[int | None, str | None, str]]:
    """Load ``text`` and return its problems as (line, key, message); fail if it loads."""
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, SOURCE)
    return [(p.line, p.key, p.message) for p in caught.value.problems]


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line of ``text`` that contains ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def mapping_paths(node, path=()):
    """Every path in ``node`` that leads to a mapping."""
    if isinstance(node, dict):
        yield path
        for key, value in node.items():
            yield from mapping_paths(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from mapping_paths(value, path + (index,))


def leaf_paths(node, path=()):
    """Every path in ``node`` that leads to a scalar or a list of scalars."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaf_paths(value, path + (key,))
    elif isinstance(node, list) and node and isinstance(node[0], dict):
        for index, value in enumerate(node):
            yield from leaf_paths(value, path + (index,))
    else:
        yield path


def dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def at(document, path):
    for part in path:
        document = document[part]
    return document


# --- ready policies ---------------------------------------------------------------------------

def test_ready_policies_are_strict_balanced_and_permissive():
    assert {"strict", "balanced", "permissive"} <= set(ready_policy_names())


@pytest.mark.parametrize("name", ["strict", "balanced", "permissive"])
def test_ready_policy_loads_with_its_digest_and_name(name):
    loaded = resolve_policy(name)
    assert loaded.name == name
    with open(loaded.source, "rb") as handle:
        assert loaded.sha256 == hashlib.sha256(handle.read()).hexdigest()
    assert loaded.policy.version == 1
    assert loaded.policy.evidence.unsafe_serialisation_blocks is True


def test_strict_enforces_purification_with_tight_bars_and_blocks_on_failure():
    policy = resolve_policy("strict").policy
    assert policy.mode is Mode.ENFORCE
    assert policy.evidence.on_backdoor is BackdoorAction.PURIFY
    assert policy.evidence.on_stage_failure is FailClosedAction.BLOCK
    assert policy.verification.max_asr <= 0.02 and policy.verification.max_ca_drop <= 0.02
    assert set(policy.detection.families) == set(TriggerFamily)


def test_balanced_bars_are_looser_than_strict_and_permissive_only_warns():
    strict, balanced, permissive = (resolve_policy(n).policy for n in ("strict", "balanced", "permissive"))
    assert balanced.mode is Mode.ENFORCE and balanced.evidence.on_backdoor is BackdoorAction.PURIFY
    assert balanced.verification.max_asr > strict.verification.max_asr
    assert permissive.mode is Mode.WARN and permissive.evidence.on_backdoor is BackdoorAction.PURIFY


def test_every_ready_policy_setting_is_commented():
    for name in ("strict", "balanced", "permissive"):
        with open(resolve_policy(name).source, encoding="utf-8") as handle:
            text = handle.read()
        assert text.count("#") >= 25, name


# --- defaults and conveniences ----------------------------------------------------------------

def test_minimal_policy_fills_fail_closed_defaults():
    policy = load_policy_text(MINIMAL, SOURCE).policy
    assert policy.evidence.on_required_skipped is FailClosedAction.INCONCLUSIVE
    assert policy.evidence.on_stage_failure is FailClosedAction.INCONCLUSIVE
    assert policy.evidence.unsafe_serialisation_blocks is True
    assert policy.data.tier is DataTier.ZERO_DATA
    assert policy.waivers == ()


def test_exponent_floats_are_numbers_and_digests_are_lower_cased():
    text = MINIMAL + f"export:\n  parity_tolerance: 1e-4\nwaivers:\n  - id: W-1\n    scope: {'AB' * 32}\n" \
                     "    reason: r\n    owner: o\n    expires: 2030-01-01\n"
    policy = load_policy_text(text, SOURCE).policy
    assert policy.export.parity_tolerance == pytest.approx(1e-4)
    assert policy.waivers[0].scope == DIGEST


def test_expired_waiver_is_not_a_load_error():
    text = MINIMAL + f"waivers:\n  - {{id: old, scope: '{DIGEST}', reason: r, owner: o, expires: 2001-01-01}}\n"
    waiver = load_policy_text(text, SOURCE).policy.waivers[0]
    assert waiver.is_expired(dt.date(2001, 1, 2)) and not waiver.is_expired(dt.date(2001, 1, 1))


def test_builtin_calibration_names_no_file():
    policy = load_policy_text("version: 1\nmode: warn\ndetection:\n  calibration: builtin\n", "p.yaml")
    assert policy.calibration_path is None


def test_calibration_path_is_relative_to_the_policy_file(tmp_path):
    path = tmp_path / "team" / "p.yaml"
    path.parent.mkdir()
    path.write_text("version: 1\nmode: warn\ndetection:\n  calibration: cal/vit.json\n")
    assert load_policy(path).calibration_path == tmp_path / "team" / "cal" / "vit.json"


def test_policy_error_is_a_usage_error_with_exit_code_4():
    with pytest.raises(UsageError) as caught:
        load_policy_text("version: 2\n", SOURCE)
    assert caught.value.exit_code is ExitCode.USAGE


# --- every malformed case names file, line and key --------------------------------------------

@pytest.mark.parametrize("path", list(mapping_paths(full_document())), ids=dotted)
def test_unknown_key_at_every_level_names_its_line_and_path(path):
    document = full_document()
    at(document, path)["bogus_key"] = 1
    text = yaml.safe_dump(document, sort_keys=False)
    expected_key = dotted(path + ("bogus_key",))
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, SOURCE)
    assert str(caught.value).startswith(f"{SOURCE}:{line_of(text, 'bogus_key')}: {expected_key}: unknown key")


@pytest.mark.parametrize("path", list(leaf_paths(full_document())), ids=dotted)
def test_wrong_type_at_every_setting_names_its_line_and_path(path):
    document = full_document()
    at(document, path[:-1])[path[-1]] = {"nested": True}  # no setting is a mapping
    text = yaml.safe_dump(document, sort_keys=False)
    found = problems_of(text)
    expected_line = line_of(text, "nested: true") - 1  # the key sits on the line above its value
    assert any(line == expected_line and key == dotted(path) for line, key, _ in found), found


@pytest.mark.parametrize(("snippet", "key", "fragment"), [
    ("detection:\n  budget:\n    steps: many\n", "detection.budget.steps", "valid integer"),
    ("detection:\n  budget:\n    steps: 3.5\n", "detection.budget.steps", "valid integer"),
    ("detection:\n  budget:\n    steps: true\n", "detection.budget.steps", "valid integer"),
    ("detection:\n  budget:\n    steps: 0\n", "detection.budget.steps", "greater than or equal to 1"),
    ("detection:\n  families: [patch, patch]\n", "detection.families", "twice"),
    ("detection:\n  families: []\n", "detection.families", "at least 1"),
    ("detection:\n  score_threshold: .nan\n", "detection.score_threshold", "finite"),
    ("detection:\n  score_threshold: '0.5'\n", "detection.score_threshold", "valid number"),
    ("detection:\n  score_threshold: 0.5\n  calibration: c.json\n", "detection", "exactly one"),
    ("detection:\n  budget: {steps: 3}\n", "detection", "exactly one"),
    ("mode: loud\n", "mode", "'enforce', 'warn' or 'dry-run'"),
    ("data:\n  tier: all\n", "data.tier", "'zero-data', 'unlabelled' or 'few-shot'"),
    ("evidence:\n  on_backdoor: ignore\n", "evidence.on_backdoor", "'purify' or 'block'"),
    ("evidence:\n  on_stage_failure: pass\n", "evidence.on_stage_failure", "'inconclusive' or 'block'"),
    ("evidence:\n  unsafe_serialisation_blocks: 1\n", "evidence.unsafe_serialisation_blocks", "valid boolean"),
    ("verification:\n  max_asr: 2\n", "verification.max_asr", "less than or equal to 1"),
    ("purification:\n  loss_weights:\n    l_bd: -1\n", "purification.loss_weights.l_bd", "greater than or equal"),
    ("waivers: {id: a}\n", "waivers", "list"),
    ("description: 12\n", "description", "valid string"),
])
def test_bad_value_is_reported_at_its_key(snippet, key, fragment):
    base = {"version": 1, "mode": "enforce", "detection": {"score_threshold": 0.5}}
    override = yaml.safe_load(snippet)
    merged = copy.deepcopy(base)
    for name, value in override.items():
        merged[name] = value
    text = yaml.safe_dump(merged, sort_keys=False)
    found = problems_of(text)
    leaf = key.split(".")[-1].split("[")[0]
    assert any(k == key and fragment in message and line == line_of(text, f"{leaf}:")
               for line, k, message in found), found


def test_bad_list_item_is_reported_at_its_own_line():
    text = "version: 1\nmode: warn\ndetection:\n  score_threshold: 0.5\n  families:\n    - patch\n    - blur\n"
    assert problems_of(text) == [(7, "detection.families[1]", "Input should be 'patch', 'additive' or 'warp'")]


def waiver_text(**fields) -> str:
    waiver = {"id": "W-1", "scope": DIGEST, "reason": "r", "owner": "o", "expires": "2030-01-01"}
    waiver.update(fields)
    body = "".join(f"    {k}: {v}\n" for k, v in waiver.items() if v is not None)
    return MINIMAL + "waivers:\n  - " + body.lstrip()


@pytest.mark.parametrize("expires", ["2025-02-30", "2025-13-01", "tomorrow", "2025-01-01 10:00:00", "20250101",
                                     "'31/12/2025'", "[2025]"])
def test_bad_waiver_dates_are_errors_at_the_expires_line(expires):
    text = waiver_text(expires=expires)
    found = problems_of(text)
    assert (line_of(text, "expires:"), "waivers[0].expires") in [(line, key) for line, key, _ in found]


@pytest.mark.parametrize("scope", ["abc", "zz" * 32, "a" * 65, "12345", "'sha256:" + "a" * 64 + "'"])
def test_bad_waiver_digests_are_errors_at_the_scope_line(scope):
    text = waiver_text(scope=scope)
    found = problems_of(text)
    assert any(line == line_of(text, "scope:") and key == "waivers[0].scope" and "SHA-256" in message
               for line, key, message in found), found


@pytest.mark.parametrize("missing", ["id", "scope", "reason", "owner", "expires"])
def test_waiver_without_each_required_field_is_an_error(missing):
    found = problems_of(waiver_text(**{missing: None}))
    assert any(key == f"waivers[0].{missing}" and "missing" in message for _, key, message in found)


def test_waiver_ids_must_be_unique():
    text = MINIMAL + "waivers:\n" + "".join(
        f"  - {{id: W-1, scope: '{DIGEST}', reason: r, owner: o, expires: 2030-01-01}}\n" for _ in range(2))
    assert any(key == "waivers" and "W-1" in message for _, key, message in problems_of(text))


@pytest.mark.parametrize(("text", "fragment"), [
    ("version: 2\nmode: enforce\ndetection: {score_threshold: 0.5}\n", "unsupported policy version 2"),
    ("version: true\nmode: enforce\ndetection: {score_threshold: 0.5}\n", "valid integer"),
    ("mode: enforce\ndetection: {score_threshold: 0.5}\n", "required key is missing"),
])
def test_version_must_be_the_integer_1(text, fragment):
    assert any(key == "version" and fragment in message for _, key, message in problems_of(text))


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("", 1, "empty"),
    ("# only a comment\n", 1, "empty"),
    ("- version: 1\n", 1, "mapping"),
    ("just text\n", 1, "mapping"),
    ("~\n", 1, "mapping"),
    ("version: 1\nversion: 1\n", 2, "twice"),
    ("version: 1\n3: x\n", 2, "keys must be text"),
    ("version: 1\n? [a]\n: 1\n", 2, "keys must be text"),
    ("version: 1\n<<: {mode: warn}\n", 2, "keys must be text"),
    ("version: !!python/object/apply:os.system ['true']\n", 1, "not allowed"),
    ("version: 1\nx: !!binary aGVsbG8=\n", 2, "not allowed"),
    ("version: 1\nx: !!set {a, b}\n", 2, "not allowed"),
    ("version: !!int abc\n", 1, "not a valid int"),
    ("version: " + "9" * 5000 + "\n", 1, "not a valid int"),
    ("version: 1\nmode: [enforce\n", 3, "not valid YAML"),
    ("version: 1\n\tmode: warn\n", 2, "not valid YAML"),
    ("a: 1\n---\nb: 2\n", 2, "single document"),
    ("version: 1\n\x00\x01", 2, "not allowed"),
])
def test_malformed_yaml_is_a_policy_error_with_a_line(text, line, fragment):
    found = problems_of(text)
    assert found[0][0] == line and fragment in found[0][2], found


def test_python_tags_are_refused_without_running_anything(tmp_path):
    marker = tmp_path / "ran"
    text = f"version: !!python/object/apply:os.system ['touch {marker}']\n"
    found = problems_of(text)
    assert not marker.exists()
    assert found[0] == (1, "version", "the tag tag:yaml.org,2002:python/object/apply:os.system is not allowed")


# --- YAML bombs --------------------------------------------------------------------------------

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
) + "\n"


def test_billion_laughs_fails_fast_at_the_first_anchor():
    start = time.perf_counter()
    found = problems_of(BILLION_LAUGHS)
    assert time.perf_counter() - start < 1.0
    assert found[0][0] == 1 and "anchors and aliases" in found[0][2]


def test_a_single_harmless_alias_is_still_refused():
    found = problems_of("version: 1\nmode: &m enforce\ndescription: *m\ndetection: {score_threshold: 0.5}\n")
    assert found[0][0] == 2 and "anchors and aliases" in found[0][2]


@pytest.mark.parametrize("text", [
    "a: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)) + "  " * 200 + "v: 1\n",
])
def test_deep_nesting_is_refused(text):
    assert f"deeper than {MAX_DEPTH}" in problems_of(text)[0][2]


def test_too_many_values_are_refused():
    text = "a: [" + ",".join(["1"] * (MAX_NODES + 10)) + "]\n"
    assert "more than" in problems_of(text)[0][2]


def test_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * MAX_POLICY_BYTES + b"\n")
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(path)


# --- files ---------------------------------------------------------------------------------------

def test_binary_garbage_file_is_a_policy_error(tmp_path):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(str(path))


def test_missing_file_and_folder_are_policy_errors(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError, match="folder"):
        load_policy(tmp_path)


def test_load_policy_reports_the_path_and_digest_of_the_bytes(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL)
    loaded = load_policy(path)
    assert (loaded.name, loaded.source) == ("mine", str(path))
    assert loaded.sha256 == hashlib.sha256(MINIMAL.encode()).hexdigest()
    assert resolve_policy(str(path)).sha256 == loaded.sha256


def test_unknown_ready_policy_lists_the_known_ones():
    with pytest.raises(PolicyError, match="strict"):
        resolve_policy("paranoid")


# --- fuzz: only PolicyError ever escapes ---------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KEYS = st.sampled_from(["version", "mode", "data", "tier", "detection", "budget", "steps", "families", "waivers",
                        "score_threshold", "calibration", "expires", "scope", "id", "x", "", "<<", "1"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.dates().map(str),
    st.sampled_from(["enforce", "warn", "dry-run", "patch", "few-shot", "purify", "block", "2025-02-30",
                     "1e-4", "0x1F", "1:30", ".inf", "yes", "~", DIGEST]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.one_of(KEYS, st.text(max_size=8)),
                                                                        inner, max_size=4)), max_leaves=20)


def assert_loads_or_policy_error(text: str) -> None:
    try:
        load_policy_text(text, SOURCE)
    except PolicyError as error:
        assert all(p.source == SOURCE for p in error.problems)
        assert str(error).startswith(SOURCE)


@FUZZ
@given(VALUES)
def test_fuzz_random_documents_raise_only_policy_errors(document):
    assert_loads_or_policy_error(yaml.safe_dump(document, sort_keys=False))


@FUZZ
@given(st.data())
def test_fuzz_mutated_ready_policies_raise_only_policy_errors(data):
    document = full_document()
    for _ in range(data.draw(st.integers(1, 3))):
        # paths are listed afresh each time: an earlier mutation may have replaced a whole section
        path = data.draw(st.sampled_from(list(leaf_paths(document)) + list(mapping_paths(document))))
        if path and data.draw(st.booleans()):
            at(document, path[:-1])[path[-1]] = data.draw(VALUES)
        elif isinstance(at(document, path), dict):
            at(document, path)[data.draw(KEYS)] = data.draw(SCALARS)
    assert_loads_or_policy_error(yaml.safe_dump(document, sort_keys=False))


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#%@`?,\n\t 01.~")), max_size=120))
def test_fuzz_yaml_punctuation_soup_raises_only_policy_errors(text):
    assert_loads_or_policy_error(text)


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_arbitrary_unicode_raises_only_policy_errors(text):
    assert_loads_or_policy_error(text)
