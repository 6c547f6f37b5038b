"""A simulated GPU card, so the tutorial's memory rules can be run and tested on a machine without one.

    QWEN3VL_SIMULATE_GPU=rtx4090 make test       # the notebooks on a pretend 24 GB RTX 4090

Values of ``QWEN3VL_SIMULATE_GPU``:

- ``rtx4090``  -- NVIDIA GeForce RTX 4090, 24564 MiB (what ``nvidia-smi`` reports for a 24 GB card)
- ``a100-80g`` -- NVIDIA A100 80GB, 81920 MiB
- ``h20``      -- NVIDIA H20, 97871 MiB
- a size such as ``24GiB``, ``16GB`` or ``40960MiB`` -- a card of that size
- unset or empty: no simulation (the default)

The simulation only applies when torch sees no CUDA device; on a real GPU the
real figures (``nvidia-smi`` / ``torch.cuda.mem_get_info``) are used.

**Total** is the card's size. **Used** is the sum of the reservations of every
live holder of a model on this machine: our engines in any process (a notebook
kernel, the server, the bench) and vLLM processes started through
:mod:`helpers.vllm_server`. A reservation is what the holder would take on the
real card for the model being taught -- for an engine the same estimate the
real check uses (:func:`helpers.costs.reservation_estimate`: the 4B in bf16 with
the KV cache for ``max_model_len`` when the demo model stands in for it), for
vLLM ``--gpu-memory-utilization`` x total. A reservation lives as long as its
holder: the process is alive and, for an engine, its model object still exists
(so a forgotten copy keeps the card busy, as it would on a real GPU). Entries
of dead processes are dropped when read.

The registry is one JSON file per reservation in a machine-wide folder
(``$QWEN3VL_SIMULATE_GPU_DIR``, default ``<temp dir>/qwen3vl-simulated-gpu``),
guarded by a file lock. It also records the highest use seen (:func:`peak`).
Every figure printed in this mode says that the card is simulated.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "QWEN3VL_SIMULATE_GPU"
DIR_ENV = "QWEN3VL_SIMULATE_GPU_DIR"
MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class Card:
    """A simulated GPU: its name and size in bytes."""

    name: str
    total: int

    @property
    def label(self) -> str:
        """How every printed figure names it: "模拟的 NVIDIA GeForce RTX 4090"."""
        return f"模拟的 {self.name}"


CARDS: dict[str, Card] = {
    "rtx4090": Card("NVIDIA GeForce RTX 4090", 24564 * MIB),
    "a100-80g": Card("NVIDIA A100 80GB", 81920 * MIB),
    "h20": Card("NVIDIA H20", 97871 * MIB),
}
_UNITS = {"gib": GIB, "gb": 1000**3, "mib": MIB, "mb": 1000**2, "g": GIB, "m": MIB}


class SimulatedOutOfMemory(RuntimeError):
    """A holder was registered beyond the simulated card's size: a real card would be out of memory."""


def parse_card(value: str) -> Card:
    """The card a ``QWEN3VL_SIMULATE_GPU`` value names; ValueError listing the accepted values otherwise."""
    key = value.strip().lower()
    if key in CARDS:
        return CARDS[key]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(gib|gb|mib|mb|g|m)", key)
    if not match:
        raise ValueError(f"{ENV}={value!r}: use one of {', '.join(CARDS)} or a size such as 24GiB / 40960MiB")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    return Card(f"GPU {match.group(1)} {match.group(2).upper().replace('I', 'i')}", size)


def _cuda_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def card(environ: dict[str, str] | None = None) -> Card | None:
    """The simulated card when ``QWEN3VL_SIMULATE_GPU`` is set and no real GPU is present, else None."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not value or _cuda_present():
        return None
    return parse_card(value)


def registry_dir() -> Path:
    folder = os.environ.get(DIR_ENV) or str(Path(tempfile.gettempdir()) / "qwen3vl-simulated-gpu")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    folder = registry_dir()
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): tells a live holder from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie holds no memory


def _alive(pid: int, started: str | None) -> bool:
    if Path("/proc").is_dir():
        now = _start_time(pid)
        return now is not None and (started is None or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """One live reservation on the simulated card."""

    pid: int
    name: str  # what holds it, in words
    bytes: int
    path: Path

    def describe(self) -> str:
        return f"{self.name}（pid {self.pid}）{self.bytes / GIB:.1f} GiB"


def _read_holders(folder: Path) -> list[Holder]:
    """Live reservations; files of dead processes are removed (call with the lock held)."""
    holders = []
    for path in sorted(folder.glob("hold-*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not _alive(entry["pid"], entry.get("started")):
            path.unlink(missing_ok=True)
            continue
        holders.append(Holder(entry["pid"], entry["name"], entry["bytes"], path))
    return holders


def holders() -> list[Holder]:
    """Every live holder of the simulated card (any process on this machine)."""
    with _locked() as folder:
        return _read_holders(folder)


def used() -> int:
    return sum(h.bytes for h in holders())


def reading(sim: Card) -> tuple[int, int, list[Holder]]:
    """(free, total, holders) of the simulated card right now."""
    current = holders()
    return max(0, sim.total - sum(h.bytes for h in current)), sim.total, current


def _record_peak(folder: Path, total: int, current: list[Holder]) -> None:
    peak_path = folder / "peak.json"
    in_use = sum(h.bytes for h in current)
    try:
        old = json.loads(peak_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {"bytes": -1}
    if in_use > old["bytes"]:
        peak_path.write_text(
            json.dumps(
                {
                    "bytes": in_use,
                    "total": total,
                    "holders": [h.describe() for h in current],
                    "holder_bytes": [h.bytes for h in current],
                },
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )


def peak() -> dict[str, Any]:
    """The highest use since :func:`reset_peak`: bytes (-1: none), total, holders, holder_bytes."""
    with _locked() as folder:
        try:
            return json.loads((folder / "peak.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"bytes": -1, "total": 0, "holders": []}


def reset_peak() -> None:
    with _locked() as folder:
        (folder / "peak.json").unlink(missing_ok=True)


class Reservation:
    """One holder's share of the simulated card; :meth:`release` (or its owner's end) gives it back."""

    def __init__(self, path: Path, nbytes: int) -> None:
        self.path = path
        self.bytes = nbytes

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def program_name() -> str:
    """What this process is, for a holder's description."""
    argv = " ".join(sys.argv)
    if "ipykernel" in argv:
        return "Jupyter 内核"
    names = (
        *(("helpers.server", "我们的服务"), ("helpers/server.py", "我们的服务")),
        *(("helpers.bench", "make bench"), ("helpers/bench", "make bench"), ("pytest", "pytest")),
    )
    for marker, name in names:
        if marker in argv:
            return name
    return Path(sys.argv[0] or "python").name


def reserve(sim: Card, nbytes: int, name: str, pid: int | None = None) -> Reservation:
    """Register ``nbytes`` held by process ``pid`` (default: this one); SimulatedOutOfMemory if too big."""
    pid = os.getpid() if pid is None else pid
    with _locked() as folder:
        current = _read_holders(folder)
        in_use = sum(h.bytes for h in current)
        if in_use + nbytes > sim.total:
            raise SimulatedOutOfMemory(
                f"{sim.label} 显存不够：{name} 要 {nbytes / GIB:.1f} GiB，但 {in_use / GIB:.1f} / "
                f"{sim.total / GIB:.1f} GiB 已被占用（{'；'.join(h.describe() for h in current)}）。"
                "真实的卡在这里会 out of memory。\n"
                f"The {sim.label.removeprefix('模拟的 ')} (simulated) would run out of memory: {name} needs "
                f"{nbytes / GIB:.1f} GiB, {in_use / GIB:.1f} of {sim.total / GIB:.1f} GiB are held."
            )
        path = folder / f"hold-{pid}-{uuid.uuid4().hex[:8]}.json"
        entry = {"pid": pid, "started": _start_time(pid), "name": name, "bytes": nbytes, "since": time.time()}
        path.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")
        _record_peak(folder, sim.total, [*current, Holder(pid, name, nbytes, path)])
    return Reservation(path, nbytes)


_HELD: weakref.WeakKeyDictionary[Any, Reservation] = weakref.WeakKeyDictionary()


def hold_while_alive(owner: Any, sim: Card, nbytes: int, name: str) -> Reservation:
    """Reserve ``nbytes`` for as long as ``owner`` (e.g. the model object) exists; once per owner."""
    if owner in _HELD:
        return _HELD[owner]
    reservation = reserve(sim, nbytes, name)
    _HELD[owner] = reservation
    weakref.finalize(owner, reservation.release)
    return reservation


def held_by_this_process() -> list[Holder]:
    """The live reservations of this process (what a notebook kernel still holds)."""
    return [h for h in holders() if h.pid == os.getpid()]
