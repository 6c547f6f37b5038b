"""helpers.download: verification of checkpoint folders and the download flow, with stand-in hubs only."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import save_file

from helpers import download
from helpers.config import DEFAULT_MODEL
from helpers.download import (
    BAD_HEADER,
    BAD_JSON,
    BAD_SIZE,
    EMPTY_FILE,
    EXIT_DISK,
    EXIT_DOWNLOAD,
    EXIT_INVALID,
    EXIT_OK,
    INDEX_FILE,
    MISSING_FILE,
    MISSING_FOLDER,
    MISSING_SHARD,
    MISSING_TENSOR,
    NO_WEIGHTS,
    TRUNCATED,
    CheckpointInvalidError,
    DownloadError,
    NotEnoughDiskError,
    download_model,
    verify_checkpoint,
)

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"
GIB = 1024**3


def write_fake_checkpoint(folder: Path) -> Path:
    """A tiny but complete sharded checkpoint: 2 shards + index, configs, tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = {
        SHARD_1: {"model.embed.weight": torch.randn(8, 4), "model.layer.bias": torch.zeros(4)},
        SHARD_2: {"lm_head.weight": torch.ones(2, 3)},
    }
    weight_map = {}
    for shard, tensors in shards.items():
        save_file(tensors, folder / shard)
        weight_map.update(dict.fromkeys(tensors, shard))
    total = sum(t.numel() * t.element_size() for tensors in shards.values() for t in tensors.values())
    files = {
        INDEX_FILE: {"metadata": {"total_size": total}, "weight_map": weight_map},
        "config.json": {"model_type": "qwen3_vl"},
        "generation_config.json": {"do_sample": True},
        "tokenizer.json": {"version": "1.0", "model": {"type": "BPE"}},
        "tokenizer_config.json": {"model_max_length": 262144},
        "preprocessor_config.json": {"patch_size": 16},
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    return folder


class StandInHub:
    """Replaces snapshot_download: writes a complete copy into local_dir, then applies ``damage``."""

    def __init__(self, damage: Callable[[Path], None] | None = None, error: BaseException | None = None):
        self.damage = damage
        self.error = error
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, model_id: str, **kwargs) -> str:
        self.calls.append((model_id, kwargs))
        if self.error is not None:
            raise self.error
        folder = write_fake_checkpoint(Path(kwargs["local_dir"]))
        if self.damage:
            self.damage(folder)
        return str(folder)


@pytest.fixture
def plenty_of_disk(monkeypatch):
    monkeypatch.setattr(download, "free_disk_bytes", lambda path: 500 * GIB)


@pytest.fixture
def no_network(monkeypatch):
    """Any name lookup fails the test: these tests must never leave the machine."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to resolve {args[:1]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def truncate(name: str, keep: int | None = None, cut: int = 0) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.truncate(keep if keep is not None else size - cut)

    return damage


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def promise_extra_tensor(folder: Path) -> None:
    index = json.loads((folder / INDEX_FILE).read_text())
    index["weight_map"]["lm_head.bias"] = SHARD_2
    (folder / INDEX_FILE).write_text(json.dumps(index))


def append_bytes(folder: Path) -> None:
    with (folder / SHARD_2).open("ab") as f:
        f.write(b"\0" * 16)


def garble_header(folder: Path) -> None:
    path = folder / SHARD_1
    data = bytearray(path.read_bytes())
    data[8:16] = b"not json"
    path.write_bytes(bytes(data))


DAMAGES = {
    "missing shard": (remove(SHARD_2), MISSING_SHARD, SHARD_2, "缺少分片"),
    "truncated shard data": (truncate(SHARD_2, cut=5), TRUNCATED, SHARD_2, "被截断"),
    "shard cut inside its header": (truncate(SHARD_1, keep=20), TRUNCATED, SHARD_1, "被截断"),
    "shard shorter than the length prefix": (truncate(SHARD_1, keep=3), TRUNCATED, SHARD_1, "被截断"),
    "header lacks a promised tensor": (promise_extra_tensor, MISSING_TENSOR, SHARD_2, "lm_head.bias"),
    "zero-length shard": (truncate(SHARD_1, keep=0), EMPTY_FILE, SHARD_1, "0 字节"),
    "zero-length tokenizer config": (truncate("tokenizer_config.json", keep=0), EMPTY_FILE, "", "0 字节"),
    "bytes after the last tensor": (append_bytes, BAD_SIZE, SHARD_2, "文件损坏"),
    "garbage header": (garble_header, BAD_HEADER, SHARD_1, "文件头"),
    "cut-off tokenizer.json": (truncate("tokenizer.json", cut=3), BAD_JSON, "tokenizer.json", "JSON"),
    "missing config.json": (remove("config.json"), MISSING_FILE, "config.json", "config.json"),
    "missing processor config": (remove("preprocessor_config.json"), MISSING_FILE, "", "processor_config"),
    "missing tokenizer": (remove("tokenizer.json"), MISSING_FILE, "tokenizer.json", "merges.txt"),
    "missing index": (remove(INDEX_FILE), MISSING_FILE, INDEX_FILE, INDEX_FILE),
}


# ----------------------------------------------------------------- verification
def test_complete_sharded_copy_verifies(tmp_path):
    report = verify_checkpoint(write_fake_checkpoint(tmp_path / "model"))
    assert report.ok, report.describe()
    assert report.weight_files == [SHARD_1, SHARD_2]
    assert report.tensors == 3
    assert "校验通过" in report.describe()


def test_tokenizer_as_vocab_and_merges_is_accepted(tmp_path):
    folder = write_fake_checkpoint(tmp_path / "model")
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text("{}")
    (folder / "merges.txt").write_text("#version: 0.2\n")
    assert verify_checkpoint(folder).ok


@pytest.mark.parametrize("damage, kind, file, fragment", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_copy_fails_verification_with_a_message_naming_the_problem(
    tmp_path, capsys, damage, kind, file, fragment
):
    folder = write_fake_checkpoint(tmp_path / "model")
    damage(folder)
    report = verify_checkpoint(folder)
    assert not report.ok
    assert kind in report.kinds
    problem = next(p for p in report.problems if p.kind == kind)
    assert fragment in problem.message
    if file:
        assert problem.file == file

    assert download.main(["--verify-only", "--dest", str(folder)]) == EXIT_INVALID
    out = capsys.readouterr().out
    assert "校验失败" in out and fragment in out and "修复" in out


def test_missing_folder_fails_verification(tmp_path):
    report = verify_checkpoint(tmp_path / "nothing-here")
    assert report.kinds == {MISSING_FOLDER}


def test_folder_without_any_weights_fails_verification(tmp_path):
    folder = write_fake_checkpoint(tmp_path / "model")
    for shard in (INDEX_FILE, SHARD_1, SHARD_2):
        (folder / shard).unlink()
    assert NO_WEIGHTS in verify_checkpoint(folder).kinds


def test_damaged_files_are_listed_for_deletion(tmp_path):
    folder = write_fake_checkpoint(tmp_path / "model")
    truncate(SHARD_2, cut=5)(folder)
    report = verify_checkpoint(folder)
    assert report.broken_files() == [SHARD_2]
    assert SHARD_2 in report.fix_hint()


def test_single_file_demo_checkpoint_verifies(demo_checkpoint, capsys):
    report = verify_checkpoint(demo_checkpoint)
    assert report.ok, report.describe()
    assert report.weight_files == ["model.safetensors"]
    assert report.tensors > 0
    assert download.main(["--verify-only", "--dest", str(demo_checkpoint)]) == EXIT_OK
    assert "校验通过" in capsys.readouterr().out


def test_truncated_copy_of_the_demo_checkpoint_fails(demo_checkpoint, tmp_path):
    copy = Path(shutil.copytree(demo_checkpoint, tmp_path / "demo"))
    truncate("model.safetensors", cut=1024)(copy)
    report = verify_checkpoint(copy)
    assert report.kinds == {TRUNCATED}
    assert download.main(["--verify-only", "--dest", str(copy)]) == EXIT_INVALID


# -------------------------------------------------------------------- download
def test_stand_in_download_writes_a_copy_that_verifies(tmp_path, plenty_of_disk, no_network):
    hub = StandInHub()
    dest = tmp_path / "models" / DEFAULT_MODEL
    report = download_model(DEFAULT_MODEL, dest, downloader=hub, log=lambda _: None)
    assert report.ok
    assert hub.calls == [(DEFAULT_MODEL, {"local_dir": str(dest), "revision": None})]
    assert (dest / SHARD_2).is_file()


def test_default_destination_is_the_model_root_folder(tmp_path, monkeypatch, plenty_of_disk):
    monkeypatch.setenv("QWEN3VL_MODEL_ROOT", str(tmp_path))
    hub = StandInHub()
    download_model(DEFAULT_MODEL, downloader=hub, log=lambda _: None)
    assert hub.calls[0][1]["local_dir"] == str(tmp_path / "Qwen" / "Qwen3-VL-4B-Instruct")


def test_complete_copy_is_not_downloaded_again(tmp_path, plenty_of_disk):
    dest = write_fake_checkpoint(tmp_path / "model")
    hub = StandInHub()
    assert download_model(DEFAULT_MODEL, dest, downloader=hub, log=lambda _: None).ok
    assert hub.calls == []


# Each damage's message is pinned by verification above; here two kinds show the report reaches the caller.
REPORTED = {name: DAMAGES[name] for name in ("missing shard", "garbage header")}


@pytest.mark.parametrize("damage, kind, file, fragment", REPORTED.values(), ids=REPORTED.keys())
def test_incomplete_download_raises_with_the_report(tmp_path, plenty_of_disk, damage, kind, file, fragment):
    with pytest.raises(CheckpointInvalidError) as caught:
        download_model(DEFAULT_MODEL, tmp_path / "m", downloader=StandInHub(damage), log=lambda _: None)
    assert kind in caught.value.report.kinds
    assert caught.value.exit_code == EXIT_INVALID
    assert fragment in str(caught.value)


def test_disk_shortage_stops_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "free_disk_bytes", lambda path: 2 * GIB)
    hub = StandInHub()
    dest = tmp_path / "m"
    with pytest.raises(NotEnoughDiskError) as caught:
        download_model(DEFAULT_MODEL, dest, downloader=hub, log=lambda _: None)
    assert hub.calls == []
    assert not dest.exists()
    assert "磁盘空间不足" in str(caught.value) and "QWEN3VL_MODEL_ROOT" in str(caught.value)


def test_partly_downloaded_files_count_towards_the_space_needed(tmp_path):
    dest = tmp_path / "m"
    before = download.required_free_bytes(DEFAULT_MODEL, dest)
    (dest / "._____temp").mkdir(parents=True)
    with (dest / "._____temp" / SHARD_1).open("wb") as f:
        f.truncate(3 * GIB)  # sparse: counts 3 GiB, takes no space
    assert before - download.required_free_bytes(DEFAULT_MODEL, dest) == 3 * GIB


@pytest.mark.parametrize(
    "model_id, low, high",
    [
        (DEFAULT_MODEL, 8.5e9, 9.5e9),
        ("Qwen/Qwen3-VL-8B-Instruct", 17e9, 18.5e9),  # 8.77 B parameters in bf16
        ("Qwen/Qwen3-VL-4B-Instruct-FP8", 5e9, 6e9),  # the vision tower and embeddings stay bf16
    ],
)
def test_expected_download_size_follows_the_model(model_id, low, high):
    assert low < download.expected_download_bytes(model_id) < high


def test_unknown_model_size_skips_the_space_check(tmp_path):
    assert download.expected_download_bytes("someone/custom-vlm") is None
    assert "跳过空间检查" in download.check_disk_space("someone/custom-vlm", tmp_path)


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


def _modelscope_network_error() -> Exception:
    from modelscope.hub.errors import NetworkError

    return NetworkError("Connection aborted")


def _modelscope_not_found() -> Exception:
    from modelscope.hub.errors import NotExistError

    return NotExistError("model Qwen/nope not exists")


def _hf_offline_error() -> Exception:
    from huggingface_hub.errors import LocalEntryNotFoundError

    return LocalEntryNotFoundError("cannot reach the Hub and the file is not cached")


NETWORK_ERRORS = {
    "requests ConnectionError": lambda: requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='www.modelscope.cn', port=443): Max retries exceeded"
    ),
    "requests ReadTimeout": lambda: requests.exceptions.ReadTimeout("read timed out"),
    "DNS failure": lambda: socket.gaierror(-3, "Temporary failure in name resolution"),
    "connection reset": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "modelscope NetworkError": _modelscope_network_error,
    "huggingface offline": _hf_offline_error,
    "HTTP 502": lambda: _http_error(502),
}


@pytest.mark.parametrize("make_error", NETWORK_ERRORS.values(), ids=NETWORK_ERRORS.keys())
def test_network_errors_become_a_clear_message(tmp_path, plenty_of_disk, make_error):
    with pytest.raises(DownloadError) as caught:
        download_model(
            DEFAULT_MODEL, tmp_path / "m", downloader=StandInHub(error=make_error()), log=lambda _: None
        )
    message = str(caught.value)
    assert "网络错误" in message
    assert "续传" in message and "network_turbo" in message
    assert caught.value.exit_code == EXIT_DOWNLOAD


@pytest.mark.parametrize(
    "make_error, fragment, exit_code",
    [
        (_modelscope_not_found, "找不到模型", EXIT_DOWNLOAD),
        (lambda: _http_error(404), "找不到模型", EXIT_DOWNLOAD),
        (lambda: _http_error(401), "拒绝", EXIT_DOWNLOAD),
        (lambda: OSError(28, "No space left on device"), "磁盘写满", EXIT_DISK),
        (lambda: RuntimeError("something odd"), "something odd", EXIT_DOWNLOAD),
    ],
    ids=["modelscope not found", "HTTP 404", "HTTP 401", "disk full mid-way", "anything else"],
)
def test_other_hub_errors_become_a_clear_message(tmp_path, plenty_of_disk, make_error, fragment, exit_code):
    with pytest.raises(DownloadError) as caught:
        download_model(
            DEFAULT_MODEL, tmp_path / "m", downloader=StandInHub(error=make_error()), log=lambda _: None
        )
    assert fragment in str(caught.value)
    assert caught.value.exit_code == exit_code


@pytest.fixture
def online_with_stand_in(monkeypatch):
    """The CLI's real downloaders replaced by stand-ins, with offline mode lifted."""
    hubs = {source: StandInHub() for source in download.SOURCES}
    monkeypatch.setattr(download, "DOWNLOADERS", hubs)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("QWEN3VL_OFFLINE", raising=False)
    monkeypatch.delenv("QWEN3VL_MODEL", raising=False)
    return hubs


def test_cli_downloads_with_the_chosen_source(tmp_path, capsys, plenty_of_disk, online_with_stand_in):
    dest = tmp_path / "m"
    code = download.main(["--model", DEFAULT_MODEL, "--dest", str(dest), "--source", "huggingface"])
    assert code == EXIT_OK
    assert online_with_stand_in["huggingface"].calls and not online_with_stand_in["modelscope"].calls
    assert "校验通过" in capsys.readouterr().out


def test_cli_network_failure_exits_without_a_traceback(
    tmp_path, capsys, plenty_of_disk, online_with_stand_in
):
    online_with_stand_in["modelscope"].error = requests.exceptions.ConnectionError("Max retries exceeded")
    assert download.main(["--dest", str(tmp_path / "m")]) == EXIT_DOWNLOAD
    err = capsys.readouterr().err
    assert "网络错误" in err and "Traceback" not in err


def test_cli_disk_shortage_exits_with_its_own_code(tmp_path, monkeypatch, capsys, online_with_stand_in):
    monkeypatch.setattr(download, "free_disk_bytes", lambda path: 1 * GIB)
    assert download.main(["--dest", str(tmp_path / "m")]) == EXIT_DISK
    assert not online_with_stand_in["modelscope"].calls
    assert "磁盘空间不足" in capsys.readouterr().err


def test_cli_incomplete_download_exits_with_the_verification_code(
    tmp_path, capsys, plenty_of_disk, online_with_stand_in
):
    online_with_stand_in["modelscope"].damage = remove(SHARD_2)
    assert download.main(["--dest", str(tmp_path / "m")]) == EXIT_INVALID
    assert "缺少分片" in capsys.readouterr().err


def test_offline_mode_refuses_to_call_the_real_hub(tmp_path, monkeypatch, plenty_of_disk):
    tripwire = StandInHub(error=AssertionError("the real hub must not be called offline"))
    monkeypatch.setattr(download, "DOWNLOADERS", {"modelscope": tripwire, "huggingface": tripwire})
    with pytest.raises(DownloadError, match="离线模式"):
        download_model(DEFAULT_MODEL, tmp_path / "m", log=lambda _: None)
    assert tripwire.calls == []


def test_demo_model_needs_no_download(monkeypatch, capsys, demo_checkpoint):
    monkeypatch.setenv("QWEN3VL_MODEL", "demo")
    assert download.main([]) == EXIT_OK
    out = capsys.readouterr().out
    assert "不需要下载" in out and "校验通过" in out


def test_modelscope_download_puts_files_in_local_dir(monkeypatch, tmp_path):
    import modelscope

    calls = []
    monkeypatch.setattr(modelscope, "snapshot_download", lambda *a, **k: calls.append((a, k)) or "x")
    download.modelscope_download(DEFAULT_MODEL, local_dir=str(tmp_path))
    assert calls == [((DEFAULT_MODEL,), {"revision": None, "local_dir": str(tmp_path)})]


def test_huggingface_download_honours_hf_endpoint(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **k: calls.append(k) or "x")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/mirror")
    download.huggingface_download(DEFAULT_MODEL, local_dir=str(tmp_path))
    assert calls[0]["endpoint"] == "http://127.0.0.1:9/mirror"
    assert calls[0]["repo_id"] == DEFAULT_MODEL and calls[0]["local_dir"] == str(tmp_path)
