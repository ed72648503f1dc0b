"""Fuzz targets for the untrusted inputs of intake and policy: model configs, manifests, safetensors headers, policies.

Shared by ``tests/test_fuzz_intake.py`` (a few hundred cases per target) and
``benchmarks/fuzz.py`` (ten thousand and more). Each target is a hypothesis
strategy of cases and a function that feeds one case through the public code
path the gate runs on such input. The contract under test: every case either
is accepted (and then is usable downstream) or raises a typed
:class:`CbptError` whose exit code is not 2; anything else is a crash.

Cases are mutations of valid inputs (a field replaced, deleted or added, with
values chosen to hit edges: zero, negative and huge sizes, NaN, hub names,
lone surrogates, format specs, integers past Python's digit limit) mixed with
arbitrary text, so most cases travel deep into the parser instead of failing
at the first byte.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from cbpt_guard.errors import CbptError, ExitCode

HUGE_INT = "9" * 4400  # past Python's 4,300-digit limit on int(str)


@dataclass(frozen=True)
class Outcome:
    """What one case came to: ``accepted``, or the typed error's class name and exit code."""

    kind: str
    exit_code: int


def outcome_of(run: Callable[[object], None], case: object) -> Outcome:
    """Run one case. Typed errors become an Outcome; any other exception propagates (a crash)."""
    try:
        run(case)
    except CbptError as error:
        if error.exit_code == ExitCode.TOOL_ERROR:
            raise AssertionError(f"internal error (exit 2) on untrusted input: {error}") from error
        return Outcome(type(error).__name__, int(error.exit_code))
    return Outcome("accepted", 0)


# --- values that hit edges -------------------------------------------------------------------------

EDGE_INTS = [0, -1, 1, 2, 3, 4, 7, 8, 16, 31, 32, 33, 48, 64, 77, 100, 1000, 10_000, 100_000, 16384, 49408,
             2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(2**63)]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1.0, 1e-12, 4.0, 1e308, -1.0, float("nan"), float("inf"), float("-inf")]
EDGE_STRINGS = [
    "hf-hub:someone/model", "hf_hub:someone/model", "HF-HUB:x/y", "https://example.com/model.pth",
    "http://127.0.0.1:8080/x", "s3://bucket/key", "file:///etc/passwd", "local-dir:/etc", "timm/vit_base",
    "convnext_atto", "convnext_atto.fb_in1k", "resnet18", "vit_tiny_patch16_224", "no_such_model", "a/b", "",
    "tok", "avg", "argmax", "eos", "first", "last", "linear", "mlp", "none", "learnable", "sin_cos_2d", "bicubic",
    "bilinear", "RGB", "L", "shortest", "squash", "quick_gelu", "gelu", "gelu_new", "relu", "clip",
    "clip_text_model", "clip_vision_model", "CLIPModel", "siglip", "\ud800", "\udfff", "x" * 2000, "\n", "\x85",
    "{}", "{:>99999999}",
]
EDGE_KEYS = [
    "embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "multimodal_cfg", "layers", "width",
    "head_width", "patch_size", "image_size", "mlp_ratio", "heads", "context_length", "vocab_size",
    "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "hf_model_name", "hf_tokenizer_name",
    "hf_model_pretrained", "pretrained", "pool_type", "pos_embed_type", "attentional_pool", "attn_pooler_queries",
    "act_kwargs", "norm_kwargs", "eps", "ls_init_value", "proj_type", "eos_id", "preprocess_cfg", "model_cfg",
    "mean", "std", "interpolation", "resize_mode", "fill_color", "mode", "size", "model_type", "architectures",
    "text_config", "vision_config", "text_config_dict", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps", "eos_token_id",
    "num_channels", "projection_dim", "image_mean", "image_std", "_name_or_path", "auto_map", "url",
]

_scalars = (
    st.none() | st.booleans() | st.sampled_from(EDGE_INTS) | st.integers(-(2**40), 2**40)
    | st.sampled_from(EDGE_FLOATS) | st.floats() | st.sampled_from(EDGE_STRINGS) | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(EDGE_KEYS) | st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)
_edits = st.lists(
    st.tuples(st.sampled_from(["set", "delete", "insert"]), st.integers(0, 10**6), st.integers(0, 10**6),
              st.sampled_from(EDGE_KEYS) | st.text(max_size=6), JSON_VALUES),
    max_size=4,
)
_text_mutations = st.sampled_from([None, None, None, "huge-int", "truncate", "nan", "deep"])


def mutate(document: object, edits: list, text_mutation: str | None, position: int) -> str:
    """Apply structural edits to a copy of ``document``, serialise it, then maybe mutate the text."""
    document = copy.deepcopy(document)
    for op, where, which, key, value in edits:
        containers = _containers(document)
        node = containers[where % len(containers)]
        if isinstance(node, dict):
            keys = list(node)
            if op == "delete" and keys:
                node.pop(keys[which % len(keys)])
            elif op == "set" and keys:
                node[keys[which % len(keys)]] = value
            else:
                node[key] = value
        elif op == "delete" and node:
            node.pop(which % len(node))
        elif op == "set" and node:
            node[which % len(node)] = value
        else:
            node.append(value)
    text = json.dumps(document)  # NaN and Infinity as JS literals, which Python's json reads back
    if text_mutation == "huge-int":
        text = re.sub(r"(?<![\w.])\d+(?![\w.])", HUGE_INT, text, count=1 + position % 3)
    elif text_mutation == "truncate":
        text = text[: position % (len(text) + 1)]
    elif text_mutation == "nan":
        text = re.sub(r"(?<![\w.])\d+(?![\w.])", "NaN", text, count=1)
    elif text_mutation == "deep":
        depth = 50 + position % 5000
        text = text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}" if text.endswith("}") else text
    return text


def _containers(document: object) -> list:
    """Every dict and list in ``document``, root first (iterative: no recursion limit)."""
    found, stack = [], [document]
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)):
            found.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return found or [document]


# --- model configs, through load_checkpoint ------------------------------------------------------

_TEXT_SMALL = {"context_length": 16, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
OPEN_CLIP_BASES = {
    "vit": {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8,
                                            "head_width": 8}, "text_cfg": _TEXT_SMALL},
    "resnet": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 4,
                                               "patch_size": None}, "text_cfg": _TEXT_SMALL},
}
HF_BASE = {
    "model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 16,
    "text_config": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": 63,
                    "hidden_act": "quick_gelu"},
    "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "image_size": 16, "patch_size": 8, "hidden_act": "quick_gelu"},
}
PREPROCESS_BASE = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic",
                   "resize_mode": "shortest"}
CONFIG_LAYOUTS = ("open_clip vit", "open_clip resnet", "transformers CLIP")


@functools.lru_cache(maxsize=None)
def config_dirs(root: str) -> dict[str, Path]:
    """One tiny, valid model directory per layout under ``root`` (weights of about 100 kB each)."""
    import torch
    from safetensors.torch import save_file

    from cbpt_guard.intake.architecture import build_model
    from cbpt_guard.intake.hf_clip import open_clip_config_from_hf

    manifest = json.dumps({"manifest_version": 1, "classes": ["a", "b"]})
    dirs = {}
    for family, config in OPEN_CLIP_BASES.items():
        directory = Path(root) / family
        directory.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        save_file(build_model(copy.deepcopy(config)).state_dict(), str(directory / "open_clip_model.safetensors"))
        (directory / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": config, "preprocess_cfg": PREPROCESS_BASE}))
        (directory / "cbpt_manifest.json").write_text(manifest)
        dirs[f"open_clip {family}"] = directory
    directory = Path(root) / "hf"
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg, _ = open_clip_config_from_hf(HF_BASE)
    torch.manual_seed(0)
    save_file(_to_hf_names(build_model(model_cfg).state_dict(), model_cfg), str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(HF_BASE))
    (directory / "cbpt_manifest.json").write_text(manifest)
    dirs["transformers CLIP"] = directory
    return dirs


def _to_hf_names(state: dict, model_cfg: dict) -> dict:
    """An open_clip ``CLIP`` state dict renamed (and unfused) into transformers' CLIPModel layout."""
    out = {"logit_scale": state["logit_scale"]}
    for src, hf, proj, prefix in (("visual.transformer", "vision_model", "visual_projection", "visual."),
                                  ("transformer", "text_model", "text_projection", "")):
        layers = model_cfg["vision_cfg" if prefix else "text_cfg"]["layers"]
        for i in range(layers):
            s, d = f"{src}.resblocks.{i}", f"{hf}.encoder.layers.{i}"
            q, k, v = state[f"{s}.attn.in_proj_weight"].chunk(3)
            qb, kb, vb = state[f"{s}.attn.in_proj_bias"].chunk(3)
            out.update({f"{d}.self_attn.q_proj.weight": q, f"{d}.self_attn.k_proj.weight": k,
                        f"{d}.self_attn.v_proj.weight": v, f"{d}.self_attn.q_proj.bias": qb,
                        f"{d}.self_attn.k_proj.bias": kb, f"{d}.self_attn.v_proj.bias": vb})
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{d}.{theirs}.weight"] = state[f"{s}.{ours}.weight"]
                out[f"{d}.{theirs}.bias"] = state[f"{s}.{ours}.bias"]
        out[f"{proj}.weight"] = state[f"{prefix}{'proj' if prefix else 'text_projection'}"].T.contiguous()
    out.update({
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
    })
    return {k: v.contiguous() for k, v in out.items()}


def _config_document(layout: str) -> dict:
    if layout == "transformers CLIP":
        return HF_BASE
    return {"model_cfg": OPEN_CLIP_BASES[layout.split()[1]], "preprocess_cfg": PREPROCESS_BASE}


config_cases = st.one_of(
    st.tuples(st.sampled_from(CONFIG_LAYOUTS), _edits, _text_mutations, st.integers(0, 10**6)),
    st.tuples(st.sampled_from(CONFIG_LAYOUTS), st.just([]), st.just("raw"), st.text(max_size=200)),
)


def config_text(case: tuple) -> str:
    """The config file's text for one case."""
    layout, edits, text_mutation, extra = case
    if text_mutation == "raw":
        return extra
    return mutate(_config_document(layout), edits, text_mutation, extra)


def run_config(case: tuple, root: str) -> None:
    """Write the case's config beside valid tiny weights and load the directory as ``inspect`` would."""
    from cbpt_guard.intake import load_checkpoint

    directory = config_dirs(root)[case[0]]
    name = "config.json" if case[0] == "transformers CLIP" else "open_clip_config.json"
    (directory / name).write_text(config_text(case), encoding="utf-8", errors="surrogatepass")
    report = load_checkpoint(directory).report
    json.dumps(report.preprocess)  # what the report renders must be plain data
    assert report.parameter_count > 0


# --- manifests and class lists -----------------------------------------------------------------------

_class_names = (
    st.sampled_from(["cat", "dog", "cat", "", " ", "a\nb", "a\rb", "a\x85b", "a\u2028b", "\ud800", "x\udfffy",
                     "x" * 300, "{}", "{:d}", "\x00", "é", "猫"])
    | st.text(max_size=12)
)
_template_alphabet = st.sampled_from(list("{}:!<>^=+-#0123456789dxsr%.,aphoto ")) | st.characters()
_templates = (
    st.sampled_from(["a photo of a {}.", "{}", "{:{}}", "{:d}", "{:%}", "{:>99999999}", "{!r}", "{0}", "{x}",
                     "{{}}", "{{{}}}", "{} {}", "", "{", "}", "a {}\nb", "\ud800 {}", "{:" + "9" * 30 + "}"])
    | st.text(_template_alphabet, max_size=16)
)
_manifest_documents = st.fixed_dictionaries(
    {},
    optional={
        "manifest_version": st.sampled_from([1, 1.0, True, False, 0, 2, "1", None, 2**70]) | JSON_VALUES,
        "classes": st.lists(_class_names, max_size=6) | JSON_VALUES,
        "templates": st.lists(_templates, max_size=4) | JSON_VALUES,
        "description": st.text(max_size=20) | st.sampled_from(["\ud800", "ok"]) | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
manifest_cases = st.one_of(
    st.tuples(st.just("manifest"), _manifest_documents, _text_mutations, st.integers(0, 10**6)),
    st.tuples(st.just("classes-text"), st.just(None), st.just("raw"),
              st.text(st.sampled_from(list("ab \n\r#[]{}\",:1\x85\u2028")) | st.characters(), max_size=80)),
)


def manifest_text(case: tuple) -> str:
    """The manifest (or class list) text for one case."""
    _, document, text_mutation, extra = case
    if text_mutation == "raw":
        return extra
    return mutate(document, [], text_mutation, extra)


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=77)


def run_manifest(case: tuple) -> None:
    """Parse a manifest (or a ``--classes`` text), then use what was accepted the way detection does."""
    from cbpt_guard.intake.manifest import parse_classes_text, parse_manifest_text

    text = manifest_text(case)
    if case[0] == "manifest":
        manifest = parse_manifest_text(text, "fuzz/cbpt_manifest.json")
        classes, templates = manifest.classes, manifest.templates
        manifest.description.encode("utf-8")
    else:
        classes, templates = parse_classes_text(text, "fuzz/classes.txt"), ("a photo of a {}.",)
    prompts = [template.format(name) for template in templates for name in classes[:3]]
    for prompt in prompts:
        prompt.encode("utf-8")
        assert len(prompt) <= 2 * 256 + 256
    _tokenizer()(prompts[:4])


# --- safetensors headers -------------------------------------------------------------------------

_DTYPES = ["F32", "F16", "BF16", "I64", "I8", "U8", "BOOL", "F64", "F8_E4M3", "X", "f32", ""]
_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(_DTYPES) | st.lists(st.sampled_from(_DTYPES), max_size=2) | JSON_VALUES,
    "shape": st.lists(st.sampled_from([0, 1, 2, 3, 4, -1, 2**31, 2**64, 10**30]) | st.integers(0, 6), max_size=3)
    | JSON_VALUES,
    "data_offsets": st.lists(st.integers(-4, 80) | st.sampled_from([2**63, 2**64 + 4]), max_size=3) | JSON_VALUES,
})
SAFETENSORS_BASE = {
    "__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "b": {"dtype": "I64", "shape": [1], "data_offsets": [24, 32]},
    "c": {"dtype": "BF16", "shape": [0, 4], "data_offsets": [32, 32]},
}
_lengths = st.just(0) | st.integers(-4, 4) | st.sampled_from([2**40, 2**63])
safetensors_cases = st.one_of(
    # a valid header and payload, edited: most cases get past the JSON into the layout checks
    st.tuples(st.just(SAFETENSORS_BASE), _edits, st.binary(min_size=32, max_size=32) | st.binary(max_size=40),
              _lengths, _text_mutations, st.integers(0, 10**6)),
    st.tuples(st.dictionaries(st.text(max_size=6) | st.sampled_from(["__metadata__", "w", "\n::error::x"]),
                              _entries | JSON_VALUES, max_size=4),
              st.just([]), st.binary(max_size=80), _lengths, _text_mutations, st.integers(0, 10**6)),
)


def safetensors_bytes(case: tuple) -> bytes:
    """The file's bytes for one case: length field, header JSON (edited, maybe mutated as text), payload."""
    header, edits, payload, length_delta, text_mutation, position = case
    raw = mutate(header, edits, text_mutation, position).encode("utf-8", errors="surrogatepass")
    return struct.pack("<Q", max(0, min(len(raw) + length_delta, 2**64 - 1))) + raw + payload


def run_safetensors(case: tuple) -> None:
    """Validate and load the bytes as intake does; an accepted file's tensors must be exactly its header's."""
    from cbpt_guard.intake.safetensors_reader import read_safetensors

    tensors, header = read_safetensors(safetensors_bytes(case), "fuzz.safetensors")
    assert set(tensors) == {entry.name for entry in header.tensors}
    for entry in header.tensors:
        assert tuple(tensors[entry.name].shape) == entry.shape


# --- policies --------------------------------------------------------------------------------------

EDGE_YAML = [
    "0x12C", "5:00", "3_00", "0o17", "1e400", "-1e400", ".nan", ".inf", "-.inf", "~", "null", "yes", "no", "on",
    "off", "y", "n", "!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=", "!!timestamp 2026-01-01",
    "!!set {a, b}", "!!omap [a: 1]", "&a 1", "*a", "[1, 2", "{a: 1}", HUGE_INT, "1" * 4000, "-" + HUGE_INT,
    "'\\ud800'", '"\\ud800"', '"\\U0010ffff"', "2026-13-45", "2026-01-01", "-1", "0", "1", "1.5", "0.0", "-0.0",
    "'x'", "[" * 40 + "]" * 40, "{" * 40 + "}" * 40, "|\n  multi\n  line", ">-\n  folded", "? complex key",
    "!!str", "!!int 3", "!!float 1", "!!bool yes", "!<tag:yaml.org,2002:int> 7", "%TAG ! x", "---", "...",
    "\t1", "@x", "`x`", "\ud800",
]


@functools.lru_cache(maxsize=1)
def policy_bases() -> tuple[str, ...]:
    """The ready policies' texts without their comment lines: valid starting points, quick to parse.

    The first keeps its comments, so comment handling is fuzzed too.
    """
    root = Path(__file__).resolve().parents[1] / "policies"
    texts = [path.read_text(encoding="utf-8") for path in sorted(root.glob("*.yaml"))]
    bare = ["\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")) + "\n"
            for text in texts]
    return (texts[0], *bare)


_line_edits = st.lists(
    st.tuples(st.sampled_from(["value", "delete", "duplicate", "insert", "indent", "key"]),
              st.integers(0, 10**6), st.sampled_from(EDGE_YAML) | st.text(max_size=12)),
    max_size=4,
)
policy_cases = st.one_of(
    st.tuples(st.integers(0, 3), _line_edits, st.just(None)),
    st.tuples(st.integers(0, 3), st.just([]), st.text(max_size=200)),
)


def policy_text(case: tuple) -> str:
    """The policy YAML for one case: a ready policy edited line by line, or arbitrary text."""
    index, edits, raw = case
    if raw is not None:
        return raw
    lines = policy_bases()[index % len(policy_bases())].splitlines()
    for op, where, value in edits:
        at = where % len(lines)
        line = lines[at]
        if op == "value" and ":" in line:
            lines[at] = line.split(":", 1)[0] + ": " + value
        elif op == "key" and ":" in line:
            indent = line[: len(line) - len(line.lstrip())]
            lines[at] = indent + value + ":" + line.split(":", 1)[1]
        elif op == "delete":
            lines.pop(at)
        elif op == "duplicate":
            lines.insert(at, line)
        elif op == "indent":
            lines[at] = "  " + line
        else:
            lines.insert(at, value)
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


def run_policy(case: tuple) -> None:
    """Load the policy text through the public loader, as ``policy validate`` and ``check`` do."""
    from cbpt_guard.policy.load import load_policy_text

    load_policy_text(policy_text(case), "fuzz.yaml")


TARGETS = ("config", "manifest", "safetensors", "policy")
VALID_CASES = {  # one accepted case per target, to warm imports and caches up outside any measurement
    "config": ("open_clip vit", [], None, 0),
    "manifest": ("manifest", {"manifest_version": 1, "classes": ["a"]}, None, 0),
    "safetensors": (SAFETENSORS_BASE, [], bytes(32), 0, None, 0),
    "policy": (0, [], None),
}
STRATEGIES = {"config": config_cases, "manifest": manifest_cases, "safetensors": safetensors_cases,
              "policy": policy_cases}


def runner(target: str, root: str) -> Callable[[object], None]:
    """The run function of ``target``; ``root`` is a scratch folder for the config target's model directories."""
    if target == "config":
        return functools.partial(run_config, root=root)
    return {"manifest": run_manifest, "safetensors": run_safetensors, "policy": run_policy}[target]
