"""The Docker image's download size, computed from the registry: the sum of the wheels its lock file installs.

No Docker engine runs here, so the image is not built and nothing is measured
on it. What is computed instead: for each ``name==version`` in
requirements/action-gpu.lock (the set the Dockerfile installs), the size of the
wheel pip would pick for CPython 3.11 on manylinux x86_64, as this machine's
file registry holds it (sized on disk) or, for the rest, as PyPI's JSON API lists it.
Wheels are compressed much as image layers are, so their sum
approximates the compressed size of the image's dependency layer; unpacked, the
files take several times more (the installed size of the CPU-flavour set, with
the same CUDA torch build, is measured by benchmarks/action_setup.py). The base
image is not included: its size cannot be looked up from here.

Usage: python benchmarks/image_size.py [--lock requirements/action-gpu.lock] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL_INDEXES = (Path("/opt/pypi/simple"), Path("/opt/pypi-more/simple"))
_TAGS = ("cp311-cp311-manylinux", "cp311-abi3-manylinux", "cp38-abi3-manylinux", "cp39-abi3-manylinux",
         "cp310-abi3-manylinux", "abi3-manylinux", "py3-none-manylinux", "py3-none-any", "py2.py3-none-any")


def pins(lock: Path) -> list[tuple[str, str]]:
    """The lock's ``(name, version)`` pairs."""
    return [tuple(line.split("==")) for line in lock.read_text().splitlines()
            if line and not line.startswith("#")]


def wheel_for(name: str, version: str) -> dict:
    """The wheel pip would install here for ``name==version`` (CPython 3.11, manylinux x86_64): file and size."""
    wheels = _local_wheels(name, version) or _pypi_wheels(name, version)
    for tag in _TAGS:
        for wheel in wheels:
            filename = wheel["filename"]
            if tag in filename and (tag.endswith("any") or re.search(r"x86_64\.whl$", filename)):
                return {"name": name, "version": version, "file": filename, "bytes": wheel["size"],
                        "source": wheel["source"]}
    raise SystemExit(f"no wheel of {name}=={version} for CPython 3.11 on manylinux x86_64")


def _pypi_wheels(name: str, version: str) -> list[dict]:
    """The release's wheels as PyPI's JSON API lists them (filename, size)."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as answer:
        files = json.load(answer)["releases"].get(version, [])
    return [{"filename": f["filename"], "size": f["size"], "source": "PyPI JSON"}
            for f in files if f["filename"].endswith(".whl")]


def _local_wheels(name: str, version: str) -> list[dict]:
    """The release's wheels in this machine's file registries (pip's extra indexes here), sized on disk.

    Some pinned versions are served only by these (the public JSON API does not list them).
    """
    found = []
    for index in LOCAL_INDEXES:
        page = index / name / "index.html"
        if not page.is_file():
            continue
        for href in re.findall(r'href="([^"#]+\.whl)', page.read_text()):
            path = (page.parent / href).resolve()
            if path.is_file() and f"-{version}-" in path.name:
                found.append({"filename": path.name, "size": path.stat().st_size, "source": "local registry"})
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements" / "action-gpu.lock")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    rows = []
    for name, version in pins(args.lock):
        rows.append(wheel_for(name, version))
        time.sleep(0.2)  # one request at a time, gently
    rows.sort(key=lambda row: row["bytes"], reverse=True)
    total = sum(row["bytes"] for row in rows)
    cuda = sum(row["bytes"] for row in rows if row["name"].startswith(("nvidia-", "cuda-", "triton")))
    results = {"command": "python benchmarks/image_size.py", "lock": str(args.lock.relative_to(ROOT)),
               "wheels": rows, "total_bytes": total, "cuda_bytes": cuda}
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    (args.out / "results" / "image_size.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# The Docker image's size, computed (not measured)",
        "",
        f"Written by `{results['command']}`: the wheel sizes of every package in "
        f"`{results['lock']}`, the set the Dockerfile installs (CPython 3.11, manylinux x86_64).",
        "",
        f"- **All wheels: {total / 1e9:.2f} GB** ({len(rows)} packages), about the compressed size of the",
        "  image's dependency layer; the base image (`python:3.11-slim-bookworm`) comes on top and is not",
        "  included (no registry of images can be reached from here).",
        f"- Of that, the CUDA 13 libraries (`nvidia-*`, `cuda-*`, `triton`): {cuda / 1e9:.2f} GB.",
        "- Unpacked, the files take several times more: benchmarks/ACTION.md gives the measured installed size",
        "  of the CPU flavour's set, installed here with the same CUDA build of torch.",
        "",
        "| package | version | wheel | MB |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['version']} | `{r['file']}` | {r['bytes'] / 1e6:.1f} |" for r in rows[:15]]
    rest = rows[15:]
    lines.append(f"| {len(rest)} more | | | {sum(r['bytes'] for r in rest) / 1e6:.1f} |")
    sources = sorted({r["source"] for r in rows})
    lines += ["", "Sizes from: " + ", ".join(f"{s} ({sum(r['source'] == s for r in rows)} wheels)" for s in sources)
              + " (the local registry is this machine's file index, sized on disk)."]
    (args.out / "IMAGE.md").write_text("\n".join(lines) + "\n")
    print(f"{total / 1e9:.2f} GB in {len(rows)} wheels; wrote {args.out / 'IMAGE.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
