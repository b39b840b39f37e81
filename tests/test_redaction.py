import pytest

from rerouter.redaction import redact_path


@pytest.mark.parametrize(
    "path, masked",
    [
        ("/v1/models?key=sk-1", "/v1/models?key=[redacted]"),
        ("/v1beta/x?alt=sse&key=AIza-1&n=2", "/v1beta/x?alt=sse&key=[redacted]&n=2"),
        ("/x?api_key=a&api-key=b&access_token=c&token=d", "/x?api_key=[redacted]&api-key=[redacted]&access_token=[redacted]&token=[redacted]"),
        ("/x?API_KEY=a&Key=b", "/x?API_KEY=[redacted]&Key=[redacted]"),
        ("/x?api%5Fkey=a", "/x?api%5Fkey=[redacted]"),
        ("/x?key=a&key=b", "/x?key=[redacted]&key=[redacted]"),
        ("/x?keys=a&monkey=b&key", "/x?keys=a&monkey=b&key"),
        ("/x?key=a#frag", "/x?key=[redacted]#frag"),
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/x?", "/x?"),
        ("/v1/x?api-key=a%20b&API_KEY=c&access_token=", "/v1/x?api-key=[redacted]&API_KEY=[redacted]&access_token=[redacted]"),
        ("/v1/x?key=a=b&key=c", "/v1/x?key=[redacted]&key=[redacted]"),
        ("/v1/x?q=key%3Dabc", "/v1/x?q=key%3Dabc"),
        ("/v1/x?%ZZ=1&key=é", "/v1/x?%ZZ=1&key=[redacted]"),
    ],
)
def test_redact_path(path, masked):
    assert redact_path(path) == masked
    assert redact_path(masked) == masked
