"""A threaded socket server that serves at most ``max_clients`` connections at once.

socketserver's ThreadingMixIn starts a thread per connection without bound:
idle clients hold a thread and a descriptor each until the process runs out.
Here a connection beyond the cap is handed to ``refuse()`` from the accepting
thread (which answers without waiting and closes it), so it costs a
descriptor for microseconds. The control socket (agent/daemon/api.py) and the
metrics endpoint (agent/metrics_http.py) both use it.
"""

from __future__ import annotations

import socketserver
import threading
from typing import Any


class BoundedThreadingMixIn(socketserver.ThreadingMixIn):
    """Set ``slots = threading.BoundedSemaphore(n)`` before serving, and define ``refuse``."""

    daemon_threads = True
    slots: threading.BoundedSemaphore

    def refuse(self, request: Any) -> None:
        """Tell the client it is one too many (without blocking), then close it: each server says it its way."""
        raise NotImplementedError

    def serve_one(self, request: Any, client_address: Any) -> None:
        """Serve one connection in its thread (a subclass may wrap it, e.g. with a deadline)."""
        super().process_request_thread(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.serve_one(request, client_address)
        finally:
            self.slots.release()


__all__ = ["BoundedThreadingMixIn"]
