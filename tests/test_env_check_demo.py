"""In demo mode the environment check never fails for want of the 4B's disk space."""

from __future__ import annotations

from helpers import env_check
from helpers.config import Settings

GIB = 1024**3


def test_a_small_disk_is_a_warning_in_demo_mode_and_a_failure_for_the_4b(monkeypatch, tmp_path):
    monkeypatch.setattr(env_check, "free_disk_bytes", lambda path: 1 * GIB)
    demo = env_check.check_disk(Settings.from_env(model="demo", model_root=str(tmp_path)))
    four_b = Settings.from_env(model="Qwen/Qwen3-VL-4B-Instruct", model_root=str(tmp_path))
    real = env_check.check_disk(four_b)
    assert demo.status == env_check.WARN and "不需要下载" in demo.value and demo.fix
    assert real.status == env_check.FAIL
