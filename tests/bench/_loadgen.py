"""A lean HTTP/1.1 client for the benchmarks' load generator.

Why it exists: the HTTP benchmarks run the API and the load generator on the same small
machine, and httpx costs this process 1.3-2.5 ms of CPU per request, more than the API
spends answering a GET: the rows measured the client more than the server. This client
does only what the benchmarks need, on asyncio streams: one keep-alive connection, one
request at a time, bodies framed by ``Content-Length`` or ``Transfer-Encoding: chunked``
(anything else fails loudly). When the server closes the connection (``Connection:
close``, or while it was idle) the next request opens a new one; a request that fails
part way is never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

TIMEOUT_S = 30.0
NO_BODY = (204, 304)
"""Statuses that never carry a body (1xx answers are not expected: we send no ``Expect``)."""


class ProtocolError(Exception):
    """The server answered something this client does not read."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    """Lower-case names; a repeated header's values joined with ``", "``."""
    body: bytes


class Connection:
    """One keep-alive connection to ``base_url`` (``http://host:port``), opened on first use."""

    def __init__(self, base_url: str, *, timeout: float = TIMEOUT_S) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"not an http://host:port URL: {base_url}")
        self.host = url.hostname
        self.port = url.port or 80
        self.timeout = timeout
        self._host_line = f"Host: {url.netloc}\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request and read its whole response (within ``timeout`` seconds)."""
        head = [f"{method} {path} HTTP/1.1\r\n", self._host_line]
        if headers:
            head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body) if body else 0}\r\n")
        head.append("\r\n")
        message = "".join(head).encode("latin-1") + (body or b"")
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                writer.write(message)
                await writer.drain()
                response = await _read_response(reader, method)
        except BaseException:
            self._drop()  # its state is unknown: the next request starts afresh
            raise
        if response.headers.get("connection", "").lower() == "close":
            self._drop()
        return response

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The open connection, or a new one if there is none or the server closed it."""
        reader, writer = self._reader, self._writer
        if reader is None or writer is None or reader.at_eof() or writer.is_closing():
            self._drop()
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._reader, self._writer = reader, writer
        return reader, writer

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def close(self) -> None:
        writer = self._writer
        self._drop()
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader, method: str) -> Response:
    head = (await reader.readuntil(b"\r\n\r\n"))[:-4].decode("latin-1").split("\r\n")
    version, _, rest = head[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.x status line: {head[0]!r}")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if status < 200:
        raise ProtocolError(f"an informational response ({status}) was not asked for")
    if method == "HEAD" or status in NO_BODY:
        return Response(status, headers, b"")
    if "transfer-encoding" in headers:
        if headers["transfer-encoding"].lower() != "chunked":
            raise ProtocolError(f"Transfer-Encoding {headers['transfer-encoding']!r}")
        return Response(status, headers, await _read_chunked(reader))
    if "content-length" in headers:
        return Response(status, headers, await reader.readexactly(int(headers["content-length"])))
    raise ProtocolError(f"a {status} response framed by neither Content-Length nor chunked")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while size := int((await reader.readline()).split(b";", 1)[0], 16):
        chunks.append((await reader.readexactly(size + 2))[:-2])
    while (await reader.readline()) not in (b"\r\n", b""):  # trailers, unused
        pass
    return b"".join(chunks)
