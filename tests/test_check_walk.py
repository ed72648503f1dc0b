"""``check`` reads a model folder by intake's one rule, also when intake refuses the folder.

A checkpoint that could not be loaded is still described in the Verdict (its
files and their digests). That description must not follow a symbolic link
out of the folder, nor read subfolders: the link could point at any file the
gate's runner can read, and its digest would land in a published report.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from cbpt_guard.pipeline import check

TODAY = dt.date(2026, 3, 1)


def test_check_does_not_follow_a_symlink_out_of_the_model_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.safetensors"
    secret.write_bytes(b"not for the report")
    model = tmp_path / "model"
    (model / "nested").mkdir(parents=True)
    (model / "notes.txt").write_text("a model folder with no config: intake cannot load it\n")
    (model / "nested" / "weights.safetensors").write_bytes(b"nested")
    (model / "linked.safetensors").symlink_to(secret)

    verdict = check(model, policy="strict", today=TODAY)

    assert verdict.decision.exit_code == 3  # nothing scannable: inconclusive
    listed = {f.path: f.sha256 for f in verdict.checkpoint.files}
    assert listed == {"notes.txt": hashlib.sha256((model / "notes.txt").read_bytes()).hexdigest()}
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in verdict.to_json()
    assert verdict.checkpoint.digest == ""  # no weights file of its own
