"""One asyncio event loop thread per worker process, owning the adapter instances.

Worker threads are synchronous (database work); sends are coroutines run on this
loop, so every thread shares the adapters' connection pools (SMTP, HTTP).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from notifier.adapter import Adapter, AdapterContext
from notifier.logging import get_logger
from notifier.plugins.registry import Provider, Registry

T = TypeVar("T")
log = get_logger(__name__)


class AdapterRuntime:
    def __init__(self, registry: Registry, context: AdapterContext) -> None:
        self.registry = registry
        self.context = context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._adapters: dict[str, Adapter[Any]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}  # used on the loop only
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=run, name="notifier-adapters", daemon=True)
            self._thread.start()
            ready.wait(5)
            self._loop = loop

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start a coroutine on the loop from a worker thread."""
        if self._loop is None:
            self.start()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def adapter(self, provider: Provider) -> Adapter[Any]:
        with self._lock:
            adapter = self._adapters.get(provider.name)
            if adapter is None:
                adapter = provider.adapter_class(provider.settings, self.context)
                self._adapters[provider.name] = adapter
            return adapter

    def slot(self, provider: Provider) -> asyncio.Semaphore:
        """Hold while sending through the provider's adapter (on the loop): at most
        ``max_in_flight`` sends at once."""
        slot = self._slots.get(provider.name)
        if slot is None:
            slot = self._slots[provider.name] = asyncio.Semaphore(
                self.adapter(provider).max_in_flight
            )
        return slot

    def stop(self, timeout: float = 10.0) -> None:
        """Close every adapter on the loop, then stop the loop."""
        with self._lock:
            loop, adapters = self._loop, list(self._adapters.values())
            self._loop, self._adapters, self._slots = None, {}, {}
        if loop is None:
            return

        async def close_all() -> None:
            results = await asyncio.gather(*(a.close() for a in adapters), return_exceptions=True)
            for adapter, result in zip(adapters, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("adapter close failed", adapter=adapter.name, error=str(result))

        try:
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout)
        except Exception as exc:
            log.warning("adapters did not close in time", error=str(exc))
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        loop.close()
