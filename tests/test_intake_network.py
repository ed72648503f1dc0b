"""The network stays closed: intake, building the model included, opens no socket, on every config family.

Each family the loader accepts (an open_clip directory of three architectures,
a transformers CLIP directory, a single weights file with a built-in
architecture name), and hostile configs that name hubs, URLs or pretrained
weights, are loaded in a fresh process whose environment asks for online mode
(``HF_HUB_OFFLINE=0``) and whose audit hook records and refuses every network
event. The gate must not depend on that environment: not one event may fire.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_intake_hardening import CLASSES, HUB_CONFIGS, _copy_with
from tiny_models import build_tiny, save_open_clip_dir

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

_PROBE = textwrap.dedent("""
    import json, sys
    NETWORK = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
               "socket.gethostbyaddr", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.__new__",
               "http.client.connect", "http.client.send", "urllib.Request", "ftplib.connect", "smtplib.connect")
    events = []

    def refuse_network(event, args):
        if event in NETWORK:
            events.append(event)
            raise ConnectionRefusedError("network refused by the test's audit hook: " + event)

    sys.addaudithook(refuse_network)  # before anything else is imported
    import torch
    torch.set_num_threads(1)
    from cbpt_guard.intake import load_checkpoint
    results = {}
    for name, path, arch in json.loads(sys.argv[1]):
        before = len(events)
        try:
            report = load_checkpoint(path, arch=arch).report
            outcome = "loaded " + report.layout
        except BaseException as error:  # record anything, the assertion is on the events
            outcome = type(error).__name__ + ": " + str(error)[:300]
        results[name] = {"outcome": outcome, "events": events[before:]}
    print(json.dumps(results))
""")


def _hf_clip_dir(directory: Path, hostile: bool) -> Path:
    transformers = pytest.importorskip("transformers")
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(directory)
    if hostile:  # names transformers itself would resolve remotely; the converter must read none of them
        config = json.loads((directory / "config.json").read_text())
        config.update({"_name_or_path": "hf-hub:someone/model", "auto_map": {"AutoModel": "someone/repo--m.M"},
                       "tokenizer_class": "https://example.com/tok"})
        config["text_config"]["_name_or_path"] = "https://example.com/text"
        (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """(name, path, arch) for every family and hostile config, with the outcome each must have."""
    from safetensors.torch import save_file

    from cbpt_guard.intake.architecture import build_model, config_for_name

    root = tmp_path_factory.mktemp("network")
    cases = []
    for family in ("vit", "resnet", "convnext"):
        model, config = build_tiny(family)
        path = save_open_clip_dir(model, config, root / family, "safetensors", classes=CLASSES)
        cases.append((f"open_clip {family}", str(path), None, "loaded open_clip-dir"))
    for name in sorted(HUB_CONFIGS):
        path = _copy_with(root / "vit", root / f"hostile-{name}", HUB_CONFIGS[name])
        cases.append((f"hostile {name}", str(path), None, "RemoteSourceError"))
    cases.append(("transformers CLIP", str(_hf_clip_dir(root / "hf", hostile=False)), None, "loaded hf-clip-dir"))
    cases.append(("transformers CLIP naming hubs", str(_hf_clip_dir(root / "hf-hostile", hostile=True)), None,
                  "loaded hf-clip-dir"))
    weights = root / "vit-s-32-alt.safetensors"
    save_file(build_model(config_for_name("ViT-S-32-alt")).state_dict(), str(weights))
    cases.append(("--arch ViT-S-32-alt", str(weights), "ViT-S-32-alt", "loaded weights-file"))
    tiny_weights = str(root / "vit" / "open_clip_model.safetensors")
    cases.append(("--arch with a timm tower, other weights", tiny_weights, "ViTamin-S", "ConfigMismatchError"))
    cases.append(("--arch with a Hugging Face text tower", tiny_weights, "roberta-ViT-B-32", "RemoteSourceError"))
    return cases


def test_intake_opens_no_socket_on_any_config_family_even_when_online_mode_is_asked(targets):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", PYTHONPATH=str(ROOT))
    argument = json.dumps([(name, path, arch) for name, path, arch, _ in targets])
    done = subprocess.run([sys.executable, "-c", _PROBE, argument], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    network = {name: r["events"] for name, r in results.items() if r["events"]}
    assert network == {}, network
    for name, _, _, expected in targets:
        assert results[name]["outcome"].startswith(expected), (name, results[name])
