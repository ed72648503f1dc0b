"""GitHub integration: find the checkpoints a pull request touches, gate each, and publish the outcome.

The stage has three parts, kept apart so that each can be tested on its own:

- :mod:`~cbpt_guard.github.discover`: changed files (or paths and globs) -> checkpoint targets;
- :mod:`~cbpt_guard.github.gate`: run the check on each target, write the reports, combine the
  exit codes; the check function is injectable;
- :mod:`~cbpt_guard.github.publish`: the step summary, one sticky PR comment and a check run with
  annotations, through PyGithub against a configurable API base URL (GitHub Enterprise).

A failure to publish never changes the gate's exit code and never hides the verdict: it is
recorded as a :class:`~cbpt_guard.github.client.PublishProblem` and shown next to it.
Nothing here imports torch at module level.
"""
