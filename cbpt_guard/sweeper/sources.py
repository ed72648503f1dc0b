"""Where a sweep's checkpoints come from: a folder tree, a list file, a hub mirror, an MLflow model registry.

A source is named the way open_clip names a model (a prefix, then the rest):

- a folder (no prefix): every model directory in the tree, and every loose
  weights file outside one;
- ``list:FILE`` (or a ``.txt``/``.lst`` file): one checkpoint path per line,
  relative to the list's folder; blank lines and ``#`` comments skipped;
- ``hub:DIR``: a hub mirror laid out as ``org/name/revision/``; each revision
  folder is one checkpoint, shown as ``org/name@revision``;
- ``models:/NAME`` (every version), ``models:/NAME/VERSION`` or
  ``models:/NAME@ALIAS``: versions of an MLflow registered model, and
  ``mlflow:TRACKING_URI`` for every version of every registered model there.
  Their artifacts are downloaded under the sweep's output folder first.

Every candidate is identified by the SHA-256 of its files (:mod:`.identity`),
read here as bytes only: nothing is parsed or loaded before intake.
"""

from __future__ import annotations

import os
from pathlib import Path

from cbpt_guard.errors import UsageError
from cbpt_guard.sweeper.identity import digest_files
from cbpt_guard.sweeper.records import Candidate

MODEL_MARKERS = frozenset({
    "open_clip_config.json", "config.json", "cbpt_manifest.json", "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin"})
"""A folder holding any of these is one model directory: its files belong to one checkpoint."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".joblib",
                   ".sav")
"""Loose files with these suffixes are checkpoints of their own (and pickles among them are scanned as such)."""
LIST_SUFFIXES = (".txt", ".lst")
CONFIG_NAMES = ("open_clip_config.json", "config.json")


def discover(sources: list[str], *, staging: Path, tracking_uri: str | None = None) -> list[Candidate]:
    """Every candidate of every source, sorted by name, each path once; a missing source is a UsageError."""
    found: dict[str, Candidate] = {}
    for source in sources:
        for name, path, kind in _expand(source, staging, tracking_uri):
            key = str(Path(path).resolve())
            if key not in found:
                digest, files = digest_files(Path(path))
                found[key] = Candidate(name=name, path=key, source=kind, digest=digest, files=files)
    return sorted(found.values(), key=lambda c: (c.name, c.path))


def _expand(source: str, staging: Path, tracking_uri: str | None) -> list[tuple[str, str, str]]:
    """(name, path, source kind) of each checkpoint one source names."""
    if source.startswith("models:/"):
        return _mlflow(staging, tracking_uri, source)
    if source.startswith("mlflow:"):
        return _mlflow(staging, source.removeprefix("mlflow:"), None)
    if source.startswith("hub:"):
        return _hub(Path(source.removeprefix("hub:")))
    if source.startswith("list:"):
        return _list_file(Path(source.removeprefix("list:")))
    path = Path(source)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _list_file(path)
    if not path.exists():
        raise UsageError(f"sweep source {source!r} does not exist")
    return _folder(path)


def _folder(root: Path) -> list[tuple[str, str, str]]:
    """Model directories and loose weights files in the tree under ``root`` (links not followed)."""
    if root.is_file() or _is_model_dir(root):
        return [(root.name, str(root), "folder")]
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs.sort()
        kept = []
        for name in dirs:
            child = here / name
            if name.startswith(".") or child.is_symlink():
                continue
            if _is_model_dir(child):
                found.append((child.relative_to(root).as_posix(), str(child), "folder"))
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            file = here / name
            if name.lower().endswith(WEIGHT_SUFFIXES) and file.is_file() and not file.is_symlink():
                found.append((file.relative_to(root).as_posix(), str(file), "folder"))
    return found


def _is_model_dir(folder: Path) -> bool:
    try:
        return any((folder / marker).is_file() for marker in MODEL_MARKERS)
    except OSError:
        return False


def _hub(root: Path) -> list[tuple[str, str, str]]:
    """Each ``org/name/revision/`` folder of a hub mirror, whatever it holds (an empty one is inconclusive)."""
    if not root.is_dir():
        raise UsageError(f"hub mirror {str(root)!r} is not a folder")
    found = []
    for revision in sorted(root.glob("*/*/*")):
        if revision.is_dir() and not any(part.startswith(".") for part in revision.relative_to(root).parts):
            org, name, rev = revision.relative_to(root).parts
            found.append((f"{org}/{name}@{rev}", str(revision), "hub"))
    return found


def _list_file(path: Path) -> list[tuple[str, str, str]]:
    """The checkpoints a list file names; a line naming nothing is a UsageError with its line number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read list file {str(path)!r}: {error}") from None
    found = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not target.exists():
            raise UsageError(f"{path}:{number}: {entry!r} does not exist")
        found.append((entry, str(target), "list"))
    return found


def _mlflow(staging: Path, tracking_uri: str | None, uri: str | None) -> list[tuple[str, str, str]]:
    """Download the registered versions ``uri`` names (all of them when None) and point at each checkpoint."""
    try:
        import mlflow.artifacts
        from mlflow import MlflowClient
    except ImportError:
        raise UsageError("an MLflow source needs mlflow: pip install 'cbpt-guard[sweep]' mlflow") from None
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise UsageError(f"{uri}: no MLflow tracking URI (pass --tracking-uri or set MLFLOW_TRACKING_URI)")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        versions = _versions(client, uri)
    except Exception as error:  # noqa: BLE001 - any registry problem is one line naming the source
        raise UsageError(f"MLflow registry {tracking_uri}: {type(error).__name__}: {error}") from None
    found = []
    for name, version in versions:
        target = staging / "mlflow" / _safe(name) / _safe(version)
        done = target / ".downloaded"
        if not done.is_file():
            target.mkdir(parents=True, exist_ok=True)
            # the version's own artifact URI, resolved through this client: a models:/ URI would be resolved
            # against the process-wide registry instead
            source = client.get_model_version_download_uri(name, version)
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target), tracking_uri=tracking_uri)
            done.write_text("")
        found.append((f"{name}/{version}", str(_checkpoint_in(target)), "mlflow"))
    return found


def _versions(client, uri: str | None) -> list[tuple[str, str]]:
    """(name, version) pairs: one version, an alias's version, every version of a name, or of every name."""
    if uri is None:
        names = sorted(m.name for m in client.search_registered_models())
        return [pair for name in names for pair in _versions(client, f"models:/{name}")]
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return [(name, str(client.get_model_version_by_alias(name, alias).version))]
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return [(name, str(client.get_model_version(name, version).version))]
    versions = client.search_model_versions(f"name='{rest}'")
    if not versions:
        raise LookupError(f"no registered model named {rest!r}")
    return sorted(((rest, str(v.version)) for v in versions), key=lambda pair: int(pair[1]))


def _checkpoint_in(folder: Path) -> Path:
    """The shallowest folder in downloaded artifacts that holds a model config, else the download itself."""
    configs = sorted((p for name in CONFIG_NAMES for p in folder.rglob(name)), key=lambda p: (len(p.parts), str(p)))
    return configs[0].parent if configs else folder


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) or "_"
