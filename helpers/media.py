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
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

from PIL import Image, UnidentifiedImageError

from helpers.costs import format_bytes, plan_frames
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
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if time.monotonic() > deadline:
            raise RequestError("media URL is too slow to download", code="media_fetch_failed")
        chunks.append(chunk)
    return b"".join(chunks)


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


# ---------------------------------------------------------------------- videos
@dataclass
class VideoClip:
    """Frames sampled from a video, with what the processor needs for timestamps."""

    frames: list[Image.Image]
    sample_fps: float  # frames per second of the sampled list
    duration: float  # seconds of the source video
    source_fps: float
    width: int
    height: int


def load_video(source: Any, settings: Settings, fps: float | None = None) -> VideoClip:
    """Sample a video at ``fps`` (capped at ``video_max_frames``) from a file, URL, data: URI or frames."""
    fps = settings.video_fps if fps is None else fps
    if isinstance(source, (list, tuple)):
        return _clip_from_frames(list(source), settings, fps)
    if not isinstance(source, str) or not source.strip():
        raise RequestError("video must be a URL, a data: URI, a file path or a list of frames")
    data = read_source(source.strip(), settings)
    return decode_video(data, settings, fps)


def _clip_from_frames(frames: list[Any], settings: Settings, fps: float) -> VideoClip:
    if not frames:
        raise RequestError("video frame list is empty")
    if len(frames) > settings.video_max_frames:
        raise RequestError(
            f"video has {len(frames)} frames; at most {settings.video_max_frames} are accepted",
            status_code=413,
            code="video_too_long",
        )
    images = [load_image(frame, settings) for frame in frames]
    if len(images) % 2:  # the model merges frame pairs
        images.append(images[-1])
    width, height = images[0].size
    return VideoClip(images, fps, len(frames) / fps, fps, width, height)


def decode_video(data: bytes | Path, settings: Settings, fps: float) -> VideoClip:
    """Decode with PyAV: check duration and size, then keep one frame per sampling instant."""
    import av

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
            count, sample_fps = plan_frames(duration, fps, settings.video_max_frames)
            frames = _sample(box, stream, [i / sample_fps for i in range(count)])
            source_fps = float(stream.average_rate or 0) or sample_fps
    except RequestError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError):
        raise RequestError("the video could not be decoded: corrupt or unsupported file") from None
    if not frames:
        raise RequestError("the video contains no decodable frames")
    while len(frames) < count:  # the container overstated its duration
        frames.append(frames[-1])
    return VideoClip(frames, sample_fps, duration, source_fps, width, height)


def _duration(box, stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if box.duration:
        return box.duration / 1_000_000
    # No duration in the header (common for WebM): scan packet timestamps, no decoding.
    last = 0.0
    for packet in box.demux(stream):
        if packet.pts is not None and packet.time_base:
            last = max(last, float(packet.pts * packet.time_base))
    box.seek(0)
    rate = float(stream.average_rate or 0)
    return last + (1 / rate if rate else 0)


def _sample(box, stream, times: list[float]) -> list[Image.Image]:
    """The first frame at or after each instant in ``times`` (sorted), seeking over long gaps."""
    frames: list[Image.Image] = []
    position = 0.0
    index = 0
    while index < len(times):
        if times[index] - position > 2.0:  # far ahead: jump to the key frame before it
            box.seek(int(times[index] / stream.time_base), stream=stream, backward=True)
        found = False
        for frame in box.decode(stream):
            position = float(frame.time or 0.0)
            while index < len(times) and position + 1e-3 >= times[index]:
                frames.append(frame.to_image())
                index += 1
                found = True
            if index >= len(times) or (found and times[index] - position > 2.0):
                break
        else:
            break  # end of stream
    return frames
