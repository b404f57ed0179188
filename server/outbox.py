"""Events from the engine thread to the requests' asyncio queues, with at most one wake-up of the loop in flight.

While the loop has not yet drained the previous batch, new events join that batch instead, so an event loop that
falls behind costs the engine nothing more, and one that keeps up sees every iteration's events as before, in order.

The wake-up is a write to an eventfd (a pipe where there is none) that the loop watches, made while the engine
thread keeps the interpreter lock. `loop.call_soon_threadsafe` writes to the loop's self-pipe through
`socket.send`, which lets go of the lock: the loop thread, just woken by that very write, takes the lock and runs
its callbacks (queues, SSE framing, socket writes) while the engine waits to get the lock back. py-spy showed a
third of the engine thread's time at one streaming client in that wait. Keeping the lock over the write, the loop
thread instead runs while the engine is inside its next native call (the decode kernel lets go of the lock), so
the two threads overlap instead of taking turns.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading

from tnn.server.generation import Event, RequestHandle

logger = logging.getLogger(__name__)

WAKE = (1).to_bytes(8, "little")  # an eventfd takes 8 bytes (a counter increment); a pipe takes any


def _write_keeping_lock() -> ctypes._CFuncPtr | None:
    """libc's write(2) called with the interpreter lock held (ctypes.PyDLL), or None where libc is not found."""
    try:
        write = ctypes.PyDLL(None).write
    except (OSError, AttributeError):
        return None
    write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    write.restype = ctypes.c_ssize_t
    return write


_WRITE = _write_keeping_lock()


class Outbox:
    """Create on the loop's thread (it registers a reader with the loop); `send` from the engine thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._events: list[tuple[RequestHandle, Event]] = []
        self._scheduled = False  # a wake-up is on its way to the loop and its drain has not taken the events yet
        self._closed = False
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
        loop.add_reader(self._read_fd, self._on_wake)

    def send(self, batch: list[tuple[RequestHandle, Event]]) -> None:
        """Engine thread: queue `batch` for the loop; wake the loop only if no drain is pending."""
        with self._lock:
            if self._closed or self._loop.is_closed():  # nobody is listening any more
                dropped, self._events, self._scheduled = len(self._events) + len(batch), [], False
                logger.debug("event loop closed; dropped %d events", dropped)
                return
            self._events.extend(batch)
            if self._scheduled:
                return
            self._scheduled = True
        if _WRITE is not None:
            _WRITE(self._write_fd, WAKE, len(WAKE))
        else:
            os.write(self._write_fd, WAKE)

    def close(self) -> None:
        """Loop thread, once the engine has stopped: deliver what is queued, stop watching the wake-up
        descriptor and close it."""
        if not self._loop.is_closed():
            self._drain()
            self._loop.remove_reader(self._read_fd)
        with self._lock:
            self._closed = True
            for fd in {self._read_fd, self._write_fd}:
                os.close(fd)

    def _on_wake(self) -> None:
        try:
            os.read(self._read_fd, 4096)  # reset the eventfd's counter (or empty the pipe)
        except BlockingIOError:
            pass
        self._drain()

    def _drain(self) -> None:
        """Loop thread: every queued event into its request's queue, in the order the engine sent them."""
        with self._lock:
            events, self._events, self._scheduled = self._events, [], False
        for handle, event in events:
            handle.queue.put_nowait(event)
