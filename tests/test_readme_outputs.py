"""README's example outputs are written by benchmarks/readme_outputs.py and compared by the slow example tests.

Here, fast: every README command the script runs is the one README shows, each has its block, and the
comparison it offers catches what it must (a changed word, a number moved past the tolerance).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("readme_outputs", ROOT / "benchmarks" / "readme_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_marks_an_output_block_under_each_command_the_script_runs():
    readme_outputs = _module()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = readme_outputs.readme_blocks(text)
    for name, args in readme_outputs.COMMANDS.items():
        command = "cbpt-guard " + " ".join(args)
        assert command in text, command
        assert text.index(command) < text.index(f"<!-- readme-output: {name} -->")
        assert blocks[name][0].startswith(("PASS:", "PURIFIED:", "BLOCK:", "PURIFY:", "INCONCLUSIVE:")), blocks[name]
        assert blocks[name][-1].startswith("exit ")
    assert "cbpt-guard zoo images --out data/ --per-class " + str(readme_outputs.PER_CLASS) in text


def test_rewriting_the_readme_with_its_own_blocks_changes_nothing():
    readme_outputs = _module()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_outputs.rewrite(text, readme_outputs.readme_blocks(text)) == text


def test_the_comparison_catches_changed_words_and_numbers_past_the_tolerance():
    readme_outputs = _module()
    shown = ["BLOCK: examples/backdoored under policy strict (enforce)", "  - ASR 5.16% > 2.00%", "exit 1"]
    assert readme_outputs.differences(shown, list(shown)) == []
    assert readme_outputs.differences(shown, [shown[0], "  - ASR 5.90% > 2.00%", "exit 1"]) == []
    assert readme_outputs.differences(shown, [shown[0], "  - ASR 7.50% > 2.00%", "exit 1"])
    assert readme_outputs.differences(shown, [shown[0].replace("BLOCK", "PASS"), *shown[1:]])
    assert readme_outputs.differences(shown, shown[:2])
    assert readme_outputs.differences(shown, [*shown[:2], "exit 0"])
    assert readme_outputs.differences(["CA drop 2.1 points"], ["CA drop 2.8 points"]) == []
    assert readme_outputs.differences(["CA drop 2.1 points"], ["CA drop 3.2 points"])
    score = ["detection: backdoor evidence found (score 0.900, threshold 0.999), max |diff| 1.4e-05"]
    assert readme_outputs.differences(score, ["detection: backdoor evidence found (score 0.910, threshold 0.999), "
                                              "max |diff| 3.1e-05"]) == []
    assert readme_outputs.differences(score, ["detection: backdoor evidence found (score 0.600, threshold 0.999), "
                                              "max |diff| 1.4e-05"])


def test_file_lines_are_left_out_and_the_model_named_as_readme_names_it(tmp_path):
    readme_outputs = _module()
    stdout = (f"PASS: {tmp_path}/examples/backdoored under policy balanced (enforce)\n"
              "export: parity ok (classifier.onnx; provider CPUExecutionProvider, max |diff| 1e-05)\n"
              "html: report.html\nonnx: classifier.onnx\nprompts: purified/prompts.safetensors\nexit 0\n")
    assert readme_outputs.block_lines(stdout, tmp_path / "examples" / "backdoored") == [
        "PASS: examples/backdoored under policy balanced (enforce)",
        "export: parity ok (classifier.onnx; provider CPUExecutionProvider, max |diff| 1e-05)",
        "exit 0",
    ]
