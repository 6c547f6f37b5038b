"""Find a font that can draw Chinese text on this machine (for the OCR sample and grounding labels).

Its own module, below both users: :mod:`helpers.assets` draws ``ocr_sample.png``
with it and :mod:`helpers.grounding` labels boxes with it, and grounding must
not import assets (assets imports grounding's coordinate helpers).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

# Where a CJK font usually lives on Debian/Ubuntu, macOS and Windows (checked in this order).
_CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)
CJK_FONT_HINT = (
    "no font with Chinese glyphs found. Install one: `pip install pylopdf-fonts-zh-cn==0.1.1` "
    "(Noto Sans SC, SIL OFL 1.1, the font used for the committed PNG) or `apt-get install "
    "fonts-noto-cjk`, or pass --font / set QWEN3VL_CJK_FONT. 没有中文字体：按上面的方法安装一个。"
)


def find_cjk_font() -> Path | None:
    """A font file with Chinese glyphs on this machine, or None.

    Order: ``$QWEN3VL_CJK_FONT``; Noto Sans SC from the ``pylopdf-fonts-zh-cn``
    pip package; common system paths; then ``fc-list :lang=zh``.
    """
    env = os.environ.get("QWEN3VL_CJK_FONT")
    if env and Path(env).is_file():
        return Path(env)
    spec = importlib.util.find_spec("pylopdf_fonts_zh_cn")  # locate only: importing is not needed
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "NotoSansSC-Regular.otf"
            if candidate.is_file():
                return candidate
    for name in _CJK_FONT_CANDIDATES:
        if Path(name).is_file():
            return Path(name)
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(
                ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        files = sorted(line.split(":")[0].strip() for line in out.splitlines() if line.strip())
        for name in files:
            if Path(name).is_file():
                return Path(name)
    return None
