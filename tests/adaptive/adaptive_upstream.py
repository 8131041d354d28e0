"""A loopback HTTP server with a fixed number of workers: ``python adaptive_upstream.py [WORKERS] [SERVICE_S]``.

Each request waits in one FIFO queue for a free worker, which holds it for
the service time, so latency grows with the queue as in a real server. It
prints ``READY <port>`` once listening, then reads commands from stdin, one a
line: ``workers N`` changes the number of workers at once (the capacity);
end of input stops it. Its own process, so the server's work never competes
with the client under test for the GIL. Timers only: no task per request.
"""

from __future__ import annotations

import asyncio
import collections
import sys

_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class Upstream:
    def __init__(self, workers: int, service: float) -> None:
        self.workers = workers
        self.service = service
        self.busy = 0
        self.queue: collections.deque[asyncio.Transport] = collections.deque()
        self.loop = asyncio.get_running_loop()

    def arrive(self, transport: asyncio.Transport) -> None:
        self.queue.append(transport)
        self.dispatch()

    def dispatch(self) -> None:
        while self.busy < self.workers and self.queue:
            transport = self.queue.popleft()
            self.busy += 1
            self.loop.call_later(self.service, self.finish, transport)

    def finish(self, transport: asyncio.Transport) -> None:
        self.busy -= 1
        if not transport.is_closing():
            transport.write(_ANSWER)
        self.dispatch()


class Connection(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:  # GETs only: no body to read
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            assert self.transport is not None
            self.upstream.arrive(self.transport)


async def main(workers: int, service: float) -> None:
    upstream = Upstream(workers, service)
    server = await asyncio.get_running_loop().create_server(
        lambda: Connection(upstream), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while line := await reader.readline():
        words = line.split()
        if len(words) == 2 and words[0] == b"workers":
            upstream.workers = int(words[1])
            upstream.dispatch()
    server.close()


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 8,
            float(sys.argv[2]) if len(sys.argv) > 2 else 0.010,
        )
    )
