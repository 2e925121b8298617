"""Work a page tab runs off its event handler (a batch job, an evaluation): on its own thread,
stoppable from the tab's Stop button (one switch per browser session), its failure kept to show
on the page instead of a dead thread and a spinner."""

from __future__ import annotations

import threading
import time

import gradio as gr


class Background:
    """Subclasses say what `work` does; it should end soon after `self.stop` is set."""

    def __init__(self, name: str):
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._guarded, name=name, daemon=True)

    def work(self) -> None:
        raise NotImplementedError

    def _guarded(self) -> None:
        try:
            self.work()
        except Exception as exc:  # shown on the page by the tab
            self.failure = exc

    def start(self) -> None:
        self.started = time.perf_counter()
        self.thread.start()

    def running(self) -> bool:
        return self.thread.is_alive()

    def wait(self, seconds: float | None) -> None:
        if self.thread.ident is not None:
            self.thread.join(seconds)

    def failure_text(self) -> str:
        return f"⚠️ {getattr(self.failure, 'message', None) or self.failure}" if self.failure else ""


class StopSwitches:
    """The running work of each browser session, so that its Stop button reaches it."""

    def __init__(self) -> None:
        self._running: dict[str, Background] = {}

    def hold(self, request: gr.Request, work: Background) -> None:
        self._running[request.session_hash or ""] = work

    def release(self, request: gr.Request) -> None:
        self._running.pop(request.session_hash or "", None)

    def stop(self, request: gr.Request) -> None:
        """The Stop button's handler."""
        work = self._running.get(request.session_hash or "")
        if work is not None:
            work.stop.set()
