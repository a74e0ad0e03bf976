"""A trickle server that streams, for measuring live video as a viewer sees it.

It follows go-livepeer's `trickle/trickle_server.go` (https://github.com/livepeer/go-livepeer):
`POST /{channel}/{seq}` publishes segment `seq` as a streamed body; `GET /{channel}/{seq}`
answers with `Lp-Trickle-Seq` and streams that segment's bytes *as they arrive*, from its
start, so a subscriber decodes a frame while its segment is still being written (the
test suite's `TrickleChannels` hands out whole segments only). `seq` -2 is the segment
being written (go-livepeer's `Current`), -1 the next one (`Next`); a segment more than
`KEEP` behind the latest answers 470; a closed channel (`DELETE /{channel}`) answers
`Lp-Trickle-Closed`. Channels are made on first use, as the orchestrator makes them.
"""

import asyncio
import threading
import time

from aiohttp import web

KEEP = 5
"""Segments kept per channel behind the latest (go-livepeer keeps a few for late readers)."""


class _Segment:
    def __init__(self) -> None:
        self.data = bytearray()
        self.done = False
        self.changed = asyncio.Event()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        self.changed.set()

    def finish(self) -> None:
        self.done = True
        self.changed.set()


class _Channel:
    def __init__(self) -> None:
        self.segments: dict[int, _Segment] = {}
        self.latest = -1
        self.closed = False
        self.changed = asyncio.Event()

    def segment(self, seq: int) -> _Segment:
        if seq not in self.segments:
            self.segments[seq] = _Segment()
            self.latest = max(self.latest, seq)
            for old in [s for s in self.segments if s < self.latest - KEEP]:
                del self.segments[old]
            self.changed.set()
        return self.segments[seq]


class TrickleServer:
    """The server on 127.0.0.1 in a thread of its own (its own event loop)."""

    def __init__(self) -> None:
        self.channels: dict[str, _Channel] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="trickle-server")
        self._started = threading.Event()

    def url(self, channel: str) -> str:
        return f"http://127.0.0.1:{self.port}/{channel}"

    def start(self) -> "TrickleServer":
        self._thread.start()
        if not self._started.wait(20):
            raise RuntimeError("trickle server did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None and self._runner is not None:
            try:  # subscribers still connected are cut off
                asyncio.run_coroutine_threadsafe(self._runner.shutdown(), self.loop).result(5)
            except Exception:  # a connection that would not close: the thread is a daemon
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/{channel}/{seq}", self._write)
        app.router.add_get("/{channel}/{seq}", self._read)
        app.router.add_delete("/{channel}", self._close)
        self._runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._started.set()
        self.loop.run_forever()

    def close(self, name: str) -> None:
        """Close a channel from another thread, as the orchestrator does when a stream ends:
        its subscribers get `Lp-Trickle-Closed`."""
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(self._close_channel(name), self.loop).result(10)

    async def _close_channel(self, name: str) -> None:
        channel = self._channel(name)
        channel.closed = True
        channel.changed.set()
        for segment in channel.segments.values():
            segment.finish()

    def _channel(self, name: str) -> _Channel:
        return self.channels.setdefault(name, _Channel())

    async def _write(self, request: web.Request) -> web.Response:
        channel = self._channel(request.match_info["channel"])
        segment = channel.segment(int(request.match_info["seq"]))
        try:
            async for chunk in request.content.iter_any():
                segment.add(chunk)
        finally:
            segment.finish()
        return web.Response(text="")

    async def _close(self, request: web.Request) -> web.Response:
        await self._close_channel(request.match_info["channel"])
        return web.Response(text="")

    async def _read(self, request: web.Request) -> web.StreamResponse:
        channel = self._channel(request.match_info["channel"])
        seq = int(request.match_info["seq"])
        if seq == -2:
            seq = max(channel.latest, 0)
        elif seq < 0:
            seq = channel.latest + 1
        if seq < channel.latest - KEEP:
            return web.Response(status=470, headers={"Lp-Trickle-Latest": str(channel.latest)})
        deadline = time.monotonic() + 600
        while seq not in channel.segments and not channel.closed:
            channel.changed.clear()
            try:
                await asyncio.wait_for(channel.changed.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return web.Response(status=404, text="segment never came")
        if seq not in channel.segments:
            return web.Response(headers={"Lp-Trickle-Seq": str(seq), "Lp-Trickle-Closed": "terminate"})
        segment = channel.segments[seq]
        response = web.StreamResponse(
            headers={"Lp-Trickle-Seq": str(seq), "Lp-Trickle-Latest": str(channel.latest), "Content-Type": "video/mp2t"}
        )
        await response.prepare(request)
        sent = 0
        while True:
            if sent < len(segment.data):
                chunk = bytes(segment.data[sent:])
                sent += len(chunk)
                await response.write(chunk)
                continue
            if segment.done:
                break
            segment.changed.clear()
            await segment.changed.wait()
        await response.write_eof()
        return response
