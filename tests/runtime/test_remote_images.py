"""Remote image URLs: refused by default; with an allow-list, fetched from public addresses only,
the checked address is the one connected to, same-host redirects only, a size cap and a timeout.

The HTTP server here is a real one on loopback. Loopback is never allowed, so the tests that need a
successful fetch replace only the address check (``public_address``) and the resolver: everything
else (allow-list, redirects, size cap, timeout, decoding) runs for real."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from autoglm_runtime import vision
from autoglm_runtime.vision import ImageInputError, RemoteImages, decode_image_url, public_address
from tests.runtime.conftest import png_data_url

PARAM = "messages[0].content[0].image_url"
PNG = base64.b64decode(png_data_url(64, 48).split(",", 1)[1])


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/screen.png":
            self._send(200, PNG)
        elif self.path == "/same-host-redirect":
            self._redirect("/screen.png")
        elif self.path == "/other-host-redirect":
            self._redirect("http://evil.example:80/screen.png")
        elif self.path == "/big.png":
            self._send(200, b"\x89PNG" + b"\x00" * 300_000)
        elif self.path == "/slow.png":
            time.sleep(2)
            self._send(200, PNG)
        else:
            self._send(404, b"no")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture
def pretend_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """images.example resolves to loopback here, and the address check lets loopback pass."""
    monkeypatch.setattr(vision, "_resolve", lambda host, port: ["127.0.0.1"])
    monkeypatch.setattr(vision, "public_address", lambda ip: True)


REMOTE = RemoteImages(hosts=("images.example", "*.cdn.example"), timeout_s=1.0, max_bytes=100_000)


def test_remote_urls_are_refused_by_default() -> None:
    with pytest.raises(ImageInputError, match="remote image URLs are not fetched") as refused:
        decode_image_url("https://images.example/screen.png", PARAM, 10**8)
    assert refused.value.code == "remote_images_disabled"


def test_an_allowed_host_is_fetched_and_decoded(server: int, pretend_public: None) -> None:
    image = decode_image_url(f"http://images.example:{server}/screen.png", PARAM, 10**8, REMOTE)
    assert image.size == (64, 48)
    image = decode_image_url(f"http://a.cdn.example:{server}/same-host-redirect", PARAM, 10**8, REMOTE)
    assert image.size == (64, 48)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/other-host-redirect", "redirects to another host"),
        ("/big.png", "larger than 100000 bytes"),
        ("/slow.png", "longer than 1 s"),
        ("/missing.png", "HTTP 404"),
    ],
)
def test_fetch_refusals(server: int, pretend_public: None, path: str, text: str) -> None:
    with pytest.raises(ImageInputError) as refused:
        decode_image_url(f"http://images.example:{server}{path}", PARAM, 10**8, REMOTE)
    assert text in refused.value.message
    assert refused.value.param == PARAM


def test_hosts_off_the_list_and_private_addresses_are_refused(server: int) -> None:
    with pytest.raises(ImageInputError, match="image host 'other.example' is not allowed"):
        decode_image_url(f"http://other.example:{server}/screen.png", PARAM, 10**8, REMOTE)
    loopback = RemoteImages(hosts=("localhost",))
    with pytest.raises(ImageInputError, match="resolves to a non-public address"):
        decode_image_url(f"http://localhost:{server}/screen.png", PARAM, 10**8, loopback)


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_public_address(ip: str, public: bool) -> None:
    assert public_address(ip) is public


def test_allow_list_matching() -> None:
    assert REMOTE.allows("images.example")
    assert REMOTE.allows("a.b.cdn.example")
    assert not REMOTE.allows("cdn.example.evil")
    assert not REMOTE.allows("notimages.example")
