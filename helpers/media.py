"""Load images and videos safely from PIL objects, local files, data: URIs and http(s) URLs.

The rules (see DESIGN.md, "Media and security"):

- local files only inside an allowed root (``--allowed-local-media-path``),
  after following symlinks; relative paths resolve against the first root;
- URLs: http/https only, connect/read timeouts, a byte cap, a bounded number
  of redirects, and every address we connect to must be public unless
  ``allow_private_network_media`` is set (checked on the resolved IP at
  connect time, so a redirect or a DNS trick cannot reach 127.0.0.1 or
  169.254.169.254);
- images: the pixel count is checked from the header before decoding;
- videos: decoded with PyAV (its wheels bundle FFmpeg, so no system FFmpeg and
  no torchvision video API are needed), duration and frame caps checked first.

Every refusal raises :class:`helpers.errors.RequestError` with a 4xx status.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import time
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

from PIL import Image, UnidentifiedImageError

from helpers.costs import (
    FACTOR,
    PIXELS_PER_TOKEN,
    TEMPORAL_PATCH_SIZE,
    VIDEO_DECODER_THREADS,
    budget_resize,
    format_bytes,
    plan_frames,
)
from helpers.errors import RequestError

if TYPE_CHECKING:
    from helpers.config import Settings

IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
USER_AGENT = "qwen3vl-tutorial/0.1 (media fetcher)"


# --------------------------------------------------------------------- sources
def classify_source(source: str) -> str:
    """``'url'``, ``'data'`` or ``'file'`` for a media reference; anything else is refused."""
    lowered = source[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return "url"
    if lowered.startswith("data:"):
        return "data"
    if lowered.startswith("file:"):
        return "file"
    scheme = urlsplit(source).scheme
    if scheme and len(scheme) > 1:  # "C:" style drive letters are not schemes
        raise RequestError(
            f"unsupported media scheme {scheme!r}: use http(s)://, data:, file:// or a local path"
        )
    return "file"


def read_source(source: str, settings: Settings) -> bytes | Path:
    """The bytes behind a URL or data: URI, or the checked path of a local file."""
    kind = classify_source(source)
    if kind == "url":
        return fetch_url(source, settings)
    if kind == "data":
        return decode_data_uri(source, settings.max_media_bytes)
    return resolve_local_path(source, settings.allowed_local_media_path)


def resolve_local_path(raw: str, allowed_roots: list[Path]) -> Path:
    """The real path of a local file, refused unless it lies inside one of ``allowed_roots``."""
    if not allowed_roots:
        raise RequestError(
            "local media files are disabled on this server: send the image as a data: URI or an "
            "http(s) URL, or start the server with --allowed-local-media-path DIR",
            status_code=403,
            code="local_media_disabled",
        )
    text = raw
    if text.lower().startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise RequestError(f"file:// URLs must not name a host, got {parts.netloc!r}")
        text = unquote(parts.path)
    if "\x00" in text:
        raise RequestError("media path contains a NUL byte")
    roots = [Path(r).expanduser().resolve() for r in allowed_roots]
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = roots[0] / path
    real = path.resolve()  # follows symlinks: a link pointing outside the roots is refused
    if not any(real.is_relative_to(root) for root in roots):
        raise RequestError(
            f"media path {raw!r} is outside the allowed folders; allowed: "
            + ", ".join(str(r) for r in roots),
            status_code=403,
            code="path_not_allowed",
        )
    if not real.is_file():
        raise RequestError(f"media file {raw!r} does not exist in the allowed folders", code="file_not_found")
    return real


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """The payload of a ``data:[<type>][;base64],<data>`` URI, size-capped before decoding."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise RequestError("malformed data: URI: expected 'data:<type>;base64,<data>'")
    if len(payload) * 3 // 4 > max_bytes:
        raise _too_large(max_bytes)
    if not header.lower().endswith(";base64"):
        return unquote(payload).encode("latin-1", errors="replace")
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("data: URI is not valid base64") from None


# ------------------------------------------------------------------------ URLs
def check_address(ip_text: str, allow_private: bool) -> None:
    """Refuse loopback, private, link-local, reserved and multicast addresses."""
    ip = ipaddress.ip_address(ip_text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if allow_private:
        return
    if not ip.is_global or ip.is_multicast:
        raise RequestError(
            f"media URL resolves to a non-public address ({ip}); the server refuses loopback, private "
            "and link-local hosts. Start it with --allow-private-network-media to allow them.",
            status_code=403,
            code="private_address",
        )


def resolve_public_address(host: str, port: int, allow_private: bool) -> str:
    """Resolve ``host`` and return an address we may connect to (all of them are checked)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise RequestError(f"cannot resolve media host {host!r}", code="media_fetch_failed") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        check_address(address, allow_private)
    return addresses[0]


def _guarded_session(allow_private: bool):
    """A requests session whose connections go only to checked addresses."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
    from urllib3.util import connection

    class Guarded:
        # Resolve, check and connect to the checked IP in one step, so the
        # address cannot change between the check and the connection.
        def _new_conn(self):
            address = resolve_public_address(self._dns_host, self.port, allow_private)
            try:
                return connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
            except OSError as exc:
                raise NewConnectionError(self, f"failed to connect: {exc}") from exc

    class GuardedHTTP(Guarded, HTTPConnection):
        pass

    class GuardedHTTPS(Guarded, HTTPSConnection):
        pass

    class Pool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTP

    class PoolS(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPS

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": PoolS}

    session = requests.Session()
    session.trust_env = False  # a proxy would connect on our behalf, past the address check
    session.mount("http://", Adapter())
    session.mount("https://", Adapter())
    session.headers["User-Agent"] = USER_AGENT
    return session


def fetch_url(url: str, settings: Settings) -> bytes:
    """Download a media URL under the server's rules (timeouts, byte cap, redirects, addresses)."""
    import requests

    timeout = settings.media_timeout
    deadline = time.monotonic() + 3 * timeout  # slow-drip servers cannot hold a worker forever
    with _guarded_session(settings.allow_private_network_media) as session:
        for _ in range(settings.max_redirects + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise RequestError(f"media URL must be http(s) with a host, got {url[:100]!r}")
            try:
                with session.get(url, stream=True, timeout=(timeout, timeout), allow_redirects=False) as r:
                    if r.is_redirect:
                        url = urljoin(url, r.headers.get("location", ""))
                        continue
                    if r.status_code != 200:
                        raise RequestError(
                            f"fetching media URL gave HTTP {r.status_code}", code="media_fetch_failed"
                        )
                    return _read_capped(r, settings.max_media_bytes, deadline)
            except RequestError:
                raise
            except requests.Timeout:
                raise RequestError(
                    f"media URL timed out after {timeout:g} s", code="media_fetch_failed"
                ) from None
            except requests.RequestException as exc:
                raise RequestError(
                    f"could not fetch media URL ({type(exc).__name__})", code="media_fetch_failed"
                ) from None
    raise RequestError(f"media URL redirected more than {settings.max_redirects} times")


def _read_capped(response, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    while True:
        # read1 returns what has arrived (up to 64 KiB) instead of waiting for a full chunk, so a
        # server that drips a byte now and then meets the deadline instead of the read timeout only.
        chunk = response.raw.read1(64 * 1024, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if time.monotonic() > deadline:
            raise RequestError("media URL is too slow to download", code="media_fetch_failed")
        chunks.append(chunk)


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(
        f"media is larger than the {format_bytes(max_bytes)} limit",
        status_code=413,
        code="media_too_large",
    )


# ---------------------------------------------------------------------- images
def load_image(source: Any, settings: Settings) -> Image.Image:
    """An RGB picture from a PIL image, a local path, ``file://``, ``data:`` or http(s) URL."""
    if isinstance(source, Image.Image):
        _check_pixels(source.size, settings.max_image_input_pixels)
        return _to_rgb(source)
    if not isinstance(source, str) or not source.strip():
        raise RequestError("image must be a URL, a data: URI or a file path (a non-empty string)")
    data = read_source(source.strip(), settings)
    return decode_image(data, settings.max_image_input_pixels)


def decode_image(data: bytes | Path, max_pixels: int) -> Image.Image:
    """Decode image bytes/file after checking the format and the pixel count from the header."""
    try:
        image = Image.open(BytesIO(data) if isinstance(data, bytes) else data)
    except Image.DecompressionBombError:
        raise _too_many_pixels(max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(
            "the image could not be read: not a JPEG, PNG, WebP, GIF, BMP or TIFF file"
        ) from None
    if image.format not in IMAGE_FORMATS:
        raise RequestError(f"image format {image.format} is not supported")
    _check_pixels(image.size, max_pixels)
    try:
        image.load()
    except Image.DecompressionBombError:
        raise _too_many_pixels(max_pixels) from None
    except (OSError, ValueError, SyntaxError):
        raise RequestError("the image is truncated or corrupt") from None
    return _to_rgb(image)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise RequestError("the image is empty (zero width or height)")
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels, size)


def _too_many_pixels(max_pixels: int, size: tuple[int, int] | None = None) -> RequestError:
    what = f" ({size[0]}x{size[1]})" if size else ""
    return RequestError(
        f"image{what} has more than {max_pixels:,} pixels; downscale it before sending",
        status_code=413,
        code="image_too_large",
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


# ----------------------------------------------------------------------- sizes
MIN_PICTURE_PIXELS = 4 * PIXELS_PER_TOKEN  # the smallest budget a part may ask for: 4 visual tokens
MAX_ASPECT_RATIO = 200  # the processor refuses longer strips


def fit_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` a picture or frame is scaled to: multiples of 32, the area in the budget.

    Refuses (400, with the rule) the shapes the processor cannot take: an aspect
    ratio over 200:1, or a budget so small that a side would round to 0 px
    (qwen-vl-utils would divide by zero there).
    """
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT_RATIO:
        raise RequestError(
            f"cannot resize a {width}x{height} picture: its aspect ratio {ratio:.0f}:1 is over the "
            f"{MAX_ASPECT_RATIO}:1 the model accepts; crop it first"
        )
    try:
        new_h, new_w = budget_resize(width, height, min_pixels, max_pixels)
    except (ValueError, ZeroDivisionError, AssertionError) as exc:
        raise RequestError(f"cannot resize a {width}x{height} picture: {exc}") from None
    if min(new_w, new_h) < FACTOR or max(new_w, new_h) > MAX_ASPECT_RATIO * min(new_w, new_h):
        raise RequestError(
            f"cannot resize a {width}x{height} picture into {max_pixels:,} pixels: every side must be "
            f"at least {FACTOR} px after resizing (and the aspect ratio at most {MAX_ASPECT_RATIO}:1); "
            "raise max_pixels or crop the picture"
        )
    return new_w, new_h


# ---------------------------------------------------------------------- videos
# Frame threads each hold full-size frames: a few are fast enough and keep memory bounded
# (helpers.costs.video_host_bytes counts them).
DECODER_THREADS = VIDEO_DECODER_THREADS
SEEK_GAP = 2.0  # seconds: a sampling instant further ahead than this is reached by seeking


@dataclass(frozen=True)
class VideoOptions:
    """How to sample one video: the Qwen-native keys of a video part, already validated.

    ``None`` means "the server's setting". :func:`helpers.messages.video_part`
    builds this from a request; notebooks may build it directly.
    """

    fps: float | None = None  # frames per second to sample
    nframes: int | None = None  # exactly this many frames, spread over the clip (instead of fps)
    min_frames: int | None = None  # with fps: at least this many frames
    max_frames: int | None = None  # with fps: at most this many (never above video_max_frames)
    start: float | None = None  # video_start: seconds into the file where the clip begins
    end: float | None = None  # video_end: seconds into the file where it ends
    min_pixels: int | None = None  # per-frame budget
    max_pixels: int | None = None
    total_pixels: int | None = None  # frames x pixels per frame stay within this (token budget x 1024)
    size: tuple[int, int] | None = None  # (width, height) asked with resized_width / resized_height


@dataclass
class VideoClip:
    """Frames sampled from a video, upright and already at the size the model sees."""

    frames: list[Image.Image]
    sample_fps: float  # frames per second of the sampled list
    duration: float  # seconds of the source video
    source_fps: float
    width: int  # upright size of the source
    height: int
    times: list[float] = field(default_factory=list)  # seconds into the source, one per frame

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of every frame: the size handed to the model."""
        return self.frames[0].size

    def metadata(self) -> dict[str, Any]:
        """The ``video_metadata`` the processor turns into ``<t seconds>`` timestamps.

        It computes ``frames_indices[i] / fps``; source frame numbers at the
        source rate give each frame the time it really has in the file.
        """
        fps = self.source_fps or self.sample_fps
        return {
            "fps": fps,
            "frames_indices": [round(t * fps) for t in self.times],
            "total_num_frames": max(1, round(self.duration * fps)),
            "duration": self.duration,
            "video_backend": "pyav",
        }


def load_video(
    source: Any, settings: Settings, fps: float | None = None, options: VideoOptions | None = None
) -> VideoClip:
    """Sample a video from a file, URL, data: URI or list of frames, frames scaled to the budget.

    ``fps`` is a shortcut for ``options.fps``; frames are capped at
    ``settings.video_max_frames`` and sized by the settings' per-frame budget
    unless ``options`` lowers them.
    """
    options = options or VideoOptions()
    if fps is not None:
        options = replace(options, fps=fps)
    if isinstance(source, (list, tuple)):
        return _clip_from_frames(list(source), settings, options)
    if not isinstance(source, str) or not source.strip():
        raise RequestError("video must be a URL, a data: URI, a file path or a list of frames")
    data = read_source(source.strip(), settings)
    return decode_video(data, settings, options)


def frame_size(
    width: int, height: int, frames: int, options: VideoOptions, settings: Settings
) -> tuple[int, int]:
    """(width, height) of every frame of an upright ``width`` x ``height`` video sampled to ``frames``."""
    low = settings.video_min_pixels if options.min_pixels is None else options.min_pixels
    high = settings.video_max_pixels if options.max_pixels is None else options.max_pixels
    if options.total_pixels is not None:  # two frames merge into one set of tokens
        high = min(high, max(MIN_PICTURE_PIXELS, options.total_pixels * TEMPORAL_PATCH_SIZE // frames))
    if options.size is not None:  # an explicit size wins within [floor, max]
        width, height = options.size
        low = MIN_PICTURE_PIXELS
    return fit_size(width, height, min(low, high), high)


def plan_sampling(window: float, options: VideoOptions, settings: Settings) -> tuple[int, float]:
    """(frames, sample_fps) for ``window`` seconds: fps (with min/max_frames) or nframes, capped."""
    cap = settings.video_max_frames
    if options.max_frames is not None:
        cap = min(cap, options.max_frames)
    cap = max(TEMPORAL_PATCH_SIZE, cap - cap % TEMPORAL_PATCH_SIZE)
    if options.nframes is not None:
        count = min(cap, options.nframes + options.nframes % TEMPORAL_PATCH_SIZE)
        return count, count / window
    fps = settings.video_fps if options.fps is None else options.fps
    count, sample_fps = plan_frames(window, fps, cap)
    if options.min_frames is not None and count < options.min_frames:
        count = min(cap, options.min_frames + options.min_frames % TEMPORAL_PATCH_SIZE)
        sample_fps = count / window
    if (count - 1) / sample_fps > window:  # too short for two frames at fps: spread them instead
        sample_fps = count / window
    return count, sample_fps


def _clip_from_frames(frames: list[Any], settings: Settings, options: VideoOptions) -> VideoClip:
    if not frames:
        raise RequestError("video frame list is empty")
    for key, value in (
        ("nframes", options.nframes),
        ("min_frames", options.min_frames),
        ("max_frames", options.max_frames),
        ("video_start", options.start),
        ("video_end", options.end),
    ):
        if value is not None:
            raise RequestError(f"{key} applies to video files, not to a list of frames", param=key)
    if len(frames) > settings.video_max_frames:
        raise RequestError(
            f"video has {len(frames)} frames; at most {settings.video_max_frames} are accepted",
            status_code=413,
            code="video_too_long",
        )
    fps = settings.video_fps if options.fps is None else options.fps
    count = len(frames) + len(frames) % TEMPORAL_PATCH_SIZE  # the model merges frame pairs
    pictures: list[Image.Image] = []
    size = None
    width = height = 0
    for frame in frames:  # one full-size picture in memory at a time
        image = load_image(frame, settings)
        if size is None:
            width, height = image.size
            size = frame_size(width, height, count, options, settings)
        pictures.append(image if image.size == size else image.resize(size, Image.Resampling.BICUBIC))
        del image
    if len(pictures) < count:
        pictures.append(pictures[-1])
    times = [i / fps for i in range(len(frames))] + [(len(frames) - 1) / fps] * (count - len(frames))
    return VideoClip(pictures, fps, len(frames) / fps, fps, width, height, times)


def decode_video(data: bytes | Path, settings: Settings, options: VideoOptions | None = None) -> VideoClip:
    """Decode with PyAV: check duration and size, then keep one scaled, upright frame per instant.

    Frames are scaled inside FFmpeg straight to the size the model sees, so no
    full-size picture is kept. Times count from the stream's own start (its
    ``start_time`` is not always 0), and the display rotation a phone records
    is applied.
    """
    import av

    options = options or VideoOptions()
    try:
        with av.open(
            BytesIO(data) if isinstance(data, bytes) else str(data), metadata_errors="ignore"
        ) as box:
            if not box.streams.video:
                raise RequestError("the file has no video stream")
            if box.format.name == "image2" or box.format.name.endswith("_pipe"):
                raise RequestError("this is a still image, not a video: send it as an image part")
            stream = box.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = DECODER_THREADS
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > settings.max_image_input_pixels:
                raise RequestError(
                    f"video frames are {width}x{height}, more pixels than allowed", status_code=413
                )
            duration = _duration(box, stream)
            if duration > settings.video_max_seconds:
                raise RequestError(
                    f"video is {duration:.0f} s long; at most {settings.video_max_seconds:g} s are accepted",
                    status_code=413,
                    code="video_too_long",
                )
            start, end = _window(options, duration)
            count, sample_fps = plan_sampling(end - start, options, settings)
            picture = _Scaler(count, options, settings)
            frames, times = _sample(
                box, stream, _origin(stream), [start + i / sample_fps for i in range(count)], picture
            )
            source_fps = float(stream.average_rate or 0) or sample_fps
    except RequestError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError):
        raise RequestError("the video could not be decoded: corrupt or unsupported file") from None
    if not frames:
        raise RequestError("the video contains no decodable frames")
    while len(frames) < count:  # the container overstated its duration
        frames.append(frames[-1])
        times.append(times[-1])
    width, height = picture.upright
    return VideoClip(frames, sample_fps, duration, source_fps, width, height, times)


def _window(options: VideoOptions, duration: float) -> tuple[float, float]:
    """The (start, end) seconds to sample from: video_start / video_end, clamped to the clip."""
    start = options.start or 0.0
    end = duration if options.end is None else min(options.end, duration)
    if duration <= 0:
        raise RequestError("the video is empty: its streams last 0 s")
    if start >= duration:
        raise RequestError(
            f"video_start {start:g} s is at or past the end of the {duration:.1f} s video",
            param="video_start",
        )
    if end <= start:
        raise RequestError(f"video_end {end:g} s must come after video_start {start:g} s", param="video_end")
    return start, end


class _Scaler:
    """Turns a decoded frame into an upright RGB picture at the model's size, scaling inside FFmpeg.

    The size is decided at the first frame, whose display matrix says how the
    camera was held.
    """

    def __init__(self, frames: int, options: VideoOptions, settings: Settings) -> None:
        self.frames, self.options, self.settings = frames, options, settings
        self.turns = 0  # quarter turns counter-clockwise
        self.coded: tuple[int, int] | None = None  # (width, height) to scale to before turning
        self.upright = (0, 0)  # upright size of the source

    def __call__(self, frame) -> Image.Image:
        if self.coded is None:
            self.turns = round((frame.rotation or 0) / 90) % 4
            width, height = frame.width, frame.height
            self.upright = (height, width) if self.turns % 2 else (width, height)
            w, h = frame_size(*self.upright, self.frames, self.options, self.settings)
            self.coded = (h, w) if self.turns % 2 else (w, h)
        width, height = self.coded
        picture = frame.to_image(width=width, height=height, interpolation="BICUBIC")
        if self.turns:
            picture = picture.transpose(QUARTER_TURNS[self.turns])
        return picture


QUARTER_TURNS = {
    1: Image.Transpose.ROTATE_90,  # PIL turns counter-clockwise, as the display matrix does
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
}


def _origin(stream) -> float:
    """Seconds of the stream's first timestamp (MPEG-TS and edited MP4 files rarely start at 0)."""
    if stream.start_time is not None and stream.time_base:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _duration(box, stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if box.duration:
        return box.duration / 1_000_000
    # No duration in the header (common for WebM): scan packet timestamps, no decoding.
    first = last = None
    for packet in box.demux(stream):
        if packet.pts is not None and packet.time_base:
            time_s = float(packet.pts * packet.time_base)
            first = time_s if first is None else min(first, time_s)
            last = time_s if last is None else max(last, time_s)
    box.seek(0)
    if first is None or last is None:
        return 0.0
    rate = float(stream.average_rate or 0)
    return last - first + (1 / rate if rate else 0)


def _sample(
    box, stream, origin: float, instants: list[float], picture
) -> tuple[list[Image.Image], list[float]]:
    """The first frame at or after each instant (seconds from ``origin``, sorted), and its time.

    Frames become small pictures as soon as they are decoded; long gaps are
    crossed by seeking to the key frame before the next instant.
    """
    frames: list[Image.Image] = []
    times: list[float] = []
    position = 0.0
    index = 0
    while index < len(instants):
        if instants[index] - position > SEEK_GAP:  # far ahead: jump to the key frame before it
            box.seek(int((origin + instants[index]) / stream.time_base), stream=stream, backward=True)
        found = False
        for frame in box.decode(stream):
            if frame.time is not None:
                position = frame.time - origin
            taken = None  # one picture per decoded frame, however many instants it covers
            while index < len(instants) and position + 1e-3 >= instants[index]:
                if taken is None:
                    taken = picture(frame)
                frames.append(taken)
                times.append(position)
                index += 1
                found = True
            if index >= len(instants) or (found and instants[index] - position > SEEK_GAP):
                break
        else:
            break  # end of stream
    return frames, times
