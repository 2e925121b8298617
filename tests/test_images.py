"""Every image guard raises the library's own ImageError with a message a person can act on."""

from __future__ import annotations

import http.server
import io
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

from glmflash.errors import ImageError
from glmflash.inputs.images import ImagePolicy, decode_data_url, load_image
from tests.conftest import data_url, png_bytes

POLICY = ImagePolicy()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb's calling card)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def expect(source, match, policy=POLICY):
    with pytest.raises(ImageError, match=match):
        load_image(source, policy)


def test_accepted_formats_become_rgb():
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):
        image = load_image(png_bytes(fmt=fmt), POLICY)
        assert image.mode == "RGB" and image.size == (64, 48), fmt


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    image = load_image(buffer.getvalue(), POLICY)
    red, _, blue = image.getpixel((10, 10))
    assert red > 200 and blue < 50


def test_bomb_header_is_refused_before_decoding():
    expect(png_declaring(50_000, 50_000), "decompression bomb")
    expect(png_declaring(9_000, 9_000), "pixel limit")


def test_oversize_bytes():
    expect(png_bytes(size=(200, 200), noise=True), "over the 0.0 MB limit", ImagePolicy(max_bytes=1000))


def test_oversize_data_url_is_refused_before_base64_decoding():
    with pytest.raises(ImageError, match="larger than"):
        decode_data_url("data:image/png;base64," + "A" * 4000, max_bytes=1000)


def test_bad_base64():
    expect("data:image/png;base64,not*base64!", "not valid base64")


def test_malformed_data_url_and_wrong_mime():
    expect("data:image/png,rawbytes", "Malformed data URL")
    expect(data_url(b"hello", "text/plain"), "only image")


def test_unsupported_format():
    expect(png_bytes(fmt="TIFF"), "Unsupported image format TIFF")
    expect(b"this is not an image at all", "Unsupported or unreadable")


def test_zero_bytes():
    expect(b"", "empty")
    expect(data_url(b""), "empty")


def test_truncated_file():
    data = png_bytes(size=(300, 300), noise=True)
    expect(data[: len(data) // 2], "truncated or corrupt")


def test_extreme_aspect_ratio():
    expect(png_bytes(size=(5000, 10)), "aspect ratio")


def test_url_refused_by_default():
    expect("https://example.com/cat.png", "Image URLs are disabled")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost:8080/x.png",
        "http://10.1.2.3/x.png",
        "http://192.168.0.10/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x.png",
        "http://0.0.0.0/x.png",
        "http://[64:ff9b::a9fe:a9fe]/nat64-to-link-local",
        "http://[2002:7f00:1::1]/6to4-to-loopback",
        "http://[::127.0.0.1]/ipv4-compatible",
        "http://[::ffff:10.0.0.1]/ipv4-mapped",
    ],
)
def test_private_address_refused_when_urls_enabled(url):
    expect(url, "private, loopback", ImagePolicy(allow_urls=True))


@pytest.mark.parametrize("url", ["http://example.com:99999/x", "http://example.com:abc/x", "http://[::1/x"])
def test_malformed_urls_are_image_errors(url):
    expect(url, "Malformed image URL", ImagePolicy(allow_urls=True))


def test_thin_image_stays_readable_after_downscaling():
    # 20000x100 is exactly 200:1; shrinking it rounds to over 200:1, which must be caught here
    expect(Image.new("RGB", (20000, 100)), "aspect ratio", ImagePolicy(max_image_pixels=1_000_000))


def test_non_http_scheme_refused():
    expect(
        "ftp://example.com/x.png",
        "data: URL .* or an http",
        ImagePolicy(allow_urls=True, allow_local_files=False),
    )


@pytest.fixture
def image_server():
    body = png_bytes(size=(40, 30))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect-private":
                self.send_response(302)
                self.send_header("Location", "http://10.0.0.7/x.png")
                self.end_headers()
                return
            if self.path == "/trickle":
                self.send_response(200)
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            if self.path == "/big":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"\0" * 50_000)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_url_fetch_from_an_explicitly_trusted_network(image_server):
    policy = ImagePolicy(allow_urls=True, allowed_networks=("127.0.0.1/32",))
    assert load_image(f"{image_server}/x.png", policy).size == (40, 30)


def test_redirect_to_a_private_address_is_refused(image_server):
    policy = ImagePolicy(allow_urls=True, allowed_networks=("127.0.0.1/32",))
    expect(f"{image_server}/redirect-private", "private, loopback", policy)


def test_url_body_over_the_size_limit(image_server):
    policy = ImagePolicy(allow_urls=True, allowed_networks=("127.0.0.1/32",), max_bytes=10_000)
    expect(f"{image_server}/big", "over the 10,000-byte limit", policy)


def test_a_trickling_server_cannot_outlast_the_total_timeout(image_server):
    policy = ImagePolicy(allow_urls=True, allowed_networks=("127.0.0.1/32",), url_timeout=1.0)
    started = time.monotonic()
    expect(f"{image_server}/trickle", "took too long", policy)
    assert time.monotonic() - started < 2.5


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert load_image(buffer.getvalue(), POLICY).size == (20, 40)


def test_transparency_goes_on_white():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert load_image(image, POLICY).getpixel((5, 5)) == (255, 255, 255)


def test_downscaled_to_the_pixel_budget_keeping_aspect():
    image = load_image(Image.new("RGB", (4000, 2000)), ImagePolicy(max_image_pixels=1_000_000))
    width, height = image.size
    assert width * height <= 1_000_000 and abs(width / height - 2) < 0.01


def test_file_paths_only_where_allowed(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    assert load_image(str(path), POLICY).size == (64, 48)
    expect(str(path), "data: URL", ImagePolicy(allow_local_files=False))
    expect(str(tmp_path / "missing.png"), "No such image file")
    expect(12345, "Unsupported image value")
