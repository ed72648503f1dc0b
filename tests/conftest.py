"""Shared test settings: offline hub, one torch thread per process, fixed seeds."""

from __future__ import annotations

import os

# open_clip otherwise retries a model hub for ~47 s before failing on remote names.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A really trained tiny zoo, built once per test session: base, a clean twin, a BadNets variant.

    Small enough for CI (a tiny ViT, 3,000 images, a few hundred steps) and
    strong enough that the backdoor is real: the build itself measures CA and ASR.
    """
    import torch

    from cbpt_guard.zoo.build import ZooRecipe, build_base, build_variant, load_data, read_truths
    from cbpt_guard.zoo.train import TrainSettings

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
