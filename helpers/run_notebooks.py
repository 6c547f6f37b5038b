"""Execute every tutorial notebook in order and print how each one went (``make demo``).

Cells tagged ``nbval-skip`` (internet or GPU only) are skipped exactly as the
tests skip them. Executed copies go to ``build/executed/`` (git-ignored); the
notebooks in ``notebooks/`` are never modified.

    python -m helpers.run_notebooks [notebooks/02_first_inference.ipynb ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
OUTPUT_DIR = REPO_ROOT / "build" / "executed"
SKIP_TAG = "nbval-skip"
OFFLINE_ENV = {"QWEN3VL_MODEL": "demo", "HF_HUB_OFFLINE": "1", "QWEN3VL_OFFLINE": "1"}
# Notebooks that start vLLM: run only when its own environment exists (`make vllm-setup`).
NEEDS_VLLM = ("07_scale_out_vllm.ipynb",)


def missing_vllm() -> str | None:
    """Why the vLLM notebooks cannot run here, or None when they can."""
    from helpers.vllm_server import vllm_python

    try:
        vllm_python()
    except FileNotFoundError:
        return "needs the vLLM environment: run `make vllm-setup` first"
    return None


def tutorial_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in reading order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def runnable(path: Path):
    """The notebook at ``path`` without its ``nbval-skip`` cells: what nbval and ``make demo`` run."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if SKIP_TAG not in c.get("metadata", {}).get("tags", [])]
    return nb


def execute_notebook(
    path: Path, output_dir: Path | None = None, timeout: int = 600
) -> tuple[bool, float, str]:
    """Run one notebook top to bottom in a fresh kernel; return (ok, seconds, error summary).

    The executed copy goes to ``output_dir`` (default ``OUTPUT_DIR``, build/executed/).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = runnable(path)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    error = ""
    try:
        client.execute()
        ok = True
    except CellExecutionError as exc:
        ok = False
        error = str(exc).strip().splitlines()[-1][:200]
    except Exception as exc:  # kernel died, timeout, ...
        ok = False
        error = f"{type(exc).__name__}: {exc}"[:200]
    seconds = time.perf_counter() - start
    output_dir = output_dir or OUTPUT_DIR
    output_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, output_dir / path.name)
    return ok, seconds, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    paths = args.notebooks or tutorial_notebooks()
    if not paths:
        print("no notebooks yet: nothing to run")
        return 0

    rows, skipped = [], []
    for path in paths:
        if path.name in NEEDS_VLLM and (why := missing_vllm()):
            skipped.append(f"{path.name}: skipped, {why}")
            continue
        print(f"running {path.name} ...", flush=True)
        rows.append((path.name, *execute_notebook(path, timeout=args.timeout)))

    width = max(len(name) for name, *_ in rows)
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  result")
    for name, ok, seconds, error in rows:
        print(f"{name:<{width}}  {seconds:8.1f}  {'ok' if ok else 'FAILED  ' + error}")
    for line in skipped:
        print(line)
    shown = OUTPUT_DIR.relative_to(REPO_ROOT) if OUTPUT_DIR.is_relative_to(REPO_ROOT) else OUTPUT_DIR
    print(f"executed copies: {shown}/")
    failed = sum(not ok for _, ok, _, _ in rows)
    print(f"{len(rows) - failed}/{len(rows)} notebooks ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
