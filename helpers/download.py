"""Download a Qwen3-VL checkpoint into a fixed folder and verify every file of it.

    python -m helpers.download                           # QWEN3VL_MODEL into <model root>/<id>
    python -m helpers.download --model Qwen/Qwen3-VL-4B-Instruct --dest DIR
    python -m helpers.download --source huggingface      # HF_ENDPOINT=https://hf-mirror.com: a mirror
    python -m helpers.download --verify-only --dest DIR  # check a copy, download nothing

Exit codes: 0 complete, 1 verification failed, 2 bad arguments, 3 not enough
disk space, 4 the download itself failed (network, unknown id, ...).

Verification reads only file sizes and safetensors headers, so it takes well
under a second even for the 9 GB model: every shard that
``model.safetensors.index.json`` names must exist, its header must parse and
list the tensors the index promises, and its size must be exactly
``8 + header length + end of the last tensor`` (a shorter file is truncated).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.config import DEFAULT_MODEL, ConfigError, Settings

SOURCES = ("modelscope", "huggingface")
INDEX_FILE = "model.safetensors.index.json"
# safetensors itself refuses headers above 100 MB; a bigger length means garbage.
MAX_HEADER_BYTES = 100 * 1024 * 1024
GIB = 1024**3
# Tokenizer, configs, README: small next to the weights but not nothing.
EXTRA_FILES_BYTES = 30 * 1024**2
MIN_DISK_MARGIN = 1 * GIB

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_DISK = 3
EXIT_DOWNLOAD = 4

# Problem kinds found by verify_checkpoint().
MISSING_FOLDER = "missing-folder"
MISSING_FILE = "missing-file"
EMPTY_FILE = "empty-file"
BAD_JSON = "bad-json"
NO_WEIGHTS = "no-weights"
MISSING_SHARD = "missing-shard"
TRUNCATED = "truncated"
BAD_SIZE = "bad-size"
BAD_HEADER = "bad-header"
MISSING_TENSOR = "missing-tensor"

Downloader = Callable[..., Any]  # downloader(model_id, local_dir=str, revision=str | None)


# --------------------------------------------------------------------- errors
class DownloadError(RuntimeError):
    """The download could not finish; ``hint`` says what to do, ``exit_code`` is for the CLI."""

    exit_code = EXIT_DOWNLOAD

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  修复：{self.hint}" if self.hint else self.message


class NotEnoughDiskError(DownloadError):
    """Less free space at the destination than the model needs (checked before downloading)."""

    exit_code = EXIT_DISK


class CheckpointInvalidError(DownloadError):
    """The files on disk are incomplete or damaged; ``report`` lists every problem."""

    exit_code = EXIT_INVALID

    def __init__(self, report: CheckpointReport) -> None:
        super().__init__(report.describe(), report.fix_hint())
        self.report = report


# --------------------------------------------------------------- verification
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a checkpoint folder."""

    kind: str  # one of the problem kinds above (MISSING_SHARD, TRUNCATED, ...)
    file: str  # file name inside the folder ("" for the folder itself)
    message: str  # for the learner (Chinese)


@dataclass
class CheckpointReport:
    """What :func:`verify_checkpoint` found in a folder."""

    folder: Path
    problems: list[Problem] = field(default_factory=list)
    weight_files: list[str] = field(default_factory=list)
    tensors: int = 0
    weight_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def broken_files(self) -> list[str]:
        """Files to delete before downloading again (the downloader would keep them otherwise)."""
        damaged = {EMPTY_FILE, BAD_JSON, TRUNCATED, BAD_SIZE, BAD_HEADER, MISSING_TENSOR}
        return sorted({p.file for p in self.problems if p.kind in damaged and p.file})

    def describe(self) -> str:
        if self.ok:
            return (
                f"✅ 校验通过：{self.folder}\n"
                f"   {len(self.weight_files)} 个权重文件，{self.tensors} 个张量，"
                f"{self.weight_bytes / GIB:.2f} GiB；配置、分词器、处理器文件齐全"
            )
        lines = [f"❌ 校验失败：{self.folder}（{len(self.problems)} 个问题）"]
        lines += [f"   - [{p.kind}] {p.message}" for p in self.problems]
        return "\n".join(lines)

    def fix_hint(self) -> str:
        broken = self.broken_files()
        redo = "运行下载命令 python -m helpers.download --model <id> --dest <文件夹>（已完整的文件会跳过）"
        if broken:
            return f"删除损坏的文件（{', '.join(broken)}），再{redo}"
        return redo


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """``(header length, header)`` of a .safetensors file, without reading any tensor data.

    The format: 8 bytes little-endian header length N, N bytes of JSON
    (tensor name -> dtype, shape, data_offsets), then the raw data.
    Raises :class:`ValueError` whose first word is the problem kind.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{TRUNCATED}: only {size} bytes, shorter than the 8-byte length prefix")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            raise ValueError(f"{BAD_HEADER}: header length {header_len} is not plausible")
        if 8 + header_len > size:
            raise ValueError(f"{TRUNCATED}: the header needs {8 + header_len} bytes, the file has {size}")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{BAD_HEADER}: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{BAD_HEADER}: header is not a JSON object")
    return header_len, header


def _data_end(header: dict[str, Any]) -> int:
    """Where the last tensor's bytes end, relative to the start of the data section."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise ValueError(f"{BAD_HEADER}: tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    return end


def check_safetensors(path: Path, promised: Iterable[str] = ()) -> tuple[list[Problem], int]:
    """Problems of one weight file, and how many tensors its header lists."""
    name = path.name
    size = path.stat().st_size
    if size == 0:
        return [Problem(EMPTY_FILE, name, f"{name} 是空文件（0 字节）：下载中断过")], 0
    try:
        header_len, header = read_safetensors_header(path)
        expected = 8 + header_len + _data_end(header)
    except ValueError as exc:
        kind, _, detail = str(exc).partition(": ")
        what = "被截断" if kind == TRUNCATED else "的 safetensors 文件头无法读取"
        return [Problem(kind, name, f"{name} {what}（{detail}）")], 0
    problems = []
    if size < expected:
        problems.append(
            Problem(TRUNCATED, name, f"{name} 被截断：只有 {size} 字节，文件头说应有 {expected} 字节")
        )
    elif size > expected:
        problems.append(
            Problem(BAD_SIZE, name, f"{name} 有 {size} 字节，比文件头说的 {expected} 字节多：文件损坏")
        )
    tensor_names = set(header) - {"__metadata__"}
    if not tensor_names:
        problems.append(Problem(BAD_HEADER, name, f"{name} 的文件头里没有任何张量"))
    missing = sorted(set(promised) - tensor_names)
    if missing:
        problems.append(
            Problem(
                MISSING_TENSOR,
                name,
                f"{name} 缺少索引 {INDEX_FILE} 承诺的 {len(missing)} 个张量"
                f"（例如 {missing[0]}）：文件与索引不匹配",
            )
        )
    return problems, len(tensor_names)


def _required_files(folder: Path) -> list[tuple[str, bool]]:
    """(what is required, present?) for the non-weight files a model + processor needs."""

    def has(name: str) -> bool:
        return (folder / name).is_file()

    return [
        ("config.json", has("config.json")),
        ("tokenizer_config.json", has("tokenizer_config.json")),
        (
            "tokenizer.json（或 vocab.json + merges.txt）",
            has("tokenizer.json") or (has("vocab.json") and has("merges.txt")),
        ),
        (
            "preprocessor_config.json（或 processor_config.json）",
            has("preprocessor_config.json") or has("processor_config.json"),
        ),
    ]


def verify_checkpoint(folder: str | Path) -> CheckpointReport:
    """Check that ``folder`` holds a complete, undamaged checkpoint. Never raises for bad files."""
    folder = Path(folder).expanduser()
    report = CheckpointReport(folder=folder)
    problems = report.problems
    if not folder.is_dir():
        problems.append(Problem(MISSING_FOLDER, "", f"文件夹 {folder} 不存在：还没有下载"))
        return report

    # Every visible file: nothing may be empty, every JSON must parse (a cut-off JSON fails here).
    # Hidden entries (.msc, ._____temp) are the downloader's own bookkeeping.
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for path in files:
        if path.suffix == ".safetensors":
            continue  # checked below, against the index
        if path.stat().st_size == 0:
            problems.append(Problem(EMPTY_FILE, path.name, f"{path.name} 是空文件（0 字节）：下载中断过"))
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(
                    Problem(BAD_JSON, path.name, f"{path.name} 不是完整的 JSON（{exc}）：文件损坏或被截断")
                )

    for what, present in _required_files(folder):
        if not present:
            problems.append(Problem(MISSING_FILE, what.split("（")[0], f"缺少 {what}"))

    # Which weight files, and which tensors each must hold.
    index_path = folder / INDEX_FILE
    promised: dict[str, set[str]] = {}
    if index_path.is_file():
        if any(p.file == INDEX_FILE for p in problems):
            return report  # the index is empty or unreadable: nothing more to compare against
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            problems.append(Problem(BAD_JSON, INDEX_FILE, f"{INDEX_FILE} 里没有 weight_map"))
            return report
        for tensor, shard in weight_map.items():
            promised.setdefault(str(shard), set()).add(tensor)
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors") if not p.name.startswith("."))
        if any(re.fullmatch(r".*-\d+-of-\d+\.safetensors", s) for s in shards):
            problems.append(Problem(MISSING_FILE, INDEX_FILE, f"缺少 {INDEX_FILE}（有分片文件却没有索引）"))
        if not shards:
            problems.append(
                Problem(NO_WEIGHTS, "", f"没有权重文件：既没有 {INDEX_FILE} 也没有任何 *.safetensors")
            )
        promised = {s: set() for s in shards}

    for shard, tensors in sorted(promised.items()):
        path = folder / shard
        if not path.is_file():
            problems.append(Problem(MISSING_SHARD, shard, f"缺少分片 {shard}（{INDEX_FILE} 里列出了它）"))
            continue
        shard_problems, count = check_safetensors(path, tensors)
        problems.extend(shard_problems)
        report.weight_files.append(shard)
        report.tensors += count
        report.weight_bytes += path.stat().st_size
    return report


# ------------------------------------------------------------------ disk space
def expected_download_bytes(model_id: str) -> int | None:
    """Roughly how many bytes ``model_id`` downloads, or None when we cannot tell.

    Ids of the registry (:mod:`helpers.models`) use their weights' size (FP8 ones
    included); other ids are read from their name ("...-8B-..." -> 8 B parameters,
    2 bytes each in bf16, 1 for FP8).
    """
    from helpers.models import model_spec

    spec = model_spec(model_id)
    if spec is not None and not spec.demo:
        return spec.weight_bytes + EXTRA_FILES_BYTES
    name = model_id.rstrip("/").rsplit("/", 1)[-1]
    match = re.search(r"(\d+(?:\.\d+)?)B(?![a-z])", name)
    if not match:
        return None
    bytes_per_param = 1 if "fp8" in name.lower() else 2
    return int(float(match.group(1)) * 1e9 * bytes_per_param) + EXTRA_FILES_BYTES


def bytes_on_disk(folder: Path) -> int:
    """Bytes already under ``folder`` (finished files and partial downloads alike)."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def free_disk_bytes(path: str | Path) -> int:
    """Free bytes on the disk that holds ``path`` (or would hold it, if it does not exist yet)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def required_free_bytes(model_id: str, dest: Path) -> int | None:
    """Free space needed to finish downloading ``model_id`` into ``dest``, with a margin."""
    total = expected_download_bytes(model_id)
    if total is None:
        return None
    remaining = max(total - bytes_on_disk(dest), 0)
    return remaining + max(total // 10, MIN_DISK_MARGIN)


def check_disk_space(model_id: str, dest: Path) -> str:
    """Describe the free space at ``dest``; raise :class:`NotEnoughDiskError` when it is too little."""
    need = required_free_bytes(model_id, dest)
    free = free_disk_bytes(dest)
    if need is None:
        return f"剩余 {free / GIB:.1f} GiB（不知道 {model_id} 有多大，跳过空间检查）"
    if free < need:
        raise NotEnoughDiskError(
            f"磁盘空间不足：{dest} 所在的盘只剩 {free / GIB:.1f} GiB，"
            f"下载 {model_id} 还需要约 {need / GIB:.1f} GiB（含余量）",
            "清理空间，或换一个更大的盘：--dest DIR / QWEN3VL_MODEL_ROOT=DIR"
            "（AutoDL：数据盘 /root/autodl-tmp，可在控制台扩容）",
        )
    return f"剩余 {free / GIB:.1f} GiB，需要约 {need / GIB:.1f} GiB"


# ------------------------------------------------------------------ downloading
def modelscope_download(model_id: str, local_dir: str, revision: str | None = None) -> str:
    """ModelScope's ``snapshot_download`` into ``local_dir`` (progress bars; resumes partial files)."""
    from modelscope import snapshot_download

    return snapshot_download(model_id, revision=revision, local_dir=local_dir)


def huggingface_download(model_id: str, local_dir: str, revision: str | None = None) -> str:
    """Hugging Face's ``snapshot_download``; ``HF_ENDPOINT`` (e.g. https://hf-mirror.com) picks a mirror."""
    from huggingface_hub import snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    return snapshot_download(repo_id=model_id, revision=revision, local_dir=local_dir, endpoint=endpoint)


DOWNLOADERS: dict[str, Downloader] = {"modelscope": modelscope_download, "huggingface": huggingface_download}

_TRUE = {"1", "true", "yes", "on"}


def offline_mode(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``QWEN3VL_OFFLINE`` asks us to stay off the network."""
    environ = os.environ if environ is None else environ
    return any(environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "QWEN3VL_OFFLINE"))


# Exception class names (anywhere in the MRO) from requests, urllib3, httpx,
# modelscope and huggingface_hub, matched by name so none of them must be imported.
_NOT_FOUND = {"NotExistError", "RepositoryNotFoundError", "RevisionNotFoundError", "NoValidRevisionError"}
_AUTH = {"AuthenticationError", "NotLoginException", "GatedRepoError", "PermissionDeniedError"}
_NETWORK = {
    "ConnectionError",
    "TimeoutError",
    "Timeout",
    "TransportError",
    "MaxRetryError",
    "NetworkError",
    "ProxyError",
    "SSLError",
    "gaierror",
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
}


def explain_download_error(exc: BaseException, model_id: str, source: str) -> DownloadError:
    """Turn whatever the hub client raised into a :class:`DownloadError` a learner can act on."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    detail = f"{type(exc).__name__}: {detail}"
    other = "huggingface" if source == "modelscope" else "modelscope"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return NotEnoughDiskError(
            f"下载途中磁盘写满了（{detail}）",
            "清理空间或换更大的盘（--dest / QWEN3VL_MODEL_ROOT），再重新运行续传",
        )
    if names & _NOT_FOUND or status == 404:
        return DownloadError(
            f"{source} 上找不到模型 {model_id!r}（{detail}）",
            f"检查 --model 的拼写（区分大小写），例如 {DEFAULT_MODEL}",
        )
    if names & _AUTH or status in (401, 403):
        return DownloadError(
            f"{source} 拒绝了访问 {model_id!r}（{detail}）",
            "这个模型需要登录或授权：先在网站上申请/登录再下载",
        )
    if names & _NETWORK or (status is not None and status >= 500):
        return DownloadError(
            f"网络错误：从 {source} 下载 {model_id} 失败（{detail}）",
            "检查网络后重新运行（已下载的部分会续传）；AutoDL 上先 source /etc/network_turbo；"
            f"或换源 --source {other}"
            + ("（国内可设 HF_ENDPOINT=https://hf-mirror.com）" if other == "huggingface" else ""),
        )
    if "FileIntegrityError" in names:
        return DownloadError(
            f"下载的文件校验失败（{detail}）", "删除目标文件夹里的 ._____temp 后重新运行下载"
        )
    return DownloadError(
        f"下载 {model_id} 失败（{detail}）", "重新运行一次；仍然失败时换源 --source " + other
    )


def download_model(
    model_id: str = DEFAULT_MODEL,
    dest: str | Path | None = None,
    source: str = "modelscope",
    *,
    revision: str | None = None,
    downloader: Downloader | None = None,
    log: Callable[[str], Any] = print,
) -> CheckpointReport:
    """Download ``model_id`` into ``dest`` (default ``<model root>/<id>``) and verify it.

    ``downloader`` replaces the hub client (tests pass a stand-in); it is called
    as ``downloader(model_id, local_dir=str(dest), revision=revision)``.
    A copy that already verifies is not downloaded again. Raises
    :class:`NotEnoughDiskError` before starting when space is short,
    :class:`DownloadError` when the hub client fails and
    :class:`CheckpointInvalidError` when the result is incomplete.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    dest = Path(dest).expanduser() if dest else Settings.from_env(model=model_id).model_dir()

    existing = verify_checkpoint(dest)
    if existing.ok:
        log(f"{dest} 已经是完整的副本，不再下载。")
        return existing

    if downloader is None:
        if offline_mode():
            raise DownloadError(
                f"离线模式（HF_HUB_OFFLINE / QWEN3VL_OFFLINE 已设置）：不会下载 {model_id}",
                "需要下载时在一个没有这两个变量的终端里运行：unset HF_HUB_OFFLINE QWEN3VL_OFFLINE",
            )
        downloader = DOWNLOADERS[source]

    log(f"磁盘：{check_disk_space(model_id, dest)}")
    dest.mkdir(parents=True, exist_ok=True)
    log(f"从 {source} 下载 {model_id} 到 {dest}（中断后重新运行会续传）……")
    try:
        downloader(model_id, local_dir=str(dest), revision=revision)
    except DownloadError:  # a stand-in may raise ours directly
        raise
    except Exception as exc:
        raise explain_download_error(exc, model_id, source) from exc

    report = verify_checkpoint(dest)
    if not report.ok:
        raise CheckpointInvalidError(report)
    log(report.describe())
    return report


# ------------------------------------------------------------------------- CLI
def dry_run(model_id: str, dest: Path) -> int:
    """Print what downloading ``model_id`` would fetch and whether the disk has room (no network)."""
    from helpers.models import model_spec

    spec = model_spec(model_id)
    size = expected_download_bytes(model_id)
    print(f"模型 {model_id} → {dest}")
    if spec is not None:
        print(f"  {spec.family} {spec.size} {spec.variant}，权重约 {spec.weight_bytes / GIB:.1f} GiB")
    elif size is None:
        print("  ⚠️ 不在模型表里（helpers/models.py），大小未知")
    try:
        print(f"  磁盘：{check_disk_space(model_id, dest)}")
    except NotEnoughDiskError as exc:
        print(f"❌ {exc}")
        return exc.exit_code
    print("（--dry-run：没有下载任何文件）")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model id (default: QWEN3VL_MODEL, else Qwen/Qwen3-VL-4B-Instruct)")
    parser.add_argument("--dest", type=Path, help="target folder (default: <QWEN3VL_MODEL_ROOT>/<id>)")
    parser.add_argument("--source", choices=SOURCES, default="modelscope", help="where to download from")
    parser.add_argument("--revision", help="branch, tag or commit (default: the hub's main revision)")
    parser.add_argument("--verify-only", action="store_true", help="only check the files in --dest")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be downloaded where, and whether it fits; no network",
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env(**({"model": args.model} if args.model else {}))
    except ConfigError as exc:
        print(f"❌ {exc}", file=sys.stderr)
        return EXIT_USAGE

    if settings.is_demo and args.dest is None:
        # The demo checkpoint is built locally, never downloaded.
        from helpers.demo_model import ensure_demo_checkpoint

        dest = ensure_demo_checkpoint()
        if not args.verify_only:
            print(f"QWEN3VL_MODEL=demo：演示模型在本地生成，不需要下载（要下载 4B：--model {DEFAULT_MODEL}）")
    else:
        dest = args.dest.expanduser() if args.dest else settings.model_dir()

    if args.verify_only or settings.is_demo:
        report = verify_checkpoint(dest)
        print(report.describe())
        if not report.ok:
            print(f"   修复：{report.fix_hint()}")
        return EXIT_OK if report.ok else EXIT_INVALID

    if Path(settings.model).expanduser().is_dir():
        print(f"❌ --model {settings.model} 是一个文件夹；下载需要模型 id，例如 --model {DEFAULT_MODEL}")
        return EXIT_USAGE
    if args.dry_run:
        return dry_run(settings.model, dest)
    try:
        download_model(settings.model, dest, args.source, revision=args.revision)
    except DownloadError as exc:
        print(f"❌ {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\n已中断：重新运行同一条命令会续传。", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
