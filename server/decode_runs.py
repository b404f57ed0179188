"""Decode runs: several decode steps of the batch in one native call, the sampler between them, no Python in
between (tnn.model.native_kernel.PoolStep.run; vLLM's multi-step scheduling, on the CPU).

On a 2-core machine the engine thread, the HTTP thread and the clients share the CPUs and the engine shares the
interpreter lock with the HTTP thread. Per step the engine used to take the lock back after the kernel (waiting
while the HTTP thread ran: a fifth of the engine's time at 16 streaming clients), sample, accept each row's token
and wake the event loop, which wrote one SSE chunk per stream. A run keeps the lock released for all its steps,
and hands the loop each stream's tokens of the run at once: one wake-up, one chunk per stream per run.

A run takes at most `--decode-run-steps` steps and lasts at most `--decode-run-ms` (judged by its mean step). It
starts only while the engine has nothing else to do (no request waiting, prefilling or queued) and ends after the
step in which a request arrives (or a call, a cancellation: `Engine._notify` sets the flag the kernel reads), so a
new request waits for one step, as without runs. It also ends after the step in which any row finishes, so every
row's state holds exactly what single steps would leave. Only rows the native sampler draws alone can run: not a
grammar, logprobs, stop strings (their text is matched in Python), penalties or a logit bias. A seeded row's race
keys come from its generator as single steps would draw them (`RunKeys`), so a seeded request gets the same tokens
either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tnn.model.native_kernel import RunRows
from tnn.model.sampling import race_key_draws
from tnn.server.engine_records import ChoiceSequence


def run_rows(sequences: Sequence[ChoiceSequence], eos_id: int | None, vocab: int) -> RunRows | None:
    """A run's per-row inputs for the batch, or None when some row needs Python between its steps."""
    temperature: list[float] = []
    top_k: list[int] = []
    top_p: list[float] = []
    min_p: list[float] = []
    remaining: list[int] = []
    stop_ids: list[list[int]] = []
    for seq in sequences:
        request, params = seq.tracker.request, seq.params
        left = request.max_tokens - len(seq.tokens)
        if (seq.matcher is not None or request.logprobs is not None or any(request.stop) or params.logit_bias
                or params.penalised or left < 1):  # fmt: skip
            return None
        temperature.append(0.0 if params.greedy else params.temperature)
        top_k.append(params.top_k if 0 < params.top_k < vocab else 0)
        top_p.append(params.top_p)
        min_p.append(params.min_p)
        remaining.append(left)
        ends = list(request.stop_token_ids)  # the ids `Engine._accept_token` finishes a row on
        if not request.ignore_eos:
            ends += [*([] if eos_id is None else [eos_id]), *request.eos_token_ids]
        stop_ids.append(ends)
    return RunRows(temperature, top_k, top_p, min_p, remaining, stop_ids)


class RunKeys:
    """The race keys of up to `steps` steps of a batch (step-major: keys[s * B + b]), drawn as single steps draw
    them (tnn.model.sampling.race_keys): the unseeded rows' from the global RNG (here in one draw), each seeded row's
    one per step from its generator; a greedy row (None here) draws none. `settle(steps_run)` then leaves every
    generator where `steps_run` single steps leave it."""

    def __init__(self, generators: Sequence[torch.Generator | None], steps: int, greedy: Sequence[bool]) -> None:
        batch = len(generators)
        self.steps = steps
        drawing = [b for b in range(batch) if not greedy[b]]
        unseeded = [b for b in drawing if generators[b] is None]
        seeded = [(b, g) for b in drawing if (g := generators[b]) is not None]
        self._seeded = [(g, g.get_state()) for _, g in seeded]  # before their draws: `settle` rewinds to here
        keys = [0] * (steps * batch)
        if unseeded:
            draws = race_key_draws(steps * len(unseeded))
            for i, b in enumerate(unseeded):
                keys[b::batch] = draws[i * steps : (i + 1) * steps]
        for b, generator in seeded:
            keys[b::batch] = race_key_draws(steps, generator)
        self.keys = keys

    def settle(self, steps_run: int) -> None:
        """Rewind each seeded row's generator and draw the `steps_run` keys the run used."""
        if steps_run == self.steps:
            return
        for generator, state in self._seeded:
            generator.set_state(state)
            race_key_draws(steps_run, generator)
