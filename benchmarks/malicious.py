"""Malicious-file corpus benchmark: every sample through ``cbpt-guard inspect`` in three modes, under an audit hook.

Usage:

    python benchmarks/malicious.py --out benchmarks

The corpus is the project's own (``tests/test_pickle_safety.py``) plus the
samples ``benchmarks/malicious_corpus.py`` regenerates from the public suites'
recipes, a benign set (torch saves at every pickle protocol, safetensors,
numeric numpy files) and a few expansion pickles. Each file goes through
``cbpt-guard inspect`` three ways:

- file: the file alone, ``inspect FILE --arch ViT-B-32`` (malicious files only:
  a benign file would need a full ViT-B-32's weights);
- dir: a tiny open_clip model directory whose only weights are the file
  (``open_clip_pytorch_model.bin``; benign weights files only, besides every
  malicious one);
- side: the file beside a clean tiny model (safetensors weights).

The CLI runs in this process through click's ``CliRunner`` (a subprocess per
case would import torch each time), with ``sys.addaudithook`` watching for what
a payload would do: process creation, sockets, ctypes, stdlib unpickling
(``pickle.find_class``), ``exec`` of code not from a file, and any ``open``
under the sentinel folder, where every payload would write. A few cases run
again through ``python -m cbpt_guard`` in a subprocess with the same hook, to
show the installed CLI gives the same exit codes. It writes OUT/MALICIOUS.md
and OUT/results/malicious.json; nothing in them is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

import malicious_corpus as corpus  # noqa: E402
import torch  # noqa: E402

MODES = ("file", "dir", "side")
ARCH = "ViT-B-32"
WEIGHTS_NAMES = {"safetensors": "open_clip_model.safetensors", "torch": "open_clip_pytorch_model.bin"}
# Audit events that only a payload would raise during intake (intake never spawns, connects or unpickles).
PAYLOAD_EVENTS = (
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "subprocess.Popen",
    "socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.bind", "socket.sendto",
    "urllib.Request", "webbrowser.open", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
    "pickle.find_class", "code.__new__", "function.__new__", "cpython.run_command", "shutil.rmtree",
    "shutil.copyfile", "shutil.move",
)  # fmt: skip
PRELOAD = ("import torch, numpy, open_clip, safetensors.torch, click.testing, cbpt_guard.cli.main, "
           "cbpt_guard.cli.inspect_cmd, cbpt_guard.intake.loader\n")
HOOK_SOURCE = """
import sys
def _guard_hook(event, args, _sentinel={sentinel!r}, _events={events!r}, _watch={watch!r}):
    hit = event.startswith(_watch)
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        hit = str(args[0]).startswith(_sentinel)
    if event == "exec" and args:
        name = getattr(args[0], "co_filename", "")
        hit = name.startswith("<") and not name.startswith("<frozen")
    if hit:
        with open(_events, "a") as log:
            log.write(event + " " + repr(args)[:200] + "\\n")
sys.addaudithook(_guard_hook)
"""


@dataclass
class Watch:
    """What the audit hook saw while armed, and where payloads would write."""

    sentinel_dir: Path
    armed: bool = False
    events: list[str] = field(default_factory=list)

    def hook(self, event: str, args: tuple) -> None:
        """The audit hook: record the events a payload would raise."""
        if not self.armed:
            return
        hit = event.startswith(PAYLOAD_EVENTS)
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            hit = str(args[0]).startswith(str(self.sentinel_dir))
        if event == "exec" and args:
            name = getattr(args[0], "co_filename", "")
            hit = name.startswith("<") and not name.startswith("<frozen")
        if hit:
            self.armed = False  # recording must not re-enter the hook
            self.events.append(f"{event} {repr(args)[:160]}")
            self.armed = True

    def sentinel_files(self) -> list[str]:
        """Files a payload created, other than the runner's own."""
        return sorted(p.name for p in self.sentinel_dir.iterdir() if p.name not in ("payload.py",))


@dataclass
class Case:
    """One sample in one mode: the exit code and what happened."""

    sample: str
    kind: str
    family: str
    mode: str
    exit_code: int
    crashed: bool
    executed: bool
    seconds: float
    message: str
    events: list[str]


def _tiny_model(root: Path) -> tuple[Path, dict]:
    from tiny_models import build_tiny, save_open_clip_dir

    model, config = build_tiny("vit")
    clean = save_open_clip_dir(model, config, root / "clean", "safetensors", classes=["circle", "square", "triangle"])
    return clean, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _project_samples(sentinel: Path) -> list[corpus.Sample]:
    """The malicious corpus of tests/test_pickle_safety.py, built with this run's sentinel."""
    import test_pickle_safety as project

    return [corpus.Sample(f"project_{p.name}", "project corpus", "tests/test_pickle_safety.py", "extra.pkl",
                          p.build(sentinel)) for p in project.PAYLOADS]


def _weights_like(sample: corpus.Sample) -> str | None:
    """For a benign file, which weights name it takes in dir mode (None: not a weights file)."""
    if sample.name.startswith(("torch_save_", "checkpoint_with_numpy_")):
        return WEIGHTS_NAMES["torch"]
    if sample.name.startswith("safetensors"):
        return WEIGHTS_NAMES["safetensors"]
    return None


def _place(sample: corpus.Sample, mode: str, clean: Path, work: Path) -> list[str] | None:
    """Write the sample where ``mode`` wants it; the ``inspect`` arguments, or None when the mode does not apply."""
    case_dir = work / f"{mode}-{sample.name}"
    case_dir.mkdir(parents=True)
    if mode == "file":
        if sample.kind == "benign":
            return None
        path = case_dir / sample.filename
        path.write_bytes(sample.data)
        return ["inspect", str(path), "--arch", ARCH]
    if mode == "dir":
        weights = _weights_like(sample) if sample.kind == "benign" else WEIGHTS_NAMES["torch"]
        if weights is None:
            return None
        for name in ("open_clip_config.json", "cbpt_manifest.json"):
            os.link(clean / name, case_dir / name)
        (case_dir / weights).write_bytes(sample.data)
        return ["inspect", str(case_dir)]
    for entry in clean.iterdir():
        os.link(entry, case_dir / entry.name)
    (case_dir / sample.filename).write_bytes(sample.data)
    return ["inspect", str(case_dir)]


def _run_case(sample: corpus.Sample, mode: str, args: list[str], watch: Watch) -> Case:
    from click.testing import CliRunner

    from cbpt_guard.cli.main import cli

    watch.events.clear()
    start = time.perf_counter()
    watch.armed = True
    try:
        result = CliRunner().invoke(cli, args, catch_exceptions=True)
    finally:
        watch.armed = False
    seconds = time.perf_counter() - start
    hits = watch.sentinel_files()
    for name in hits:
        (watch.sentinel_dir / name).unlink()
    crashed = (result.exit_code == 2 or "Traceback" in result.output
               or (result.exception is not None and not isinstance(result.exception, SystemExit)))
    lines = [line.replace(str(watch.sentinel_dir.parent), "<work>") for line in result.output.splitlines()
             if line.startswith("cbpt-guard:")]
    return Case(sample.name, sample.kind, sample.family, mode, int(result.exit_code), crashed,
                bool(watch.events or hits), round(seconds, 4), lines[0][:240] if lines else "",
                list(watch.events) + [f"sentinel file {h}" for h in hits])


def _hook_self_check(watch: Watch, sentinel: Path) -> dict:
    """Show the watch can fail: unpickle one payload with the stdlib, armed, and see it reported."""
    import pickle

    command = f"touch {sentinel}".encode()
    payload = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."
    watch.events.clear()
    watch.armed = True
    try:
        pickle.loads(payload)
    finally:
        watch.armed = False
    hits = watch.sentinel_files()
    for name in hits:
        (watch.sentinel_dir / name).unlink()
    return {"events": list(watch.events), "sentinel_files": hits, "detected": bool(watch.events and hits)}


def _subprocess_check(cases: list[tuple[corpus.Sample, str, list[str]]], sentinel_dir: Path) -> list[dict]:
    """Run a few cases through ``python -m cbpt_guard`` with the audit hook installed in the child."""
    rows = []
    for sample, mode, args in cases:
        events = sentinel_dir.parent / f"events-{sample.name}-{mode}.log"
        hook = HOOK_SOURCE.format(sentinel=str(sentinel_dir), events=str(events), watch=PAYLOAD_EVENTS)
        # Armed after the heavy imports: torch and open_clip exec generated code and dlopen CUDA
        # libraries while importing, which is not a payload; then the CLI runs as installed.
        program = (PRELOAD + hook + "import runpy; sys.argv = ['cbpt-guard', *sys.argv[1:]]; "
                   "runpy.run_module('cbpt_guard', run_name='__main__')")
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, env=env,
                              timeout=600, check=False)
        seen = events.read_text().splitlines() if events.exists() else []
        hits = [p.name for p in sentinel_dir.iterdir() if p.name != "payload.py"]
        rows.append({"sample": sample.name, "mode": mode, "exit_code": done.returncode,
                     "seconds": round(time.perf_counter() - start, 2), "events": seen, "sentinel_files": hits,
                     "stderr": next((line.replace(str(sentinel_dir.parent), "<work>")
                                     for line in done.stderr.splitlines()
                                     if line.startswith("cbpt-guard:")), "")[:240]})
    return rows


def run(out: Path, limit: int | None) -> dict:
    """Build the corpus, run every case, and return the results."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cbpt-malicious-") as tmp:
        root = Path(tmp)
        sentinel_dir = root / "sentinel"
        sentinel_dir.mkdir()
        sentinel = sentinel_dir / "payload-ran"
        script = sentinel_dir / "payload.py"
        script.write_text(f"open({str(sentinel)!r}, 'w').close()\n")
        clean, state_dict = _tiny_model(root)
        samples = _project_samples(sentinel) + corpus.all_samples(sentinel, script, state_dict)
        if limit:
            samples = samples[:limit] + [s for s in samples[limit:] if s.kind == "benign"][:3]
        work = root / "cases"
        watch = Watch(sentinel_dir)
        planned = [(s, mode, _place(s, mode, clean, work)) for s in samples for mode in MODES]
        planned = [(s, mode, args) for s, mode, args in planned if args is not None]
        for sample, mode, args in planned[:: max(1, len(planned) // 25)]:  # warm up lazy imports before arming
            _run_case(sample, mode, args, watch)
        sys.addaudithook(watch.hook)
        self_check = _hook_self_check(watch, sentinel)
        cases = [_run_case(sample, mode, args, watch) for sample, mode, args in planned]
        by_name = {s.name: s for s in samples}
        chosen = ["project_os_system_global", "os.system_p0", "subprocess.Popen_p1", "npy_ssl_get_server_certificate",
                  "npz_object_member", "joblib_zlib", "torch_zip_data_pkl_p4", "torch_save_zip_p5", "npy_float32"]
        subset = [(s, mode, args) for s, mode, args in planned if s.name in chosen and mode in ("dir", "side")]
        cli_rows = _subprocess_check(subset, sentinel_dir)
        in_process = {(c.sample, c.mode): c.exit_code for c in cases}
        for row in cli_rows:
            row["in_process_exit_code"] = in_process[(row["sample"], row["mode"])]
    return {
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "numpy": __import__("numpy").__version__, "machine": platform.machine(),
                        "load_average_before": [round(x, 2) for x in load_before],
                        "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "seconds": round(time.perf_counter() - started, 1),
        "samples": [{"name": s.name, "kind": s.kind, "family": s.family, "shape": s.shape, "filename": s.filename,
                     "bytes": len(s.data), "expect": s.expect, "side_expect": s.side_expect}
                    for s in by_name.values()],
        "cases": [asdict(c) for c in cases],
        "cli_subprocess": cli_rows,
        "hook_self_check": self_check,
    }


# ---------------------------------------------------------------- the report


def _summary(cases: list[dict], kind: str) -> list[dict]:
    rows = []
    for mode in MODES:
        chosen = [c for c in cases if c["kind"] == kind and c["mode"] == mode]
        if not chosen:
            continue
        codes = Counter(c["exit_code"] for c in chosen)
        rows.append({"mode": mode, "cases": len(chosen), "exit 1": codes[1], "exit 3": codes[3], "exit 4": codes[4],
                     "accepted (exit 0)": codes[0], "crashed": sum(c["crashed"] for c in chosen),
                     "payloads executed": sum(c["executed"] for c in chosen),
                     "slowest s": max(c["seconds"] for c in chosen)})
    return rows


def _expected(sample: dict, mode: str) -> str:
    """What a benign file should get in ``mode``: "pass" or the reason for a strict refusal."""
    return sample["side_expect"] if mode == "side" and sample["side_expect"] else sample["expect"]


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(none)"]
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]).replace("|", "\\|") for k in keys) + " |" for r in rows]
    return lines


def render(results: dict) -> str:
    """MALICIOUS.md from the results alone."""
    cases = results["cases"]
    samples = {s["name"]: s for s in results["samples"]}
    malicious = [c for c in cases if c["kind"] == "malicious"]
    benign = [c for c in cases if c["kind"] == "benign"]
    env = results["environment"]
    lines = [
        "# Malicious-file corpus through `cbpt-guard inspect`",
        "",
        "Written by `python benchmarks/malicious.py --out benchmarks`; nothing here is typed by hand.",
        f"{sum(1 for s in samples.values() if s['kind'] == 'malicious')} malicious files "
        f"({sum(1 for s in samples.values() if s['family'] == 'project corpus')} from the project's own corpus, the "
        "rest regenerated by `benchmarks/malicious_corpus.py` from the attack shapes of picklescan, modelscan, "
        "fickling and ModelAudit), "
        f"{sum(1 for s in samples.values() if s['kind'] == 'benign')} benign files and "
        f"{sum(1 for s in samples.values() if s['kind'] == 'expansion')} expansion pickles; "
        f"{len(cases)} runs in {results['seconds']} s "
        f"(Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}; load average "
        f"{env['load_average_before'][0]} before, {env['load_average_after'][0]} after).",
        "",
        "Modes: **file** = the file alone with `--arch ViT-B-32`; **dir** = the only weights of a tiny open_clip "
        "model directory (`open_clip_pytorch_model.bin`); **side** = beside a clean tiny model. A payload counts as "
        "executed when the audit hook saw a process, socket, ctypes, stdlib-unpickling or code-exec event, or a file "
        "appeared in the sentinel folder. Crashed = exit 2 or a traceback.",
        "",
        "## Malicious files",
        "",
        *_table(_summary(cases, "malicious")),
        "",
        f"Bars: accepted {sum(c['exit_code'] == 0 for c in malicious)} (must be 0), crashed "
        f"{sum(c['crashed'] for c in malicious)} (must be 0), payloads executed "
        f"{sum(c['executed'] for c in cases)} (must be 0, all kinds, all modes).",
        "",
        "### By family (exit codes in file / dir / side mode)",
        "",
    ]
    families = sorted({c["family"] for c in malicious})
    rows = []
    for family in families:
        row = {"family": family, "files": len({c["sample"] for c in malicious if c["family"] == family})}
        for mode in MODES:
            codes = Counter(c["exit_code"] for c in malicious if c["family"] == family and c["mode"] == mode)
            row[mode] = ", ".join(f"{n}x exit {code}" for code, n in sorted(codes.items()))
        rows.append(row)
    lines += _table(rows)
    lines += ["", "## Benign files", "",
              "Expected `pass` means exit 0; a strict refusal is expected where the row says why (the error message "
              "states it too).", ""]
    benign_rows = []
    for name in [n for n, s in samples.items() if s["kind"] == "benign"]:
        row = {"file": name, "shape": samples[name]["shape"], "expected (dir / side)": samples[name]["expect"]
               if samples[name]["side_expect"] in ("", samples[name]["expect"])
               else f"{samples[name]['expect']} / {samples[name]['side_expect']}"}
        for mode in ("dir", "side"):
            case = next((c for c in benign if c["sample"] == name and c["mode"] == mode), None)
            row[mode] = "n/a" if case is None else f"exit {case['exit_code']}"
        benign_rows.append(row)
    lines += _table(benign_rows)
    unexpected = [c for c in benign if (c["exit_code"] == 0) != (_expected(samples[c["sample"]], c["mode"]) == "pass")]
    strict = [c for c in benign if c["exit_code"] != 0 and _expected(samples[c["sample"]], c["mode"]) != "pass"]
    lines += ["", f"Benign runs refused: {sum(c['exit_code'] != 0 for c in benign)} of {len(benign)}, of which "
              f"{len(strict)} are the expected strict refusals above and {len(unexpected)} are unexpected.", ""]
    first_messages = {c["sample"]: c["message"] for c in benign if c["exit_code"] != 0 and c["mode"] == "side"}
    if first_messages:
        lines += ["What the strict refusals say (side mode):", ""]
        lines += [f"- `{name}`: {message}" for name, message in first_messages.items()]
        lines += [""]
    lines += ["## Expansion pickles", "",
              "They import nothing, so nothing can run; the bar is a bounded, typed outcome.", ""]
    lines += _table([{"file": c["sample"], "mode": c["mode"], "exit": c["exit_code"], "seconds": c["seconds"],
                      "crashed": c["crashed"]} for c in cases if c["kind"] == "expansion"])
    check = results["hook_self_check"]
    lines += ["", "## The watch itself", "",
              f"Self-check: one payload unpickled with the standard library while the hook was armed was "
              f"{'detected' if check['detected'] else 'NOT detected'} ({len(check['events'])} events, "
              f"{len(check['sentinel_files'])} sentinel file), so a payload run during intake could not go unseen."]
    lines += ["", "## The installed CLI in a subprocess", "",
              "The same cases through `python -m cbpt_guard inspect`, with the audit hook installed in the child.", ""]
    lines += _table([{"file": r["sample"], "mode": r["mode"], "exit (subprocess)": r["exit_code"],
                      "exit (in process)": r["in_process_exit_code"], "events": len(r["events"]),
                      "sentinel files": len(r["sentinel_files"]), "seconds": r["seconds"]}
                     for r in results["cli_subprocess"]])
    lines += ["", "## Every malicious file", "", "<details><summary>exit codes per mode</summary>", ""]
    per_sample = []
    for name in [n for n, s in samples.items() if s["kind"] == "malicious"]:
        row = {"file": name, "family": samples[name]["family"], "shape": samples[name]["shape"]}
        for mode in MODES:
            case = next((c for c in malicious if c["sample"] == name and c["mode"] == mode), None)
            row[mode] = "n/a" if case is None else case["exit_code"]
        per_sample.append(row)
    lines += _table(per_sample)
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples (a quick check)")
    options = parser.parse_args()
    results = run(options.out, options.limit)
    (options.out / "results").mkdir(parents=True, exist_ok=True)
    # One case per line: the file stays small enough to diff.
    cases = ",\n  ".join(json.dumps(case, separators=(",", ":")) for case in results["cases"])
    rest = json.dumps({k: v for k, v in results.items() if k != "cases"}, indent=1)
    (options.out / "results" / "malicious.json").write_text(rest[:-2] + ',\n "cases": [\n  ' + cases + "\n ]\n}\n")
    (options.out / "MALICIOUS.md").write_text(render(results))
    malicious = [c for c in results["cases"] if c["kind"] == "malicious"]
    print(f"{len(results['cases'])} runs in {results['seconds']} s; malicious accepted "
          f"{sum(c['exit_code'] == 0 for c in malicious)}, crashed {sum(c['crashed'] for c in results['cases'])}, "
          f"payloads executed {sum(c['executed'] for c in results['cases'])}")


if __name__ == "__main__":
    main()
