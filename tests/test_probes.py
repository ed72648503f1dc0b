"""The three probe tiers: procedural probes, unlabelled folders, few-shot ImageFolders."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cbpt_guard.errors import ClassListError, NothingScannableError, UsageError
from cbpt_guard.probes import fewshot_folder, folder_probes, procedural_probes


def _write_png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 12), colour).save(path)


def test_procedural_probes_are_deterministic_diverse_and_in_range():
    first, again, other = procedural_probes(48, 32, 0), procedural_probes(48, 32, 0), procedural_probes(48, 32, 1)
    assert first.images.shape == (48, 3, 32, 32) and first.tier == "zero-data"
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    assert float(first.images.min()) >= 0.0 and float(first.images.max()) <= 1.0
    flat = torch.nn.functional.normalize(first.images.flatten(1) - first.images.mean(), dim=1)
    off_diagonal = (flat @ flat.T).masked_select(~torch.eye(48, dtype=torch.bool))
    assert float(off_diagonal.mean()) < 0.5  # probes do not all look alike


def test_procedural_probes_refuse_degenerate_requests():
    with pytest.raises(UsageError):
        procedural_probes(1, 32)


def test_folder_probes_skip_and_report_corrupt_files(tmp_path):
    _write_png(tmp_path / "a.png", (255, 0, 0))
    _write_png(tmp_path / "sub" / "b.png", (0, 0, 255))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    probes = folder_probes(tmp_path, 32)
    assert probes.images.shape == (2, 3, 32, 32) and probes.tier == "unlabelled"
    assert [path.rsplit("/", 1)[-1] for path, _ in probes.skipped] == ["broken.png"]
    assert torch.allclose(probes.images[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_folder_with_no_readable_image_is_nothing_scannable(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(NothingScannableError, match="no readable images"):
        folder_probes(tmp_path, 32)


def test_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        folder_probes(tmp_path / "absent", 32)


def test_fewshot_folder_labels_by_class_and_keeps_k_shots(tmp_path):
    for index in range(3):
        _write_png(tmp_path / "cat" / f"{index}.png", (index * 50, 0, 0))
    _write_png(tmp_path / "dog" / "0.png", (0, 200, 0))
    probes = fewshot_folder(tmp_path, 16, ("dog", "cat", "bird"), shots=2)
    assert probes.tier == "few-shot"
    assert sorted(probes.labels.tolist()) == [0, 1, 1]


def test_fewshot_folder_refuses_unknown_class_folders(tmp_path):
    _write_png(tmp_path / "cta" / "0.png", (0, 0, 0))
    with pytest.raises(ClassListError, match="cta"):
        fewshot_folder(tmp_path, 16, ("cat",))
