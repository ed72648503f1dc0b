"""Contrastive trigger inversion (METHOD.md section 3): find the smallest trigger that collapses features.

A backdoor sends every stamped input to one region of feature space, whatever
the image shows. So a candidate trigger A is optimised so that the features of
stamped probes agree with one another (positives) and move away from the clean
features of the probes (negatives), with InfoNCE, while an adaptive penalty
shrinks it. The model is frozen; only the trigger's few parameters learn.

Measured choices (METHOD.md's warning about small models): the collapse
threshold sits just under what a real trigger reaches on procedural probes
(``collapse_cos`` 0.75: on a zoo BadNets model the real 4x4 patch took stamped
object-scene probes from a mean pairwise cosine of 0.49 to 0.77, while clean
probes of a clean model sit near 0.3-0.5), the penalty weight moves gently
(x or / 1.5), and success is re-checked on a fixed probe subset rather than
the noisy training batch.

The optional text term (``toward``: one class's text embedding) adds the mean
cosine between the stamped features and that class to what the trigger
maximises. Without it, a small model's inversion tends to fall into the same
universal patterns on every model (a texture, a blurry digit), and a backdoor
whose trigger is weaker than those patterns is never found. Aimed at the
backdoor's class, the patch carries nearly every probe into it; aimed at a
class of a clean model, it collapses the features without carrying them
across (measured on the zoo; see cbpt_guard/detect/run.py's targeted stage).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from cbpt_guard.chunking import Chunker, bounds, images_at_once
from cbpt_guard.classifier import ZeroShotClassifier
from cbpt_guard.detect.budget import InversionBudget
from cbpt_guard.progress import FORWARD_ONLY, Deadline, Meter, Progress
from cbpt_guard.triggers import Trigger, make_trigger

__all__ = ["InversionBudget", "InversionResult", "info_nce", "invert", "mean_pairwise_cosine"]


@dataclass
class InversionResult:
    """The outcome of one family's inversion."""

    family: str
    trigger: Trigger
    collapsed: bool
    size: float
    collapse_cos: float
    steps_run: int
    seconds: float
    history: list[tuple[int, float, float, float]]  # (step, loss, size, check cosine)


def info_nce(triggered: torch.Tensor, clean: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the other stamped views as positives and all clean views as negatives.

    triggered, clean: (B, d) unit features of the same B probes. Returns a scalar.
    """
    batch = triggered.shape[0]
    self_mask = torch.eye(batch, dtype=torch.bool, device=triggered.device)
    sim_pos = (triggered @ triggered.T / temperature).masked_fill(self_mask, float("-inf"))  # (B, B)
    sim_neg = triggered @ clean.T / temperature  # (B, B)
    log_prob = torch.cat([sim_pos, sim_neg], dim=1).log_softmax(dim=1)[:, :batch]  # (B, B)
    return -log_prob.masked_select(~self_mask).mean()


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    """Mean cosine between distinct rows of unit features (N, d)."""
    n = features.shape[0]
    gram = features @ features.T  # (N, N)
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


def step_work(budget: InversionBudget) -> float:
    """One inversion step's image passes, the re-checks spread over the steps (:mod:`cbpt_guard.progress`)."""
    return budget.batch_size + budget.check_size / budget.check_every * FORWARD_ONLY


def inversion_work(budget: InversionBudget, probes: int) -> float:
    """A whole inversion's image passes: its steps, the probes' clean features, and the evidence read after it."""
    return budget.steps * step_work(budget) + 3 * probes * FORWARD_ONLY


def invert(classifier: ZeroShotClassifier, probes: torch.Tensor, family: str, budget: InversionBudget,
           seed: int, toward: torch.Tensor | None = None, *, progress: Progress | None = None,
           stage: str | None = None, deadline: Deadline | None = None) -> InversionResult:
    """Invert one trigger family on ``probes`` (N, 3, S, S) in [0, 1]; deterministic for a seed.

    ``toward`` (d,), a unit class text embedding, aims the inversion at that
    class with the text term (module docstring); None leaves it label-free.
    Every one of ``budget.steps`` runs, whatever the clock says: ``deadline``
    can only abort the run (:class:`~cbpt_guard.errors.TimeLimitExceeded`);
    ``progress`` hears about it as ``stage`` (default: "<family> inversion").
    """
    started = time.perf_counter()
    device = classifier.device
    probes = probes.to(device)
    generator = torch.Generator().manual_seed(seed)
    trigger = make_trigger(family, probes.shape[-1], seed, device)
    optimiser = torch.optim.Adam(trigger.parameters(), lr=budget.lr)
    stage = stage or f"{family} inversion"
    clean = classifier.in_chunks(probes, classifier.features, len(probes), stage)  # (N, d)
    check = probes[: budget.check_size]
    penalty, best, history = budget.penalty_init, None, []
    meter = Meter(progress, stage, budget.steps, deadline, work=step_work(budget))
    chunker = Chunker(images_at_once(classifier, min(budget.batch_size, len(probes)), grad=True), stage)
    step = 0
    for step in range(1, budget.steps + 1):
        index = torch.randperm(len(probes), generator=generator, device="cpu")[: budget.batch_size].to(device)
        batch, weight = probes[index], penalty
        loss = chunker.run(lambda size, batch=batch, index=index, weight=weight: _step_gradients(
            classifier, trigger, batch, clean[index], weight, budget, toward, size))
        optimiser.step()
        if step % budget.check_every == 0 or step == budget.steps:
            with torch.no_grad():
                cosine = mean_pairwise_cosine(classifier.in_chunks(check, lambda chunk: classifier.features(
                    trigger(chunk)), len(check), stage))
                current = float(trigger.size())
            history.append((step, float(loss), current, cosine))
            if cosine >= budget.collapse_cos:
                penalty *= budget.penalty_factor
                if best is None or current < best[0]:
                    best = (current, cosine, trigger.state())
            else:
                penalty /= budget.penalty_factor
        meter.advance(step)
    if best is not None:
        trigger.load_state_dict(best[2])
        size, cosine, collapsed = best[0], best[1], True
    else:
        size, cosine, collapsed = history[-1][2], history[-1][3], False
    return InversionResult(family, trigger.requires_grad_(False), collapsed, size, cosine, step,
                           time.perf_counter() - started, history)


def _step_gradients(classifier: ZeroShotClassifier, trigger: Trigger, batch: torch.Tensor, clean: torch.Tensor,
                    penalty: float, budget: InversionBudget, toward: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """Zero the trigger's gradients and fill them with one step's; returns the step's loss (detached).

    ``batch`` (B, 3, S, S) and its clean features ``clean`` (B, d). When the
    batch fits in one ``chunk`` it goes through the model at once. Otherwise
    InfoNCE, which couples every image of the batch, is first computed on
    features gathered chunk by chunk without a graph; its gradient with respect
    to those features is then pushed through the model chunk by chunk (the
    chunks' graphs are rebuilt one at a time), which sums to the same gradient.
    """
    trigger.zero_grad(set_to_none=True)
    if chunk >= len(batch):
        stamped = classifier.features(trigger(batch))  # (B, d)
        loss = _loss(stamped, clean, trigger.size(), penalty, budget, toward)
        loss.backward()
        return loss.detach()
    parts = bounds(len(batch), chunk)
    with torch.no_grad():
        gathered = torch.cat([classifier.features(trigger(batch[start:end])) for start, end in parts])  # (B, d)
    gathered.requires_grad_(True)
    loss = _loss(gathered, clean, trigger.size(), penalty, budget, toward)
    loss.backward()  # the size penalty's gradient reaches the trigger; the rest stops at gathered.grad
    for start, end in parts:
        classifier.features(trigger(batch[start:end])).backward(gathered.grad[start:end])  # (b, d)
    return loss.detach()


def _loss(stamped: torch.Tensor, clean: torch.Tensor, size: torch.Tensor, penalty: float, budget: InversionBudget,
          toward: torch.Tensor | None) -> torch.Tensor:
    """InfoNCE of stamped (B, d) against clean (B, d) features, the size penalty, and the text term when aimed."""
    loss = info_nce(stamped, clean, budget.temperature) + penalty * size
    if toward is not None:
        loss = loss - budget.text_weight * (stamped @ toward).mean()
    return loss
