"""What the commands leave behind and say: output folders, file modes, Ctrl-C, runs without --out, --mode, --probes."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import verdict_samples
from click.testing import CliRunner

from cbpt_guard.cli.main import cli
from cbpt_guard.errors import ExitCode, UsageError

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def _stale_run(folder: Path) -> None:
    """What an earlier check of another checkpoint left: reports, an ONNX export, purified prompts."""
    (folder / "purified").mkdir(parents=True)
    for name in ("verdict.json", "report.html", "summary.md", "results.sarif", "classifier.onnx",
                 "purified/prompts.safetensors", "purified/prompts.json"):
        (folder / name).write_text("from an earlier run")


@pytest.fixture
def sample_check(monkeypatch):
    """``check`` that returns a real Verdict at once, and records the arguments it was given."""
    import cbpt_guard.pipeline as pipeline

    calls = []

    def fake(model, **kwargs):
        calls.append(kwargs)
        return verdict_samples.clean_pass()

    monkeypatch.setattr(pipeline, "check", fake)
    return calls


# -- a clean output folder ---------------------------------------------------------------------------


def test_check_refuses_a_non_empty_out_folder_before_any_work_and_names_overwrite(tmp_path, sample_check):
    out = tmp_path / "report"
    _stale_run(out)
    result = _run("check", tmp_path / "model", "--out", out)
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("cbpt-guard: error: ")
    assert "not empty" in result.stderr and "--overwrite" in result.stderr
    assert not sample_check  # refused before the check started
    assert (out / "classifier.onnx").read_text() == "from an earlier run"  # nothing lost


def test_check_with_overwrite_clears_an_earlier_runs_onnx_and_prompts_and_keeps_other_files(tmp_path, sample_check):
    out = tmp_path / "report"
    _stale_run(out)
    (out / "notes.txt").write_text("mine")
    (out / "purified" / "mine.txt").write_text("mine too")
    result = _run("check", tmp_path / "model", "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sample_check
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "notes.txt", "purified", "purified/mine.txt"]
    assert "kept 2 file(s)" in result.stderr and "notes.txt" in result.stderr and "purified/mine.txt" in result.stderr


@pytest.mark.parametrize("command", ["check", "purify"])
@pytest.mark.parametrize("refusal", ["policy", "data"])
def test_overwrite_clears_nothing_when_the_run_is_refused_for_its_policy_or_folders(tmp_path, sample_check, command,
                                                                                  refusal):
    out = tmp_path / "report"
    _stale_run(out)
    bad = ["--policy", "strcit"] if refusal == "policy" else ["--data", tmp_path / "no-such-folder"]
    if command == "purify" and refusal == "policy":
        bad += ["--data", tmp_path]
    result = _run(command, tmp_path / "model", "--out", out, "--overwrite", *bad)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert not sample_check
    assert (out / "classifier.onnx").read_text() == "from an earlier run"  # the refused run removed nothing


def test_overwrite_removes_a_killed_runs_temporary_files_and_an_emptied_purified_folder(tmp_path):
    from cbpt_guard.cli.outdir import prepare_out_dir

    _stale_run(tmp_path)
    (tmp_path / ".report.html.123.ab12cd34.tmp").write_text("half a report")
    (tmp_path / ".classifier.onnx.123.ab12cd34.partial").write_text("half a graph")
    (tmp_path / ".hidden.tmp").write_text("not ours")
    assert prepare_out_dir(tmp_path, overwrite=True) == (".hidden.tmp",)
    assert [p.name for p in tmp_path.iterdir()] == [".hidden.tmp"]


def test_a_missing_or_empty_out_folder_is_used_as_it_is(tmp_path):
    from cbpt_guard.cli.outdir import prepare_out_dir

    assert prepare_out_dir(tmp_path / "new", overwrite=False) == ()
    assert prepare_out_dir(tmp_path, overwrite=False) == ()
    (tmp_path / "x").write_text("")
    with pytest.raises(UsageError, match="--overwrite"):
        prepare_out_dir(tmp_path, overwrite=False)


def test_purify_refuses_a_non_empty_out_folder(tmp_path):
    _stale_run(tmp_path / "out")
    result = _run("purify", tmp_path / "model", "--out", tmp_path / "out")
    assert result.exit_code == ExitCode.USAGE and "--overwrite" in result.stderr
    assert (tmp_path / "out" / "purified" / "prompts.json").exists()


def test_export_refuses_to_replace_an_existing_onnx_file_and_overwrite_removes_it_first(tmp_path):
    old = tmp_path / "model.onnx"
    old.write_text("an earlier export")
    refused = _run("export", tmp_path / "no-model", "--out", old)
    assert refused.exit_code == ExitCode.USAGE
    assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert old.read_text() == "an earlier export"
    # with --overwrite the old file goes before the export runs: a failed export leaves no stale file
    failed = _run("export", tmp_path / "no-model", "--out", old, "--overwrite")
    assert failed.exit_code == ExitCode.USAGE, failed.output  # the model path does not exist
    assert not old.exists()


# -- Ctrl-C ------------------------------------------------------------------------------------------


def test_ctrl_c_exits_130_with_one_line_saying_interrupted(sample_check, monkeypatch):
    import cbpt_guard.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "check", interrupted)
    result = _run("check", "model")
    assert result.exit_code == ExitCode.INTERRUPTED == 130
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("cbpt-guard: interrupted")


def test_a_real_sigint_during_a_check_exits_130():
    script = (
        "import sys, time\n"
        "import cbpt_guard.pipeline as pipeline\n"
        "def slow(*a, **k):\n"
        "    print('started', flush=True)\n"
        "    time.sleep(60)\n"
        "pipeline.check = slow\n"
        "from cbpt_guard.cli.main import main\n"
        "main(['check', 'model'])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=ROOT)
    try:
        assert process.stdout.readline().strip() == "started"
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "cbpt-guard: interrupted" in stderr and "Traceback" not in stderr


def test_readme_exit_code_table_has_the_interrupted_row():
    readme = (ROOT / "README.md").read_text()
    assert "| 130 | interrupted" in readme


# -- file modes --------------------------------------------------------------------------------------


def test_reports_and_the_onnx_file_get_the_same_umask_mode(tmp_path):
    from cbpt_guard.export.onnx_export import _write_partial
    from cbpt_guard.report import write_reports

    previous = os.umask(0o022)
    try:
        write_reports(verdict_samples.clean_pass(), tmp_path / "out")
        onnx = _write_partial(tmp_path / "out" / "classifier.onnx", b"graph")
    finally:
        os.umask(previous)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in (tmp_path / "out").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes
    assert onnx.name in modes


# -- no --out ----------------------------------------------------------------------------------------


def test_check_without_out_says_that_nothing_was_written_and_how_to_keep_the_reports(sample_check, tmp_path):
    result = _run("check", tmp_path / "model", "--json")
    assert result.exit_code == 0
    json.loads(result.stdout)  # stdout stays the Verdict alone
    assert "nothing was written (no --out)" in result.stderr and "--out DIR" in result.stderr
    assert list(tmp_path.iterdir()) == []


# -- --mode ------------------------------------------------------------------------------------------


def _unsafe_model(folder: Path) -> Path:
    """A tiny open_clip directory whose weights are a pickle that would run a command: blocked at intake, fast."""
    from tiny_models import build_tiny, save_open_clip_dir

    model, config = build_tiny("vit")
    folder = save_open_clip_dir(model, config, folder, "safetensors", classes=["circle", "square"])
    (folder / "open_clip_model.safetensors").unlink()
    (folder / "open_clip_pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload()}, protocol=2))
    return folder


class _Payload:
    def __reduce__(self):
        return os.system, ("true",)


def test_check_mode_overrides_the_policys_mode_and_the_verdict_records_both(tmp_path):
    model = _unsafe_model(tmp_path / "model")
    enforced = _run("check", model, "--policy", "strict", "--out", tmp_path / "enforce")
    assert enforced.exit_code == ExitCode.BLOCKED, enforced.output
    warned = _run("check", model, "--policy", "strict", "--mode", "warn", "--out", tmp_path / "warn")
    # warn reports what enforce would do; the run that never got past intake still may not pass
    assert warned.exit_code == ExitCode.INCONCLUSIVE, warned.output
    assert "(warn, set by --mode; the policy says enforce); enforce would: block" in warned.stdout
    verdict = json.loads((tmp_path / "warn" / "verdict.json").read_text())
    assert verdict["policy"]["mode"] == "enforce" and verdict["policy"]["mode_override"] == "warn"
    assert (verdict["decision"]["mode"], verdict["decision"]["enforced"]) == ("warn", "block")
    assert "warn mode: enforce would block the model" in verdict["decision"]["reasons"]
    assert json.loads((tmp_path / "enforce" / "verdict.json").read_text())["policy"]["mode_override"] is None


def test_check_refuses_an_unknown_mode():
    result = _run("check", "model", "--mode", "lenient")
    assert result.exit_code == ExitCode.USAGE


# -- one meaning of --probes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["check", "purify", "detect"])
def test_probes_takes_a_folder_on_every_command(name):
    from cbpt_guard.cli.main import COMMANDS

    module, attribute = COMMANDS[name][0].split(":")
    command = getattr(__import__(module, fromlist=[attribute]), attribute)
    options = {opt: param for param in command.params for opt in param.opts}
    assert isinstance(options["--probes"].type, click.Path), options["--probes"].type
    assert "--probes-dir" not in options


@pytest.mark.parametrize("name", ["detect", "calibrate"])
def test_the_probe_count_is_n_probes(name):
    result = _run(name, "--help")
    assert "--n-probes" in result.output
