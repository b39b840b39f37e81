import gzip
import zlib

import brotli
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerouter import decoding
from rerouter.decoding import Decoded
from rerouter.decoding import Decompressor
from rerouter.decoding import decode_prefix
from rerouter.decoding import sample

MIB = 1024 * 1024


def bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, wbits=31)
    return b"".join(compressor.compress(b"a" * MIB) for _ in range(size // MIB)) + compressor.flush()


class TestDecodePrefix:
    @pytest.mark.parametrize("encoding", [None, "", "identity", "IDENTITY", " none "])
    def test_identity(self, encoding):
        assert decode_prefix(b"hello", encoding, 5) == Decoded(b"hello", True)
        assert decode_prefix(b"hello", encoding, 4) == Decoded(b"hell", False)

    @pytest.mark.parametrize(
        "encoding, compress",
        [
            ("gzip", gzip.compress),
            ("x-gzip", gzip.compress),
            ("deflate", zlib.compress),
            ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send it
        ],
    )
    def test_zlib_family(self, encoding, compress):
        body = b'{"model": "gpt-4"}' * 100
        assert decode_prefix(compress(body), encoding, len(body)) == Decoded(body, True)
        assert decode_prefix(compress(body), encoding, 10) == Decoded(body[:10], False)

    def test_a_bomb_is_inflated_only_to_the_bound(self):
        raw = bomb(256 * MIB)
        assert len(raw) < 300_000
        decoded = decode_prefix(raw, "gzip", MIB)
        assert decoded == Decoded(b"a" * MIB, False)

    def test_every_gzip_member(self):
        assert decode_prefix(gzip.compress(b"one ") + gzip.compress(b"two"), "gzip", 100) == Decoded(b"one two", True)

    def test_a_truncated_body_decodes_as_far_as_it_goes(self):
        raw = gzip.compress(b"x" * 100_000, mtime=0)
        assert decode_prefix(raw[: len(raw) // 2], "gzip", 200_000).body.startswith(b"x" * 100)

    @pytest.mark.skipif(not decoding.BOUNDED_BROTLI, reason="brotli before 1.2 cannot stop at a bound")
    def test_brotli(self):
        assert decode_prefix(brotli.compress(b"hi there"), "br", 100) == Decoded(b"hi there", True)
        assert decode_prefix(brotli.compress(b"b" * (64 * MIB)), "br", 1000) == Decoded(b"b" * 1000, False)

    @pytest.mark.skipif(decoding.BOUNDED_BROTLI, reason="this brotli stops at a bound")
    def test_brotli_without_a_bound_is_refused(self):
        with pytest.raises(ValueError, match="no bounded decoder"):
            decode_prefix(brotli.compress(b"hi"), "br", 100)

    @pytest.mark.skipif(not (decoding.zstd or decoding.zstandard), reason="no zstd module")
    def test_zstd(self):
        compress = decoding.zstd.compress if decoding.zstd else decoding.zstandard.ZstdCompressor().compress
        raw = compress(b"z" * (64 * MIB)) + compress(b"q")
        assert decode_prefix(raw, "zstd", 1000) == Decoded(b"z" * 1000, False)
        assert decode_prefix(compress(b"one") + compress(b"two"), "zstd", 100) == Decoded(b"onetwo", True)

    @pytest.mark.parametrize("raw, encoding", [(b"not gzip at all", "gzip"), (b"x", "compress"), (b"x", "gzip, br")])
    def test_undecodable(self, raw, encoding):
        with pytest.raises(ValueError):
            decode_prefix(raw, encoding, 100)
        assert sample(raw, encoding, 3) == raw[:3], "the log keeps such a body as it came"

    @given(st.binary(max_size=3000), st.integers(min_value=0, max_value=4000), st.sampled_from(["gzip", "deflate"]))
    def test_matches_whole_decoding(self, body, limit, encoding):
        raw = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        assert decode_prefix(raw, encoding, limit) == Decoded(body[:limit], len(body) <= limit)


class TestDecompressor:
    def test_read_by_read_with_a_bound_per_read(self):
        decompressor = Decompressor("gzip")
        raw = gzip.compress(b"0123456789" * 1000)
        out = b"".join(decompressor.decompress(raw[i : i + 7], 20_000) for i in range(0, len(raw), 7))
        assert out + decompressor.flush() == b"0123456789" * 1000

    def test_a_read_that_holds_more_is_cut_at_the_bound(self):
        assert Decompressor("gzip").decompress(bomb(16 * MIB), MIB + 1) == b"a" * (MIB + 1)

    def test_the_bound_holds_across_members(self):
        assert Decompressor("gzip").decompress(gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10), 15) == b"a" * 10 + b"b" * 5
