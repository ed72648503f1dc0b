"""Shared test settings: offline hub, one torch thread per process, fixed seeds."""

from __future__ import annotations

import os

# open_clip otherwise retries a model hub for ~47 s before failing on remote names.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _gpu_visibility_stays_in_its_test():
    """``github ... --device cpu`` hides the GPUs by setting CUDA_VISIBLE_DEVICES in its own process.

    Under click's runner that process is the test session's: without this, the
    empty value outlives the test, and a later Ray node that declares a GPU
    refuses to start ("CUDA_VISIBLE_DEVICES contains []").
    """
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    if before is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = before


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A really trained tiny zoo, built once per test session: base, a clean twin, a BadNets variant.

    Small enough for CI (a tiny ViT, 3,000 images, a few hundred steps) and
    strong enough that the backdoor is real: the build itself measures CA and ASR.
    """
    import torch

    from cbpt_guard_zoo.build import ZooRecipe, build_base, build_variant, load_data, read_truths
    from cbpt_guard_zoo.train import TrainSettings

    torch.set_num_threads(1)
    recipe = ZooRecipe(config="vit-tiny", train_size=3000, test_size=600,
                       base=TrainSettings(steps=300, batch_size=128, lr=2e-3, warmup=30, seed=0),
                       finetune=TrainSettings(steps=150, batch_size=128, lr=1e-3, warmup=10, seed=0),
                       poison_rates={"badnets": 0.1}, attack_finetune={})
    out = tmp_path_factory.mktemp("zoo")
    data = load_data(recipe)
    build_base(out, recipe, data, lambda line: None)
    build_variant(out, recipe, data, None, 1, lambda line: None)
    build_variant(out, recipe, data, "badnets", 0, lambda line: None)
    truths = {t["name"]: t for t in read_truths(out, recipe.config)}
    return out / recipe.config, truths


_DETECTIONS: dict = {}
"""Detection runs of this test session, by everything that decides their result (see ``shared_detection``)."""


def _bytes(tensor) -> bytes:
    """The raw bytes of a tensor, whatever its shape and dtype."""
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _detection_key(model, classes, templates, *, probes=None, budget=None, seed=0, text_embeddings=None) -> str:
    """A digest of every input of one ``gather_evidence`` call, the time limit excepted (it never changes a result)."""
    import dataclasses
    import hashlib

    from cbpt_guard.detect.run import DetectBudget

    budget = budget or DetectBudget()
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode() + _bytes(tensor))
    for tensor in (text_embeddings, None if probes is None else probes.images):
        digest.update(b"-" if tensor is None else _bytes(tensor))
    untimed = dataclasses.replace(budget, time_limit_s=0.0)
    digest.update(repr((tuple(classes), tuple(templates), untimed, seed)).encode())
    return digest.hexdigest()


@pytest.fixture
def shared_detection(monkeypatch):
    """Run each distinct detection once per session for the slow tests that check the bundled examples.

    Several of those tests (every ready policy on the same example, the MLflow
    gate, ``detect_checkpoint``) invert triggers on the same weights with the
    same budget and seed, about 55 s each. Detection is deterministic (the
    byte-identical-verdict tests in test_check.py and test_detect.py check it,
    without this fixture), so a second run with the same inputs would repeat
    the first; this fixture hands back a copy of the first instead. The
    policies' time limits differ, but a time limit only aborts a run, never
    changes its result, so a finished run serves every asker.
    """
    import copy

    from cbpt_guard.detect import api, run

    real = run.gather_evidence

    def gather(model, classes, templates, **kwargs):
        inputs = {k: v for k, v in kwargs.items() if k not in ("progress", "label")}  # neither changes a result
        key = _detection_key(model, classes, templates, **inputs)
        if key in _DETECTIONS:
            return copy.deepcopy(_DETECTIONS[key])
        evidence = real(model, classes, templates, **kwargs)
        _DETECTIONS[key] = copy.deepcopy(evidence)
        return evidence

    monkeypatch.setattr(run, "gather_evidence", gather)
    monkeypatch.setattr(api, "gather_evidence", gather)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped, with the reason, on a machine without it."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none is visible)")
    for item in gpu:
        item.add_marker(skip)
