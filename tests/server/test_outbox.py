"""tnn.server.outbox: every event arrives in order, and a loop that falls behind is woken once, not per batch."""

from __future__ import annotations

import asyncio
import threading

from tnn.model.sampling import SamplingParams
from tnn.server.generation import ChoiceDelta, GenerationRequest, RequestHandle
from tnn.server.outbox import Outbox


def handle(name: str) -> RequestHandle:
    request = GenerationRequest(request_id=name, prompts=[[1]], sampling=SamplingParams(), max_tokens=8)
    return RequestHandle(request, on_cancel=lambda: None)


def test_a_busy_loop_gets_one_wake_up_for_every_batch_sent_meanwhile_and_keeps_the_order() -> None:
    async def scenario() -> tuple[int, list[str], list[str]]:
        loop = asyncio.get_running_loop()
        outbox = Outbox(loop)
        drains = 0
        drain = outbox._drain

        def counted_drain() -> None:
            nonlocal drains
            drains += 1
            drain()

        outbox._drain = counted_drain  # type: ignore[method-assign]
        first, second = handle("a"), handle("b")
        busy, sent = threading.Event(), threading.Event()

        def engine() -> None:
            busy.wait()
            for i in range(100):  # the loop is blocked meanwhile: one drain must carry all of these
                outbox.send([(first, ChoiceDelta(0, f"a{i}", [i])), (second, ChoiceDelta(0, f"b{i}", [i]))])
            sent.set()

        thread = threading.Thread(target=engine)
        thread.start()
        busy.set()
        sent.wait(10)  # blocks the loop while the engine thread sends
        thread.join()
        await asyncio.sleep(0.05)
        outbox.send([(first, ChoiceDelta(0, "last", [0]))])  # the loop caught up: a new wake-up
        await asyncio.sleep(0.05)
        texts = [first.queue.get_nowait().text for _ in range(first.queue.qsize())]  # type: ignore[union-attr]
        others = [second.queue.get_nowait().text for _ in range(second.queue.qsize())]  # type: ignore[union-attr]
        return drains, texts, others

    drains, texts, others = asyncio.run(scenario())
    assert drains == 2
    assert texts == [f"a{i}" for i in range(100)] + ["last"]
    assert others == [f"b{i}" for i in range(100)]


def test_sending_after_the_loop_closed_drops_the_events_without_raising() -> None:
    loop = asyncio.new_event_loop()
    outbox = Outbox(loop)
    loop.close()
    outbox.send([(handle("a"), ChoiceDelta(0, "x", [1]))])
    outbox.send([(handle("b"), ChoiceDelta(0, "y", [2]))])
    assert not outbox._scheduled and not outbox._events  # nothing kept, no drain left pending


def test_closing_delivers_what_is_queued_and_later_sends_are_dropped() -> None:
    async def scenario() -> tuple[list[str], int]:
        outbox = Outbox(asyncio.get_running_loop())
        first = handle("a")
        outbox.send([(first, ChoiceDelta(0, "queued", [1]))])  # the loop has not run: the wake-up is pending
        outbox.close()
        outbox.send([(first, ChoiceDelta(0, "late", [2]))])
        await asyncio.sleep(0.01)
        texts = [first.queue.get_nowait().text for _ in range(first.queue.qsize())]  # type: ignore[union-attr]
        return texts, len(outbox._events)

    assert asyncio.run(scenario()) == (["queued"], 0)
