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


# ------------------------------------------------- video: size, time, rotation
def red_of(frame: Image.Image) -> int:
    return frame.getpixel((frame.width // 2, 2))[0]  # the top strip: red = 8 x source frame index


def test_video_frames_are_decoded_straight_to_the_budget_size(settings, root):
    write_clip(root / "hd.mp4", seconds=0.25, fps=8, size=(1920, 1080))
    clip = media.load_video("hd.mp4", settings)
    assert (clip.width, clip.height) == (1920, 1080)  # the source
    expected = media.fit_size(1920, 1080, settings.video_min_pixels, settings.video_max_pixels)
    assert expected == (672, 384)
    assert {frame.size for frame in clip.frames} == {expected}


def test_a_smaller_per_frame_budget_gives_smaller_frames(settings, root):
    write_clip(root / "hd.mp4", seconds=0.25, fps=8, size=(1920, 1080))
    options = media.VideoOptions(min_pixels=64 * 1024, max_pixels=64 * 1024)
    clip = media.load_video("hd.mp4", settings, options=options)
    width, height = clip.frame_size
    assert width * height <= 64 * 1024 and width % 32 == 0 and height % 32 == 0


@pytest.mark.parametrize(("name", "first_pts"), [("late.mp4", 16), ("stream.ts", 0), ("late.ts", 12)])
def test_sampling_counts_from_the_stream_start_time(settings, root, name, first_pts):
    write_clip(root / name, seconds=3.0, fps=8, first_pts=first_pts)
    clip = media.load_video(name, settings, fps=2.0)
    assert len(clip.frames) == 6 and abs(clip.duration - 3.0) < 0.2
    # at 2 fps we want source frames 0, 4, 8, ...: no repeated first frame, the last second kept
    reds = [red_of(frame) for frame in clip.frames]
    assert all(abs(r - 32 * k) <= 8 for k, r in enumerate(reds)), reds
    assert clip.times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], abs=0.01)


def is_white(frame: Image.Image, x: float, y: float) -> bool:
    return frame.getpixel((int(x * (frame.width - 1)), int(y * (frame.height - 1))))[1] > 200


@pytest.mark.parametrize(
    ("rotation", "white", "black"),
    [
        # frame 0 is black with a white bar down the left edge, except over the top strip
        (0, (0.03, 0.6), (0.03, 0.05)),
        (-90, (0.4, 0.03), (0.97, 0.03)),  # turned clockwise: the bar runs along the top
        (90, (0.6, 0.97), (0.03, 0.97)),  # counter-clockwise: along the bottom
        (180, (0.97, 0.4), (0.97, 0.97)),
    ],
)
def test_rotated_clips_reach_the_model_upright(settings, root, rotation, white, black):
    write_clip(root / "phone.mp4", seconds=1.0, fps=4, size=(128, 96), rotation=rotation)
    clip = media.load_video("phone.mp4", settings, fps=2.0)
    upright = (96, 128) if rotation % 180 else (128, 96)
    assert (clip.width, clip.height) == upright
    width, height = clip.frame_size
    assert (width < height) == (rotation % 180 != 0)
    first = clip.frames[0]
    assert is_white(first, *white) and not is_white(first, *black)


def test_video_start_and_end_cut_the_clip_and_keep_file_times(settings, root):
    write_clip(root / "clip.mp4", seconds=4.0, fps=8)
    options = media.VideoOptions(fps=2.0, start=1.0, end=3.0)
    clip = media.load_video("clip.mp4", settings, options=options)
    assert clip.times == pytest.approx([1.0, 1.5, 2.0, 2.5], abs=0.01)
    assert [red_of(f) for f in clip.frames] == pytest.approx([64, 96, 128, 160], abs=8)
    metadata = clip.metadata()
    assert [i / metadata["fps"] for i in metadata["frames_indices"]] == pytest.approx(clip.times)


@pytest.mark.parametrize(
    ("options", "frames", "sample_fps"),
    [
        (media.VideoOptions(nframes=4), 4, 4 / 3),
        (media.VideoOptions(nframes=5), 6, 2.0),  # rounded up to pairs
        (media.VideoOptions(fps=2.0, max_frames=2), 2, 2 / 3),
        (media.VideoOptions(fps=1.0, min_frames=8), 8, 8 / 3),
        (media.VideoOptions(fps=0.01), 2, 2 / 3),  # too slow for two frames: spread over the clip
    ],
)
def test_nframes_min_and_max_frames_steer_sampling(settings, root, options, frames, sample_fps):
    write_clip(root / "clip.mp4", seconds=3.0, fps=8)
    clip = media.load_video("clip.mp4", settings, options=options)
    assert len(clip.frames) == frames and clip.sample_fps == pytest.approx(sample_fps)
    assert clip.times == sorted(clip.times) and clip.times[-1] < 3.0
    assert len({red_of(f) // 8 for f in clip.frames}) == frames  # distinct source frames


def test_frame_counts_never_exceed_the_server_cap(settings, root):
    write_clip(root / "clip.mp4", seconds=3.0, fps=8)
    capped = settings.replace(video_max_frames=4)
    assert len(media.load_video("clip.mp4", capped, options=media.VideoOptions(max_frames=100)).frames) == 4


def test_total_pixels_bounds_frames_times_pixels(settings, root):
    write_clip(root / "clip.mp4", seconds=4.0, fps=8, size=(640, 480))
    total = 200 * 1024  # 200 visual tokens for the whole clip
    clip = media.load_video("clip.mp4", settings, options=media.VideoOptions(fps=2.0, total_pixels=total))
    width, height = clip.frame_size
    assert len(clip.frames) == 8
    assert len(clip.frames) // 2 * width * height <= total


def test_frame_lists_are_resized_once_to_the_budget(settings):
    frames = [Image.new("RGB", (1920, 1080), (i * 40, 0, 0)) for i in range(3)]
    clip = media.load_video(frames, settings, fps=1.0)
    assert len(clip.frames) == 4 and {f.size for f in clip.frames} == {(672, 384)}
    assert clip.times == [0.0, 1.0, 2.0, 2.0]
    with pytest.raises(RequestError) as info:
        media.load_video(frames, settings, options=media.VideoOptions(start=1.0))
    assert info.value.param == "video_start"


@pytest.mark.parametrize(
    ("size", "max_pixels", "match"),
    [
        ((5000, 10), 1280 * 1024, "aspect ratio 500:1"),
        ((6000, 40), 4 * 1024, "at least 32 px"),  # 150:1 squeezed into 4 tokens: a side rounds to 0
    ],
)
def test_shapes_the_processor_cannot_take_are_400_with_the_rule(size, max_pixels, match):
    with pytest.raises(RequestError, match=match) as info:
        media.fit_size(*size, 4 * 1024, max_pixels)
    assert info.value.status_code == 400


# ------------------------------------------------- video through the engine
def test_an_hd_clip_reaches_the_processor_at_the_size_it_was_decoded_to(engine, media_dir):
    import numpy as np

    from helpers.messages import normalize_messages, vision_inputs

    write_clip(media_dir / "hd.mp4", seconds=0.25, fps=8, size=(1920, 1080))
    messages = [{"role": "user", "content": [{"type": "video", "video": "hd.mp4"}]}]
    part = normalize_messages(messages, engine.settings)[0]["content"][0]
    assert (part["resized_width"], part["resized_height"]) == (672, 384)
    _, videos, _ = vision_inputs([{"role": "user", "content": [part]}])
    frames, metadata = videos[0]
    # handed over unchanged: no resize to multiples of 64 and back (qwen-vl-utils' frame-list path)
    assert frames.dtype.is_floating_point is False and tuple(frames.shape) == (2, 3, 384, 672)
    decoded = np.stack([np.asarray(frame) for frame in part["video"]])
    assert np.array_equal(frames.permute(0, 2, 3, 1).numpy(), decoded)
    assert metadata["fps"] == 8
    prepared = engine.prepare(messages)
    assert prepared.inputs["video_grid_thw"].tolist() == [[1, 384 // 16, 672 // 16]]


def test_a_portrait_phone_clip_reaches_the_engine_upright(engine, media_dir):
    write_clip(media_dir / "phone.mp4", seconds=0.5, fps=4, size=(128, 96), rotation=-90)
    prepared = engine.prepare([{"role": "user", "content": [{"type": "video", "video": "phone.mp4"}]}])
    s = engine.settings
    width, height = media.fit_size(96, 128, s.video_min_pixels, s.video_max_pixels)
    assert height > width
    assert prepared.inputs["video_grid_thw"].tolist() == [[1, height // 16, width // 16]]


def test_prompt_timestamps_follow_video_start(engine, media_dir):
    import re

    write_clip(media_dir / "clip.mp4", seconds=4.0, fps=8)
    part = {"type": "video", "video": "clip.mp4", "fps": 2, "video_start": 1.0, "video_end": 3.0}
    prepared = engine.prepare([{"role": "user", "content": [part]}])
    prompt = engine.processor.tokenizer.decode(prepared.inputs["input_ids"][0])
    assert re.findall(r"<(\d+\.\d) seconds>", prompt) == ["1.2", "2.2"]


def test_a_tiny_file_of_huge_frames_never_holds_them_at_full_size(settings, root):
    """Two 2800x2800 frames 31 s apart: 64 sampling instants used to mean 64 full-size pictures (~1.5 GB)."""
    import av
    import numpy as np

    from helpers.bench import peak_rss_growth

    with av.open(str(root / "sparse.mp4"), "w") as box:
        stream = box.add_stream("libx264", rate=1)
        stream.width = stream.height = 2800
        stream.pix_fmt = "yuv420p"
        for pts in (0, 31):
            frame = av.VideoFrame.from_ndarray(np.full((2800, 2800, 3), pts, np.uint8), format="rgb24")
            frame.pts = pts
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    assert (root / "sparse.mp4").stat().st_size < 10_000
    clip, growth = peak_rss_growth(lambda: media.load_video("sparse.mp4", settings))
    assert len(clip.frames) == 64 and clip.frame_size == (512, 512)
    if growth is not None:  # Linux: the peak RSS can be reset and read
        assert growth < 400 * 1024**2, f"decoding raised the peak RSS by {growth / 1024**2:.0f} MiB"
