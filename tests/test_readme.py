"""The README's quick start runs as written."""

import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(name):
    text = README.read_text()
    match = re.search(
        rf"<!-- section:{name} -->(.*?)<!-- /section:{name} -->", text, re.S
    )
    assert match, f"README has no section {name}"
    return match.group(1)


@pytest.mark.slow
def test_quickstart_runs(tmp_path, tfds_data_dir, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", _section("quickstart"), re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "TFDS_DATA_DIR", tfds_data_dir)
    exec(compile(blocks[0], "README quick start", "exec"), {})
    assert (tmp_path / "naisnet.keras").exists()
    printed = capsys.readouterr().out
    assert "largest difference after reload: 0.0" in printed
