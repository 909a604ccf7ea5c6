"""Running the HTTP app under uvicorn with the limits a public endpoint needs: a deadline for a
request's headers (uvicorn has none: a client that sends half a header would hold its
connection forever), a cap on open connections, background model loading (liveness at once,
readiness after the warm-up), and a graceful drain on SIGTERM (uvicorn stops accepting, the
app finishes what is queued)."""

from __future__ import annotations

import logging
from pathlib import Path

from serving.settings import ServeSettings

log = logging.getLogger(__name__)


def _base_protocol():
    """uvicorn's httptools protocol (C parser, several times cheaper per request) when the
    httptools package is there, else its pure-Python h11 protocol."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def header_timeout_protocol(seconds: float):
    """uvicorn's HTTP protocol, closing a connection whose request headers are not complete
    `seconds` after the connection opened or the previous response was sent."""

    class HeaderTimeoutProtocol(_base_protocol()):
        _header_timer = None
        _cycle_seen = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None or self.cycle.response_complete:  # still no full request
                if not self.transport.is_closing():
                    self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and self.cycle is not self._cycle_seen:
                self._cycle_seen = self.cycle  # the headers of a new request arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def serve(model: str | Path, settings: ServeSettings) -> None:
    import uvicorn

    from serving.http import create_app

    app = create_app(model, settings, load_in_background=True)
    log.info(
        "serving %s on http://%s:%d (batching up to %d images or %d us; v2 model %r; "
        "metrics at /metrics, docs at /docs)",
        model,
        settings.host,
        settings.port,
        settings.max_batch_size,
        settings.max_queue_delay_us,
        settings.model_name or "the run's name",
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
        http=header_timeout_protocol(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.request_timeout_s + 5,
    )
