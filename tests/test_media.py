"""Media loading: sources, every refusal of DESIGN.md, image caps, PyAV video sampling."""

from __future__ import annotations

import base64
import io
import os
import socket

import pytest
from conftest import write_clip, write_image
from PIL import Image

from helpers import media
from helpers.config import Settings
from helpers.errors import RequestError


@pytest.fixture
def settings(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    return Settings.from_env({}, model="demo", allowed_local_media_path=[root])


@pytest.fixture
def root(settings):
    return settings.allowed_local_media_path[0]


def png_bytes(size=(64, 48), color=(10, 200, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def refused(call, status: int, match: str) -> RequestError:
    with pytest.raises(RequestError, match=match) as info:
        call()
    assert info.value.status_code == status
    return info.value


# ------------------------------------------------------------------ local files
def test_plain_relative_and_file_url_paths_load_inside_the_root(settings, root):
    write_image(root / "red.png")
    for source in (str(root / "red.png"), "red.png", f"file://{root}/red.png"):
        image = media.load_image(source, settings)
        assert image.size == (320, 240) and image.mode == "RGB"
        assert image.getpixel((5, 5)) == (200, 30, 30)


def test_local_files_are_disabled_by_default(tmp_path):
    write_image(tmp_path / "x.png")
    settings = Settings.from_env({}, model="demo")
    refused(
        lambda: media.load_image(str(tmp_path / "x.png"), settings), 403, "local media files are disabled"
    )


@pytest.mark.parametrize(
    "source",
    [
        "../outside.png",
        "sub/../../outside.png",
        "{tmp}/outside.png",
        "file://{tmp}/outside.png",
        "file:///etc/passwd",
        "/etc/passwd",
        "file://localhost/etc/hostname",
    ],
)
def test_paths_outside_the_allowed_roots_are_refused(settings, root, tmp_path, source):
    write_image(tmp_path / "outside.png")
    (root / "sub").mkdir()
    source = source.format(tmp=tmp_path)
    refused(lambda: media.load_image(source, settings), 403, "outside the allowed folders")


def test_a_symlink_escaping_the_root_is_refused(settings, root, tmp_path):
    write_image(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", root / "innocent.png")
    refused(lambda: media.load_image("innocent.png", settings), 403, "outside the allowed folders")


def test_a_symlink_staying_inside_the_root_is_followed(settings, root):
    write_image(root / "real.png")
    os.symlink(root / "real.png", root / "alias.png")
    assert media.load_image("alias.png", settings).size == (320, 240)


def test_a_missing_file_is_a_clear_400(settings):
    refused(lambda: media.load_image("nope.png", settings), 400, "does not exist")


def test_file_url_naming_a_host_is_refused(settings):
    refused(
        lambda: media.load_image("file://evil.example/share/x.png", settings), 400, "must not name a host"
    )


@pytest.mark.parametrize(
    "source", ["ftp://example.com/x.png", "gopher://x/", "javascript:alert(1)", "s3://b/k"]
)
def test_unsupported_schemes_are_refused(settings, source):
    refused(lambda: media.load_image(source, settings), 400, "unsupported media scheme")


# ------------------------------------------------------------------- data: URIs
def test_data_uri_images_decode(settings):
    assert media.load_image(data_uri(png_bytes()), settings).size == (64, 48)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("data:image/png;base64,@@@not-base64@@@", "not valid base64"),
        ("data:image/png;base64", "malformed data: URI"),
        (data_uri(b"hello, I am not a picture"), "could not be read"),
    ],
)
def test_bad_data_uris_are_400(settings, uri, match):
    refused(lambda: media.load_image(uri, settings), 400, match)


def test_data_uri_over_the_byte_cap_is_413_before_decoding(settings):
    small = settings.replace(max_media_bytes=1000)
    refused(lambda: media.load_image(data_uri(b"x" * 5000), small), 413, "larger than")


# ----------------------------------------------------------------- image checks
def test_decompression_bomb_is_refused_from_the_header(settings):
    # A 20000x20000 PNG compresses to a few hundred KB but would need 1.2 GB decoded.
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    refused(
        lambda: media.load_image(data_uri(buffer.getvalue()), settings), 413, "more than 50,000,000 pixels"
    )


def test_truncated_image_is_400(settings):
    jpeg = io.BytesIO()
    Image.effect_noise((300, 300), 64).convert("RGB").save(jpeg, format="JPEG")
    half = jpeg.getvalue()[: len(jpeg.getvalue()) // 2]
    refused(lambda: media.load_image(data_uri(half, "image/jpeg"), settings), 400, "truncated")


def test_unsupported_image_format_is_400(settings):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="ICO")  # Pillow 12 writes no frame below 16x16
    refused(lambda: media.load_image(data_uri(buffer.getvalue()), settings), 400, "not supported")


def test_transparent_png_is_composited_on_white(settings):
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert media.load_image(data_uri(buffer.getvalue()), settings).getpixel((1, 1)) == (255, 255, 255)


def test_pil_images_are_accepted_and_checked(settings):
    assert media.load_image(Image.new("L", (30, 20)), settings).mode == "RGB"
    refused(
        lambda: media.load_image(
            Image.new("1", (8000, 8000)), settings.replace(max_image_input_pixels=10**6)
        ),
        413,
        "pixels",
    )


# ------------------------------------------------------------------------- URLs
def test_url_image_from_a_local_http_server(settings, media_server):
    url = media_server.add("/cat.png", png_bytes(), content_type="image/png")
    image = media.load_image(url, settings.replace(allow_private_network_media=True))
    assert image.size == (64, 48)
    assert media_server.hits == ["/cat.png"]


def test_loopback_url_is_refused_by_default_without_connecting(settings, media_server):
    url = media_server.add("/cat.png", png_bytes())
    refused(lambda: media.load_image(url, settings), 403, "non-public address")
    assert media_server.hits == []


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if anything tries to open a socket connection."""
    from urllib3.util import connection

    def forbidden(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(connection, "create_connection", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)


def fake_dns(monkeypatch, table: dict[str, str]):
    """Make getaddrinfo answer ``table`` (hostname -> IP) without any lookup."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            family = socket.AF_INET6 if ":" in table[host] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (table[host], port or 80))]
        if host in ("127.0.0.1", "localhost"):
            return real(host, port, *args, **kwargs)
        raise socket.gaierror(f"test DNS knows no {host}")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "192.168.1.20",
        "172.16.5.4",
        "169.254.169.254",
        "127.0.0.2",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "100.64.0.1",
        "224.0.0.1",
    ],
)
def test_hosts_resolving_to_non_public_addresses_are_refused_before_connecting(
    settings, monkeypatch, no_connections, address
):
    fake_dns(monkeypatch, {"internal.example": address})
    refused(lambda: media.load_image("http://internal.example/x.png", settings), 403, "non-public address")


def test_unresolvable_host_is_a_400(settings, monkeypatch, no_connections):
    fake_dns(monkeypatch, {})
    refused(lambda: media.load_image("https://no-such-host.invalid/x.png", settings), 400, "cannot resolve")


def test_redirects_are_rechecked_at_every_hop(settings, media_server, monkeypatch):
    # Pretend 127.0.0.1 is public so the first hop is allowed; the redirect
    # target resolves to the cloud metadata address and must be refused.
    real_check = media.check_address
    monkeypatch.setattr(
        media, "check_address", lambda ip, allow: None if ip == "127.0.0.1" else real_check(ip, allow)
    )
    fake_dns(monkeypatch, {"metadata.example": "169.254.169.254"})
    url = media_server.add("/hop", b"", status=302, location="http://metadata.example/latest/meta-data")
    refused(lambda: media.load_image(url, settings), 403, "non-public address")
    assert media_server.hits == ["/hop"]


def test_redirect_chains_are_bounded(settings, media_server):
    allowed = settings.replace(allow_private_network_media=True, max_redirects=2)
    for i in range(5):
        media_server.add(f"/r{i}", b"", status=302, location=f"/r{i + 1}")
    refused(lambda: media.load_image(media_server.url("/r0"), allowed), 400, "redirected more than 2 times")


def test_a_followed_redirect_serves_the_image(settings, media_server):
    allowed = settings.replace(allow_private_network_media=True)
    media_server.add("/old", b"", status=301, location="/new.png")
    media_server.add("/new.png", png_bytes())
    assert media.load_image(media_server.url("/old"), allowed).size == (64, 48)


def test_http_errors_and_oversized_bodies_are_4xx(settings, media_server):
    allowed = settings.replace(allow_private_network_media=True, max_media_bytes=1000)
    refused(lambda: media.load_image(media_server.url("/missing.png"), allowed), 400, "HTTP 404")
    big = media_server.add("/big.png", b"x" * 5000)
    refused(lambda: media.load_image(big, allowed), 413, "larger than")


# ----------------------------------------------------------------------- videos
def test_video_is_sampled_at_the_requested_fps(settings, root):
    write_clip(root / "clip.mp4", seconds=3.0, fps=8)
    clip = media.load_video("clip.mp4", settings, fps=2.0)
    assert len(clip.frames) == 6 and clip.sample_fps == 2.0
    assert abs(clip.duration - 3.0) < 0.2 and clip.source_fps == 8
    assert (clip.width, clip.height) == (128, 96)
    # frame i of the source has red = 8 * i; at 2 fps we sample source frames 0, 4, 8, ...
    reds = [frame.getpixel((0, 0))[0] for frame in clip.frames[:4]]
    assert all(abs(r - 32 * k) <= 8 for k, r in enumerate(reds)), reds


def test_frame_cap_spreads_frames_over_the_whole_clip(settings, root):
    write_clip(root / "long.mp4", seconds=6.0, fps=8)
    clip = media.load_video("long.mp4", settings.replace(video_max_frames=4), fps=4.0)
    assert len(clip.frames) == 4
    assert abs(clip.sample_fps - 4 / 6) < 0.05
    reds = [frame.getpixel((0, 0))[0] for frame in clip.frames]
    assert reds == sorted(reds) and reds[-1] > 150  # the last frame comes from the end of the clip


def test_video_longer_than_the_cap_is_413(settings, root):
    write_clip(root / "clip.mp4", seconds=3.0)
    refused(lambda: media.load_video("clip.mp4", settings.replace(video_max_seconds=1.0)), 413, "at most 1 s")


def test_corrupt_video_is_400(settings, root):
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    refused(lambda: media.load_video("broken.mp4", settings), 400, "could not be decoded|no video stream")


def test_an_image_is_not_a_video(settings, root):
    write_image(root / "still.png")
    with pytest.raises(RequestError) as info:
        media.load_video("still.png", settings)
    assert info.value.status_code == 400


def test_video_from_data_uri_and_url(settings, root, media_server):
    data = write_clip(root / "clip.mp4", seconds=2.0).read_bytes()
    assert len(media.load_video(data_uri(data, "video/mp4"), settings).frames) == 4
    url = media_server.add("/clip.mp4", data)
    allowed = settings.replace(allow_private_network_media=True)
    assert len(media.load_video(url, allowed).frames) == 4


def test_a_list_of_frames_is_a_video(settings):
    frames = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(5)]
    clip = media.load_video(frames, settings, fps=1.0)
    assert len(clip.frames) == 6  # padded to an even count
    refused(lambda: media.load_video(frames * 20, settings), 413, "at most 64")
