#!/usr/bin/env bash
# The Action's environment setup (action.yml calls it; so does benchmarks/action_setup.py, so what is
# timed is what runs). Two subcommands, both configured by environment only, never by arguments:
#
#   plan     decide how cbpt-guard will run and write the step outputs the cache steps need:
#              mode     install (a venv, cached), preinstalled (install: false) or image (a prebuilt image)
#              flavour  cpu or gpu: the torch build and onnxruntime package the venv gets
#              venv     the venv's path, key  the exact cache key, restore-prefix  a key prefix whose
#              entries share the dependencies (only the cbpt-guard package differs)
#   install  make the venv: nothing when the restored venv carries this plan's stamp (pip is not run at
#            all), the cbpt-guard package alone when only it changed, else everything from the lock
#            file; writes python= and save= (true when the cache should be saved).
#
# Inputs: CBPT_INSTALL (true|false), CBPT_PYTHON, CBPT_DEVICE (auto|cpu|cuda), CBPT_IMAGE (empty or an
# image reference), and the runner's RUNNER_TEMP, RUNNER_OS, RUNNER_ARCH, GITHUB_OUTPUT,
# GITHUB_ACTION_PATH. CBPT_TORCH_INDEX_URL, when set, replaces the flavour's torch index (a mirror;
# set and empty: the index pip is configured with).
set -euo pipefail

action_path="${GITHUB_ACTION_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CPU_TORCH_INDEX="https://download.pytorch.org/whl/cpu"
STAMP_NAME=".cbpt-guard-setup"
# Bump to invalidate every cached venv (a change in how the venv is built, not in what it holds).
LAYOUT=1

fail() { echo "::error::cbpt-guard: $1"; exit 4; }
output() { printf '%s=%s\n' "$1" "$2" >> "${GITHUB_OUTPUT:-/dev/null}"; }
sha() { sha256sum | cut -c1-16; }

validate() {
  case "${CBPT_PYTHON:-}" in
    *$'\n'* | "") fail "the python input must be one non-empty line" ;;
  esac
  case "${CBPT_INSTALL:-true}" in
    true | false) ;;
    *) fail "the install input must be true or false" ;;
  esac
  case "${CBPT_DEVICE:-auto}" in
    auto | cpu | cuda) ;;
    *) fail "the device input must be auto, cpu or cuda" ;;
  esac
  image="${CBPT_IMAGE:-}"
  image="${image#"${image%%[![:space:]]*}"}"; image="${image%"${image##*[![:space:]]}"}"
  # An image reference as docker parses it (registry/name:tag@sha256:digest); nothing that docker could
  # read as an option or a shell could read as code reaches the command line.
  if [ -n "$image" ] && ! [[ "$image" =~ ^[a-z0-9][a-z0-9._:/-]*[a-z0-9](:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?$ ]]; then
    fail "the image input is not an image reference (registry/name:tag or name@sha256:digest)"
  fi
}

# cpu when asked for or when this runner has no GPU; gpu when asked for (cuda) or when one answers.
flavour() {
  case "${CBPT_DEVICE:-auto}" in
    cpu) echo cpu ;;
    cuda) echo gpu ;;
    auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo gpu; else echo cpu; fi ;;
  esac
}

# What the cached venv depends on besides the lock: the interpreter (a venv links to it by path),
# the venv's own path (scripts in bin/ name it), and the cbpt-guard package's files.
interpreter_id() {
  "$CBPT_PYTHON" -I -c 'import os, platform, sys; print(platform.python_version(), os.path.realpath(sys.executable))'
}
package_hash() {
  (cd "$action_path" && find pyproject.toml README.md cbpt_guard policies templates -type f \
      ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha
}

# Sets mode, and for mode install also fl (flavour), lock, venv, deps (hash of what the dependencies
# rest on), prefix (the restore key prefix) and key; prints nothing.
compute() {
  validate
  if [ -n "$image" ]; then
    mode=image
  elif [ "${CBPT_INSTALL:-true}" = "false" ]; then
    mode=preinstalled
  else
    mode=install
  fi
  [ "$mode" = install ] || return 0
  fl="$(flavour)"
  lock="$action_path/requirements/action-$fl.lock"
  [ -f "$lock" ] || fail "no lock file for the $fl flavour ($lock)"
  venv="${RUNNER_TEMP:?RUNNER_TEMP is not set}/cbpt-guard-venv"
  interpreter="$(interpreter_id)" || fail "the python input ($CBPT_PYTHON) does not run"
  read -r pyver pyexe <<< "$interpreter"
  deps="$(printf '%s\n%s\n%s\n' "$LAYOUT" "$pyexe" "$venv" | sha)"
  prefix="cbpt-guard-${RUNNER_OS:-Linux}-${RUNNER_ARCH:-X64}-py$pyver-$fl-lock$(sha < "$lock")-$deps-"
  key="$prefix$(package_hash)"
}

plan() {
  compute
  output mode "$mode"
  if [ "$mode" != install ]; then
    output cache false
    return
  fi
  output flavour "$fl"
  output venv "$venv"
  output key "$key"
  output restore-prefix "$prefix"
  output cache true
}

pip_install() { "$venv/bin/python" -I -m pip install --disable-pip-version-check --no-input --quiet "$@"; }

install() {
  compute
  case "$mode" in
    image) output python ""; output save false; echo "cbpt-guard: running in the image; nothing to install"; return ;;
    preinstalled) output python "$CBPT_PYTHON"; output save false; return ;;
  esac
  want_deps="$(sha < "$lock")-$deps"
  want_package="${key#"$prefix"}"
  have_deps="" have_package=""
  if [ -x "$venv/bin/python" ] && [ -f "$venv/$STAMP_NAME" ]; then
    read -r have_deps have_package < "$venv/$STAMP_NAME" || true
  fi
  if [ "$have_deps" = "$want_deps" ] && [ "$have_package" = "$want_package" ]; then
    echo "cbpt-guard: the cached environment matches ($fl, lock $(sha < "$lock")); pip not run"
    output python "$venv/bin/python"
    output save false
    return
  fi
  if [ "$have_deps" != "$want_deps" ]; then
    echo "cbpt-guard: installing the $fl environment from $(basename "$lock")"
    rm -rf "$venv"
    "$CBPT_PYTHON" -I -m venv "$venv"
    # torch and torchvision first, from the flavour's index, without their dependencies: the CPU index
    # serves the CPU-only build; every other package, torch's dependencies included, comes from the
    # default index at the lock's exact versions.
    torch_pins=()
    while read -r line; do torch_pins+=("$line"); done < <(grep -E '^(torch|torchvision)==' "$lock")
    index=()
    if [ "${CBPT_TORCH_INDEX_URL+set}" = set ]; then
      [ -n "$CBPT_TORCH_INDEX_URL" ] && index=(--index-url "$CBPT_TORCH_INDEX_URL")
    elif [ "$fl" = cpu ]; then
      index=(--index-url "$CPU_TORCH_INDEX")
    fi
    pip_install --no-deps "${index[@]}" "${torch_pins[@]}"
    pip_install -r "$lock"
  else
    echo "cbpt-guard: the cached dependencies match; reinstalling the cbpt-guard package only"
  fi
  # The package itself, without touching the locked set (setuptools is in the lock for this build).
  pip_install --no-deps --no-build-isolation --force-reinstall "$action_path"
  "$venv/bin/python" -I -m pip check --disable-pip-version-check
  "$venv/bin/python" -I -m cbpt_guard --version
  printf '%s %s\n' "$want_deps" "$want_package" > "$venv/$STAMP_NAME"
  output python "$venv/bin/python"
  output save true
}

case "${1:-}" in
  plan) plan ;;
  install) install ;;
  *) echo "usage: action-setup.sh plan|install (configured by CBPT_* environment variables)" >&2; exit 4 ;;
esac
