#!/usr/bin/env bash
# The Action's gate step: run `python -m cbpt_guard.cli.action` with the step's environment, either with
# the interpreter the setup step made (CBPT_GUARD_PYTHON) or, when CBPT_IMAGE names an image, inside it.
#
# In the image the inputs still arrive as environment variables: `docker run -e NAME` passes a variable
# by name, its value taken from this environment, so no input value is ever part of the command line.
# The workspace and the runner's temporary folder (step outputs, step summary, event payload) are mounted
# at their own paths, so every path the runner gave keeps its meaning inside the container.
set -euo pipefail

image="${CBPT_IMAGE:-}"
image="${image#"${image%%[![:space:]]*}"}"; image="${image%"${image##*[![:space:]]}"}"
if [ -z "$image" ]; then
  # -I: the workspace is the pull request's checkout; without it `python -m` would import a
  # `cbpt_guard/` folder placed there instead of the installed gate.
  exec "$CBPT_GUARD_PYTHON" -I -m cbpt_guard.cli.action
fi

# The setup step has checked the reference's form; check again, as this script may be run on its own.
if ! [[ "$image" =~ ^[a-z0-9][a-z0-9._:/-]*[a-z0-9](:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?$ ]]; then
  echo "::error::cbpt-guard: the image input is not an image reference"; exit 4
fi
if [[ "$image" != *@sha256:* ]]; then
  echo "::warning::cbpt-guard: the image is not pinned by digest; a tag can be moved to other contents"
fi
command -v docker >/dev/null 2>&1 || { echo "::error::cbpt-guard: the image input needs docker on the runner"; exit 4; }

args=(run --rm --user "$(id -u):$(id -g)" -e HOME=/tmp
      -v "$GITHUB_WORKSPACE:$GITHUB_WORKSPACE" -w "$GITHUB_WORKSPACE" -v "$RUNNER_TEMP:$RUNNER_TEMP")
if [ -n "${GITHUB_EVENT_PATH:-}" ] && [ -f "$GITHUB_EVENT_PATH" ] && [[ "$GITHUB_EVENT_PATH" != "$RUNNER_TEMP"/* ]]; then
  args+=(-v "$GITHUB_EVENT_PATH:$GITHUB_EVENT_PATH:ro")
fi
# A GPU only where one answers and the device input allows it.
if [ "${CBPT_DEVICE:-auto}" != cpu ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  args+=(--gpus all)
fi
# The step's inputs and the runner variables the gate reads, by name; no other token (ACTIONS_*, GITHUB_TOKEN)
# goes in. The entry point itself keeps CBPT_TOKEN out of the environment of what parses the checkpoints.
for name in $(compgen -e | grep -E '^CBPT_') GITHUB_ACTIONS GITHUB_REPOSITORY GITHUB_EVENT_NAME GITHUB_EVENT_PATH \
    GITHUB_STEP_SUMMARY GITHUB_OUTPUT GITHUB_API_URL GITHUB_SERVER_URL GITHUB_WORKSPACE GITHUB_SHA GITHUB_REF \
    HF_HUB_OFFLINE TRANSFORMERS_OFFLINE; do
  case "$name" in CBPT_GUARD_PYTHON | CBPT_IMAGE) continue ;; esac
  if [ -n "${!name+set}" ]; then args+=(-e "$name"); fi
done
exec docker "${args[@]}" --entrypoint python "$image" -I -m cbpt_guard.cli.action
