"""One request's generation on a worker thread, read from asyncio with deadlines and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

DONE = object()  # the worker finished
WAITING = object()  # nothing arrived within the wait


class EngineCall:
    """Runs the engine on its own thread; chunks (or, with stream=False, the whole Reply) and errors
    arrive on an asyncio queue.

    Image decoding and validation happen on that thread too, so a big upload never blocks the
    event loop. `cancel()` sets the stop event: the model stops within a token or two. The
    request keeps its admission slot until this thread has finished (`on_done`), so requests
    given up by their clients cannot pile up unaccounted work.
    """

    def __init__(
        self, engine, messages, options: dict, image_policy, *, stream: bool, timeout: float, on_done
    ):
        self.engine, self.messages, self.options, self.image_policy = engine, messages, options, image_policy
        self.stream = stream
        self.stop = threading.Event()
        self._on_done = on_done  # runs on the event loop once the worker has really finished
        # The deadline holds even if nobody reads the result any more.
        self._deadline = threading.Timer(timeout, self.stop.set)
        self._deadline.daemon = True
        self._deadline.start()
        self.started = time.perf_counter()
        self.checked = self.started  # when the client's connection was last checked
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._thread = threading.Thread(target=self._work, name="glmflash-request", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        kwargs = {"stop_event": self.stop, "image_policy": self.image_policy, **self.options}
        try:
            if self.stream:
                for chunk in self.engine.stream(self.messages, **kwargs):
                    self._deliver(chunk)
            else:  # the model runs on this thread: no second thread hop for a whole answer
                self._deliver(self.engine.chat(self.messages, **kwargs))
        except BaseException as exc:  # delivered to the request, which answers with it
            self._deliver(exc)
        finally:
            self._deadline.cancel()
            self._deliver(DONE)
            with contextlib.suppress(RuntimeError):  # the event loop is gone: nothing to account for
                self._loop.call_soon_threadsafe(self._on_done)

    def _deliver(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shut down): nobody is listening
            self.stop.set()

    async def next(self, wait: float):
        """The next chunk, exception or DONE; WAITING if nothing came within `wait` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout=max(wait, 0.0))
        except TimeoutError:
            return WAITING

    def cancel(self) -> None:
        self.stop.set()
