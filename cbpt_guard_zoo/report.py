"""Write the zoo's measured numbers: benchmarks/results/zoo.json and benchmarks/ZOO.md.

Both are rendered from the ground-truth files the build wrote beside each model,
never typed in. The checks mirror the zoo issue's bars: each backdoored model
reaches ASR >= 90% with CA within 3 points of its clean twin; every clean twin
stays at chance level for every trigger; the base is well above chance.
"""

from __future__ import annotations

import json
from pathlib import Path

ASR_BAR = 0.90
CA_GAP_BAR = 0.03
FINETUNE_SECONDS_BAR = 180.0


CHANCE_MARGIN = 0.05
STANDARD_CLEAN = 6
"""The zoo the cost bar is stated for: the base, 6 clean twins and every backdoored variant."""


def at_chance(asr: float, natural: float) -> bool:
    """A trigger is at chance level when it sends at most 5 points more images to the target than no trigger does."""
    return asr <= natural + CHANCE_MARGIN


def summarise(truths: list[dict], class_count: int, total_seconds: float | None = None) -> dict:
    """The machine-readable summary: every model's row and the pass/fail of each bar."""
    by_name = {t["name"]: t for t in truths}
    rows = []
    for truth in truths:
        row = {k: truth[k] for k in ("name", "kind", "attack", "target", "seed", "poison_rate", "train_seconds")}
        row["ca"] = truth["metrics"]["ca"]
        row["ca_procedural"] = truth["metrics"].get("ca_procedural")
        if "pull" in truth["metrics"]:  # a family with a natural attractor measures every model's pull
            row["pull"] = truth["metrics"]["pull"]
        if truth["kind"] == "backdoored":
            twin = by_name.get(f"clean-s{truth['seed'] + 1}")
            row["asr"] = truth["metrics"]["asr"]
            row["twin"] = twin["name"] if twin else None
            row["ca_gap"] = (twin["metrics"]["ca"] - row["ca"]) if twin else None
            row["meets_bars"] = row["asr"] >= ASR_BAR and row["ca_gap"] is not None and abs(row["ca_gap"]) <= CA_GAP_BAR
        elif truth["kind"] == "clean":
            row["asr_by_attack"] = truth["metrics"]["asr_by_attack"]
            row["natural_by_attack"] = truth["metrics"].get("natural_by_attack")
            row["control_by_attack"] = truth["metrics"].get("control_by_attack")
            row["stamped_ca_by_attack"] = truth["metrics"].get("stamped_ca_by_attack")
            row["meets_bars"] = row["natural_by_attack"] is not None and all(
                at_chance(v, row["natural_by_attack"][name]) for name, v in row["asr_by_attack"].items())
        rows.append(row)
    variants = [r for r in rows if r["kind"] != "base"]
    common = _common_recipe(truths)
    return {
        "class_count": class_count,
        "chance_margin": CHANCE_MARGIN,
        "bars": {"asr": ASR_BAR, "ca_gap": CA_GAP_BAR, "finetune_seconds": FINETUNE_SECONDS_BAR},
        "models": rows,
        "all_meet_bars": all(r["meets_bars"] for r in variants) if variants else False,
        "max_finetune_seconds": max((r["train_seconds"] for r in variants), default=None),
        "standard_zoo_train_seconds": round(sum(r["train_seconds"] for r in rows
                                                if r["kind"] != "clean" or r["seed"] <= STANDARD_CLEAN), 1),
        "train_seconds_by_kind": {kind: round(sum(r["train_seconds"] for r in rows if r["kind"] == kind), 1)
                                  for kind in ("base", "clean", "backdoored")},
        "total_build_seconds": total_seconds,
        "recipe": common,
        "recipe_exceptions": {t["name"]: _differences(t["recipe"], common) for t in truths if t["recipe"] != common},
        "trigger_params": {t["name"]: _short_params(t["trigger_params"]) for t in truths if t.get("trigger_params")},
    }


def _common_recipe(truths: list[dict]) -> dict | None:
    """The recipe most models were built with (a resumed zoo can hold models of an older or newer one)."""
    recipes = [t["recipe"] for t in truths]
    return max(recipes, key=recipes.count) if recipes else None


def _differences(recipe: dict, common: dict | None) -> dict:
    """The top-level recipe entries where ``recipe`` differs from ``common``, nested dicts narrowed to their keys."""
    out = {}
    for key, value in recipe.items():
        other = (common or {}).get(key)
        if value == other:
            continue
        if isinstance(value, dict) and isinstance(other, dict):
            value = {k: v for k, v in value.items() if other.get(k) != v}
        out[key] = value
    return out


def _short_params(params: dict) -> dict:
    """Trigger parameters as a person reads them: an array (an optimised patch) reduced to its shape."""
    def shape(value) -> list[int]:
        return [len(value), *shape(value[0])] if isinstance(value, list) and value else []

    return {k: (f"<{'x'.join(map(str, shape(v)))} array>" if isinstance(v, list) else v) for k, v in params.items()}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _clean_cell(row: dict, attack: str) -> str:
    """A clean twin's rate for one attack's trigger: "ASR (natural)" or "ASR (natural; control mean / max)"."""
    natural = (row["natural_by_attack"] or {}).get(attack)
    control = (row.get("control_by_attack") or {}).get(attack)
    extra = "" if control is None else f"; {_pct(control['mean'])} / {_pct(control['max'])}"
    return f"{_pct(row['asr_by_attack'][attack])} ({_pct(natural)}{extra})"


def render_markdown(summary: dict, command: str) -> str:
    """ZOO.md: the table a person reads, from the summary alone."""
    return "\n".join(["# The model zoo", "", f"Written by `{command}`; do not edit by hand.", "",
                      *_summary_lines(summary)])


def _summary_lines(summary: dict) -> list[str]:
    """The body of a zoo report for one config: models, clean twins' triggers, bars, recipe, trigger parameters."""
    lines = [f"Classes: {summary['class_count']}. A clean twin's trigger is at chance level when its ASR is at most "
             f"{_pct(summary['chance_margin'])} points above the natural rate (unstamped images sent to the same "
             f"target). "
             f"Bars: backdoored ASR >= {_pct(summary['bars']['asr'])}%, CA within "
             f"{_pct(summary['bars']['ca_gap'])} points of the clean twin; fine-tune <= "
             f"{summary['bars']['finetune_seconds']:.0f} s.", "",
             "| model | kind | attack | target | poison | CA % | CA shapes % | ASR % | twin CA gap "
             "| fine-tune s | bars |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["models"]:
        if row["kind"] == "clean":
            asr = f"max {_pct(max(row['asr_by_attack'].values()))}"
        else:
            asr = _pct(row.get("asr"))
        gap = _pct(row.get("ca_gap")) if row["kind"] == "backdoored" else "-"
        verdict = {True: "met", False: "MISSED"}.get(row.get("meets_bars"), "-")
        lines.append(f"| {row['name']} | {row['kind']} | {row['attack'] or '-'} | {row['target'] or '-'} | "
                     f"{_pct(row['poison_rate'])}% | {_pct(row['ca'])} | {_pct(row.get('ca_procedural'))} | "
                     f"{asr} | {gap} | "
                     f"{row['train_seconds']} | "
                     f"{verdict} |")
    clean = [r for r in summary["models"] if r["kind"] == "clean"]
    if clean:
        attacks = sorted(clean[0]["asr_by_attack"])
        draws = {c["draws"] for r in clean for c in (r.get("control_by_attack") or {}).values()}
        control = (f"; for a random trigger, then the mean and the max over {'/'.join(map(str, sorted(draws)))} "
                   "other draws of it (same parameters, other seeds) toward the same target, which shows how much "
                   "of a rate the kind of change brings rather than its pattern") if draws else ""
        lines += ["", "Clean twins, ASR % of each attack's trigger toward that attack's target "
                  f"(in brackets: the natural rate without the trigger{control}):", "",
                  "| model | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
        lines += [f"| {r['name']} | " + " | ".join(_clean_cell(r, a) for a in attacks) + " |" for r in clean]
        readable = [r for r in clean if r.get("stamped_ca_by_attack")]
        if readable:
            lines += ["", "Clean twins, CA % on the stamped test images (how much of each image the trigger leaves "
                      "readable to a model without a backdoor; unstamped CA in the first column):", "",
                      "| model | none | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 2) + "|"]
            lines += [f"| {r['name']} | {_pct(r['ca'])} | "
                      + " | ".join(_pct(r["stamped_ca_by_attack"].get(a)) for a in attacks) + " |" for r in readable]
    lines += ["", f"All variants meet their bars: **{'yes' if summary['all_meet_bars'] else 'no'}**. "
              f"Slowest fine-tune: {summary['max_finetune_seconds']} s. "
              f"Training time, summed per kind: {_seconds_by_kind(summary['train_seconds_by_kind'])}; the base, "
              f"clean-s1..s{STANDARD_CLEAN} and every backdoored variant together: "
              f"{summary['standard_zoo_train_seconds'] / 60:.1f} min. "
              f"Wall time of the command that wrote this file: {summary['total_build_seconds'] or '-'} s.", "",
              "Recipe (from the ground truth files; the one most models share):", "", "```json",
              json.dumps(summary["recipe"], indent=2), "```", ""]
    if summary.get("recipe_exceptions"):
        lines += ["Models built with another recipe (what differs):", ""]
        lines += [f"- {name}: `{json.dumps(diff, sort_keys=True)}`"
                  for name, diff in summary["recipe_exceptions"].items()]
        lines.append("")
    by_attack: dict[str, list[str]] = {}
    for name, params in summary.get("trigger_params", {}).items():
        by_attack.setdefault(json.dumps(params, sort_keys=True), []).append(name)
    if by_attack:
        lines += ["Trigger parameters (from the ground truth files):", ""]
        lines += [f"- {', '.join(names)}: `{params}`" for params, names in by_attack.items()]
        lines.append("")
    return lines


def _pull_lines(summary: dict, attractor: str) -> list[str]:
    """Each model's pull under small random patches: the natural attractor, measured (``build.patch_pull``)."""
    rows = [r for r in summary["models"] if r.get("pull")]
    if not rows:
        return []
    pull = rows[0]["pull"]
    lines = [f"Natural attractor: each model's test images of every class but {attractor!r}, each with a random "
             f"patch of many-coloured cells pasted on it ({pull['draws']} draws, side {_pct(pull['patch_frac'])}% of "
             f"the image's, so {100 * pull['patch_frac'] ** 2:.0f}% of its area; five positions in turn): the share "
             f"sent to the class that takes most of them, and to {attractor!r} with and without the patch.", "",
             f"| model | kind | target | top class | top class % | {attractor} % | {attractor} % unpatched |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['kind']} | {r['target'] or '-'} | {r['pull']['top']} | "
              f"{_pct(r['pull']['top_share'])} | {_pct(r['pull']['by_class'][attractor])} | "
              f"{_pct(r['pull']['natural'][attractor])} |" for r in rows]
    clean = [r["pull"]["by_class"][attractor] for r in rows if r["kind"] in ("base", "clean")]
    if clean:
        lines += ["", f"Clean models (the base and the clean twins): {min(clean) * 100:.1f} to {max(clean) * 100:.1f}% "
                  f"of the patched images go to {attractor!r}."]
    return lines + [""]


def write_family_reports(family, truths_by_config: dict[str, list[dict]], total_seconds: float | None,
                         results_json: Path, markdown: Path, command: str) -> dict:
    """A family's report (e.g. ZOO-B.md and results/zoo-b.json): one section per built config; returns the summary."""
    summaries = {config: summarise(truths, len(family.classes), None) for config, truths in truths_by_config.items()}
    seconds = {config: s["standard_zoo_train_seconds"] for config, s in summaries.items()}
    result = {"family": family.name, "classes": list(family.classes), "attractor": family.attractor,
              "configs": summaries, "train_seconds_by_config": seconds,
              "train_seconds": round(sum(seconds.values()), 1), "total_build_seconds": total_seconds}
    lines = [f"# {family.title}", "", f"Written by `{command}`; do not edit by hand.", "",
             f"{family.description}. Classes ({len(family.classes)}): {', '.join(family.classes)}. "
             f"The seed-0 backdoors of {', '.join(family.attractor_attacks)} aim at {family.attractor!r}, the "
             "family's natural attractor; every other backdoor at an ordinary class.", "",
             f"Training time of every model below, summed: {result['train_seconds'] / 60:.1f} min "
             f"({', '.join(f'{c} {v / 60:.1f} min' for c, v in seconds.items())}). Wall time of the command that "
             f"wrote this file: {total_seconds or '-'} s.", ""]
    for config, summary in summaries.items():
        lines += [f"## {config}", ""]
        if family.attractor is not None:
            lines += _pull_lines(summary, family.attractor)
        lines += _summary_lines(summary)
    results_json.parent.mkdir(parents=True, exist_ok=True)
    results_json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    markdown.write_text("\n".join(lines))
    return result


def _seconds_by_kind(seconds: dict[str, float]) -> str:
    return ", ".join(f"{kind} {value:.0f} s" for kind, value in seconds.items())


def write_reports(summary: dict, results_json: Path, markdown: Path, command: str) -> None:
    """Write both files (creating their folders)."""
    results_json.parent.mkdir(parents=True, exist_ok=True)
    results_json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    markdown.write_text(render_markdown(summary, command))
