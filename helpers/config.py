"""Settings for the tutorial, read from ``QWEN3VL_*`` variables, and model resolution.

Every knob lives in :class:`Settings`. Each field is also a server flag
(``--allowed-local-media-path``) and an environment variable
(``QWEN3VL_ALLOWED_LOCAL_MEDIA_PATH``), so notebooks, the server and the tests
read the same values the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "QWEN3VL_"
DEFAULT_MODEL = "Qwen/Qwen3-VL-4B-Instruct"
DEMO_MODEL = "demo"
AUTODL_DATA_DISK = Path("/root/autodl-tmp")

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flash_attention_2", "eager")

# One visual token covers 32x32 pixels (patch 16, spatial merge 2).
PIXELS_PER_TOKEN = 32 * 32


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message says how to fix it."""


class ModelNotFoundError(FileNotFoundError):
    """The chosen model has no weights on disk yet."""


def default_model_root() -> Path:
    """Where downloaded models live: the AutoDL data disk when present, else ``~/models``."""
    if AUTODL_DATA_DISK.is_dir():
        return AUTODL_DATA_DISK / "models"
    return Path.home() / "models"


def _setting(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field that carries its help text (used by the server's flags)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Settings:
    """All settings of the tutorial. Build with :meth:`from_env` or :meth:`from_args`."""

    # Model and hardware
    model: str = _setting(
        DEFAULT_MODEL,
        "model id (downloaded under model_root; helpers/models.py lists them), a local folder, or a demo "
        "checkpoint: 'demo', 'demo-thinking', 'demo-qwen3.5'",
    )
    model_root: Path | None = _setting(
        None, "folder that holds downloaded models (default: /root/autodl-tmp/models or ~/models)"
    )
    device: str = _setting("auto", "auto, cpu or cuda (auto: cuda when available)")
    dtype: str = _setting("auto", "auto, bfloat16, float16 or float32 (auto: bf16 on GPU, fp32 on CPU)")
    attn_implementation: str = _setting(
        "auto",
        "attention kernel: auto (= sdpa), sdpa, flash_attention_2 (needs a matching flash-attn) or eager",
    )

    # Server
    host: str = _setting("127.0.0.1", "address to listen on (0.0.0.0 exposes the server)")
    port: int = _setting(6006, "port to listen on (6006 is AutoDL's custom-service port)")
    api_key: str | None = _setting(None, "require 'Authorization: Bearer <key>' on /v1/* and /generate")
    ui: bool = _setting(True, "serve the web chat page at /ui (--no-ui turns it off)")

    # Media access
    allowed_local_media_path: list[Path] = _setting(
        [], "folder whose files requests may name (repeatable; default: no local files)"
    )
    allow_private_network_media: bool = _setting(
        False, "allow media URLs that resolve to loopback/private/link-local addresses"
    )
    media_timeout: float = _setting(10.0, "connect/read timeout in seconds for media URLs")
    max_media_bytes: int = _setting(20 * 1024 * 1024, "largest image or video a URL or data: URI may carry")
    max_redirects: int = _setting(3, "redirects followed when fetching a media URL")

    # Pixel budgets (what the model sees) and input caps (what we agree to decode)
    image_min_pixels: int = _setting(64 * PIXELS_PER_TOKEN, "smallest image area handed to the model")
    image_max_pixels: int = _setting(1280 * PIXELS_PER_TOKEN, "largest image area handed to the model")
    max_image_input_pixels: int = _setting(
        50_000_000, "images larger than this are refused before decoding (decompression bombs)"
    )
    video_fps: float = _setting(2.0, "default frames per second sampled from a video")
    video_min_pixels: int = _setting(128 * PIXELS_PER_TOKEN, "smallest frame area handed to the model")
    video_max_pixels: int = _setting(256 * PIXELS_PER_TOKEN, "largest frame area handed to the model")
    video_max_frames: int = _setting(64, "most frames sampled from one video")
    video_max_seconds: float = _setting(600.0, "longest video accepted, in seconds")

    # Request limits
    max_images_per_request: int = _setting(4, "most images in one request")
    max_videos_per_request: int = _setting(1, "most videos in one request")
    max_new_tokens_limit: int = _setting(2048, "largest max_tokens a request may ask for")
    # 32768 tokens of bf16 KV cache on the 4B are 4.5 GiB: with 8.3 GiB of weights and
    # 2 GiB of runtime overhead one full-length request needs ~15 GiB, inside 24 GB
    # (notebook 03 shows the arithmetic). Capped at the model's max_position_embeddings.
    max_model_len: int = _setting(
        32768, "most tokens per request, prompt (text + images + video) plus max_tokens"
    )
    presence_penalty: float | None = _setting(
        None,
        "presence_penalty when a request leaves it out (default: the model's, from helpers/models.py: "
        "1.5 for Instruct, 0 for Qwen3-VL Thinking; 0 turns it off)",
    )
    default_max_new_tokens: int = _setting(512, "max_tokens when a request does not say")
    max_request_bytes: int = _setting(32 * 1024 * 1024, "largest request body accepted")
    max_queue: int = _setting(8, "requests waiting for the model before new ones get 429")

    def __post_init__(self) -> None:
        # Coerce first, so Settings(port="8000") behaves like the environment does.
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name)))
        self.validate()

    # ----------------------------------------------------------------- parsing
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``QWEN3VL_*`` variables; keyword arguments win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f, raw)
        for name, value in overrides.items():
            if name not in _FIELD_NAMES:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = _coerce(_FIELDS[name], value)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per setting; unset flags fall back to the environment."""
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            help_text = f"{f.metadata['help']} [env {env_name(f.name)}]"
            if f.type in ("bool", bool):
                # --flag / --no-flag; None (not given) falls back to the environment
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            elif f.type.startswith("list"):
                parser.add_argument(flag, action="append", default=None, help=help_text)
            else:
                parser.add_argument(flag, default=None, help=help_text)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from parsed flags, falling back to ``QWEN3VL_*`` variables."""
        given = {
            f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None
        }
        return cls.from_env(environ, **given)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated like the original)."""
        return dataclasses.replace(self, **{k: _coerce(_FIELDS[k], v) for k, v in changes.items()})

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        if not self.model or not str(self.model).strip():
            raise ConfigError("QWEN3VL_MODEL is empty: use a model id, a folder, or 'demo'")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)} (or cuda:N)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(
                f"attn_implementation {self.attn_implementation!r} is not one of "
                + ", ".join(ATTN_IMPLEMENTATIONS)
            )
        if self.presence_penalty is not None and not -2.0 <= self.presence_penalty <= 2.0:
            raise ConfigError(f"presence_penalty must be between -2 and 2, got {self.presence_penalty}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 1-65535")
        positive = [
            f.name for f in fields(self) if f.type in ("int", "float", int, float) and f.name != "port"
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_min_pixels > self.image_max_pixels:
            raise ConfigError("image_min_pixels is larger than image_max_pixels")
        if self.video_min_pixels > self.video_max_pixels:
            raise ConfigError("video_min_pixels is larger than video_max_pixels")
        for name in ("media_timeout", "video_fps", "video_max_seconds", "presence_penalty"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{env_name(name)} must be a finite number")
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ConfigError("default_max_new_tokens is larger than max_new_tokens_limit")

    # ------------------------------------------------------------------ models
    @property
    def is_demo(self) -> bool:
        """One of the tiny demo checkpoints ('demo', 'demo-thinking', 'demo-qwen3.5'), built locally."""
        from helpers.models import is_demo_model

        return is_demo_model(self.model)

    def sampling_defaults(self):
        """What a request that leaves sampling parameters out gets: the model's published settings.

        From :mod:`helpers.models` (Instruct vs Thinking, Qwen3-VL vs Qwen3.5); a
        ``presence_penalty`` setting wins over the model's. Models not in the
        registry (a local folder) get the Instruct settings of Qwen3-VL.
        """
        from helpers.models import VL_INSTRUCT_DEFAULTS, model_spec

        spec = model_spec(self.model)
        defaults = spec.sampling if spec is not None else VL_INSTRUCT_DEFAULTS
        if self.presence_penalty is not None:
            defaults = dataclasses.replace(defaults, presence_penalty=self.presence_penalty)
        return defaults

    @property
    def resolved_model_root(self) -> Path:
        return Path(self.model_root) if self.model_root else default_model_root()

    def model_dir(self) -> Path:
        """The folder where this model's files are expected (no checks, no building)."""
        if self.is_demo:
            from helpers.demo_model import demo_checkpoint_dir

            return demo_checkpoint_dir(self.model)
        candidate = Path(self.model).expanduser()
        if candidate.is_dir():
            return candidate
        return self.resolved_model_root / self.model

    def resolve_model_path(self) -> Path:
        """The folder to load the model from; builds the demo checkpoint when needed.

        Raises :class:`ModelNotFoundError` with instructions when weights are missing.
        """
        if self.is_demo:
            from helpers.demo_model import ensure_demo_checkpoint

            return ensure_demo_checkpoint(kind=self.model)
        path = self.model_dir()
        if has_weights(path):
            return path
        raise ModelNotFoundError(missing_model_message(self.model, path))


def has_weights(path: Path) -> bool:
    """True when ``path`` holds a config and at least one weight file."""
    if not (path / "config.json").is_file():
        return False
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def missing_model_message(model: str, path: Path) -> str:
    looks_like_path = model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]
    what = "folder" if looks_like_path else "download folder"
    return (
        f"No model weights for {model!r}: the {what} {path} holds no config.json + *.safetensors.\n"
        f"  - Download them: run notebooks/01_download_model.ipynb or\n"
        f"      python -m helpers.download --model {DEFAULT_MODEL if looks_like_path else model}\n"
        f"  - Or point QWEN3VL_MODEL / --model at the folder that holds them "
        f"(QWEN3VL_MODEL_ROOT sets where ids are looked up).\n"
        f"  - No GPU? Use the tiny demo model: QWEN3VL_MODEL=demo"
    )


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


_FIELDS = {f.name: f for f in fields(Settings)}
_FIELD_NAMES = frozenset(_FIELDS)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(f: dataclasses.Field, raw: str) -> Any:
    """Turn an environment string into the field's type."""
    if f.type.startswith("list"):
        parts = [p.strip() for chunk in raw.split(os.pathsep) for p in chunk.split(",")]
        return [p for p in parts if p]
    return raw


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` to the type of field ``f`` with a clear error."""
    name, kind = f.name, f.type
    if value is None:
        return None
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if kind in ("float", "float | None"):
            return float(value)
        if kind.startswith("list"):
            items = _parse(f, value) if isinstance(value, str) else list(value)
            return [Path(p).expanduser() for p in items]
        if kind.startswith("Path"):
            return Path(value).expanduser()
        return str(value).strip()
    except (TypeError, ValueError):
        raise ConfigError(f"{env_name(name)}={value!r} is not a valid {kind.split(' ')[0]}") from None


def load_settings(**overrides: Any) -> Settings:
    """The settings for this process: ``QWEN3VL_*`` variables plus ``overrides``."""
    return Settings.from_env(**overrides)


__all__: Sequence[str] = (
    "DEFAULT_MODEL",
    "DEMO_MODEL",
    "ConfigError",
    "ModelNotFoundError",
    "Settings",
    "default_model_root",
    "has_weights",
    "load_settings",
    "missing_model_message",
)
