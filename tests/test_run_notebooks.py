"""`make demo` (helpers.run_notebooks): fresh kernels, tagged cells skipped, a table of results."""

from __future__ import annotations

import nbformat

from helpers import run_notebooks


def write_notebook(path, *cells):
    notebook = nbformat.v4.new_notebook()
    for source, tags in cells:
        notebook.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    nbformat.write(notebook, path)
    return path


def test_make_demo_runs_each_notebook_skips_tagged_cells_and_reports_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_notebooks, "OUTPUT_DIR", tmp_path / "executed")
    good = write_notebook(
        tmp_path / "01_good.ipynb",
        ("answer = 6 * 7", []),
        ("raise RuntimeError('needs the internet')", [run_notebooks.SKIP_TAG]),  # skipped as nbval does
        ("assert answer == 42", []),
    )
    bad = write_notebook(tmp_path / "02_bad.ipynb", ("assert 1 + 1 == 3, 'arithmetic broke'", []))
    source = good.read_text(encoding="utf-8")

    assert run_notebooks.main([str(good), str(bad)]) == 1  # one failure: `make demo` fails
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("01_", "02_"))}
    assert rows["01_good.ipynb"].endswith("ok")
    assert "FAILED" in rows["02_bad.ipynb"] and "arithmetic broke" in rows["02_bad.ipynb"]
    assert "1/2 notebooks ok" in out
    executed = nbformat.read(tmp_path / "executed" / "01_good.ipynb", as_version=4)
    assert [c.source for c in executed.cells] == ["answer = 6 * 7", "assert answer == 42"]
    assert good.read_text(encoding="utf-8") == source  # the notebook itself is never modified


def test_make_demo_without_notebooks_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_notebooks, "tutorial_notebooks", lambda: [])
    assert run_notebooks.main([]) == 0
    assert "nothing to run" in capsys.readouterr().out


def test_the_vllm_notebook_is_skipped_with_the_fix_when_vllm_is_missing(tmp_path, monkeypatch, capsys):
    name = run_notebooks.NEEDS_VLLM[0]
    why = "needs the vLLM environment: run `make vllm-setup`"
    monkeypatch.setattr(run_notebooks, "missing_vllm", lambda: why)
    monkeypatch.setattr(run_notebooks, "OUTPUT_DIR", tmp_path / "executed")
    path = write_notebook(tmp_path / name, ("raise SystemExit('must not run')", []))
    good = write_notebook(tmp_path / "01_good.ipynb", ("x = 1", []))
    assert run_notebooks.main([str(good), str(path)]) == 0
    assert f"{name}: skipped, {why}" in capsys.readouterr().out
