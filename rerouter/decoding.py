"""
Content-Encoding undone within a bound: 400 KiB of gzip can hold 400 MiB, so nothing here
ever inflates more than its caller asked for.

Pure: no mitmproxy import. gzip and deflate are always decoded; br and zstd (which
mitmproxy also decodes) only where the installed library can stop at an output size
(brotli 1.2+, Python's zstd module or `backports.zstd`, `zstandard`); elsewhere such a
body counts as one that cannot be decoded.
"""

import zlib
from typing import NamedTuple

try:
    import brotli
except ImportError:  # pragma: no cover - mitmproxy depends on it
    brotli = None

try:
    from compression import zstd  # Python 3.14+
except ImportError:
    try:
        from backports import zstd  # what mitmproxy 12 uses before 3.14
    except ImportError:
        zstd = None

try:
    import zstandard  # what mitmproxy 11 uses
except ImportError:
    zstandard = None

IDENTITY = ("", "identity", "none")
ZLIB = ("gzip", "x-gzip", "deflate")


class Decompressor:
    """Undoes a gzip or deflate Content-Encoding piece by piece, never producing more than asked for."""

    def __init__(self, encoding: str) -> None:
        self._zlib = None if encoding == "deflate" else zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._head = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        """
        At most `max_length` (at least 1) bytes of output. When the input holds more, the rest
        is dropped and this decompressor is spent: ask for one byte more than you can take, and
        a longer answer tells you the input was too big. Raises zlib.error on corrupt input.
        """
        if self._zlib is None:
            # "deflate" means zlib-wrapped, but some servers send it raw: the first two bytes tell.
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            zlib_header = data[0] & 0x0F == 8 and int.from_bytes(data[:2], "big") % 31 == 0
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        plain = self._zlib.decompress(data, max_length)
        # a gzip body may hold several members one after the other: each needs a fresh decoder
        while self._zlib.eof and self._zlib.unused_data and len(plain) < max_length:
            rest = self._zlib.unused_data
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            plain += self._zlib.decompress(rest, max_length - len(plain))
        return plain

    def flush(self) -> bytes:
        """The end of the input: what the decoder still held (at most a few bytes once all input was consumed)."""
        return b"" if self._zlib is None else self._zlib.flush()


class Decoded(NamedTuple):
    body: bytes
    complete: bool  # False: the decoded body goes on past `body`


def decode_prefix(raw: bytes, encoding: str | None, limit: int) -> Decoded:
    """
    The first `limit` bytes of the decoded body, and whether that is all of it.

    A truncated compressed body decodes as far as it goes. Raises ValueError for an encoding
    that is unknown or cannot be decoded within a bound here, and for corrupt input.
    """
    name = (encoding or "").strip().lower()
    if name in IDENTITY:
        return Decoded(raw[:limit], len(raw) <= limit)
    want = limit + 1  # one byte more than kept tells whether there is more
    try:
        if name in ZLIB:
            plain = Decompressor(name).decompress(raw, want)
        elif name == "br" and BOUNDED_BROTLI:
            plain = _brotli(raw, want)
        elif name == "zstd" and (zstd or zstandard):
            plain = _zstd(raw, want)
        else:
            raise ValueError(f"no bounded decoder for Content-Encoding {encoding!r}")
    except (zlib.error, *_CODEC_ERRORS) as e:
        raise ValueError(f"cannot decode {name} body: {e}") from None
    return Decoded(plain[:limit], len(plain) <= limit)


def sample(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """What the log keeps: the first `limit` decoded bytes, or of the body as it is when it cannot be decoded."""
    try:
        return decode_prefix(raw, encoding, limit).body
    except ValueError:
        return raw[:limit]


def _bounded_brotli() -> bool:
    """brotli before 1.2 has no output limit: one call inflates everything."""
    if brotli is None:
        return False
    try:
        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except TypeError:
        return False
    return True


BOUNDED_BROTLI = _bounded_brotli()
_CODEC_ERRORS: tuple[type[Exception], ...] = tuple(
    module.error if module is brotli else module.ZstdError for module in (brotli, zstd, zstandard) if module
)


def _brotli(raw: bytes, max_length: int) -> bytes:
    decoder = brotli.Decompressor()
    plain = decoder.process(raw, output_buffer_limit=max_length)
    # the limit is a minimum buffer size: the decoder may stop with output still waiting
    while len(plain) < max_length and not decoder.can_accept_more_data():
        more = decoder.process(b"", output_buffer_limit=max_length - len(plain))
        if not more:
            break
        plain += more
    return plain[:max_length]


def _zstd(raw: bytes, max_length: int) -> bytes:
    if zstd is None:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        pieces, size = [], 0
        while size < max_length and (piece := reader.read(max_length - size)):
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)
    plain, data = b"", raw
    while True:  # one decoder per frame, like gzip members
        decoder = zstd.ZstdDecompressor()
        plain += decoder.decompress(data, max_length - len(plain))
        if len(plain) >= max_length or not decoder.eof or not decoder.unused_data:
            return plain
        data = decoder.unused_data
