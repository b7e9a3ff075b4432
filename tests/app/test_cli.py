"""``lora-patch app``: its flags, and every bad input refused with one line before any server starts."""

from __future__ import annotations

import socket

import pytest

import lora_patch_adapters.app as app_package
from lora_patch_adapters.app import ui
from lora_patch_adapters.cli import main

FLAGS = ("--generator", "--checkpoint", "--patch", "--defensive", "--host", "--port", "--device")


@pytest.fixture
def launches(monkeypatch):
    """Records launch_app calls instead of serving."""
    calls = []
    monkeypatch.setattr(app_package, "launch_app", lambda session, host, port: calls.append((session, host, port)))
    return calls


def _free_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _error(capsys, argv, code):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("lora-patch app: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text
    assert "127.0.0.1" in text and "7860" in text


@pytest.mark.parametrize("port", ["0", "65536", "-3", "http"])
def test_a_bad_port_is_a_usage_error(capsys, launches, port):
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--port", port])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lora-patch app: error: argument --port:") and "\n" not in err
    assert not launches


def test_a_missing_patch_dir_is_refused_before_serving(capsys, launches, tmp_path):
    err = _error(capsys, ["app", "--patch", str(tmp_path / "nope"), "--port", _free_port()], 2)
    assert "--patch" in err and "not found" in err
    err = _error(capsys, ["app", "--defensive", str(tmp_path), "--port", _free_port()], 2)
    assert "--defensive" in err and "not a patch directory" in err
    assert not launches


def test_a_port_in_use_is_refused_before_serving(capsys, launches):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        err = _error(capsys, ["app", "--port", str(port)], 1)
    assert f"--port {port}" in err and "in use" in err
    assert not launches


def test_a_missing_gradio_names_the_extra(capsys, launches, monkeypatch):
    monkeypatch.setattr(ui, "gradio_available", lambda: False)
    monkeypatch.setattr(app_package, "gradio_available", lambda: False)
    err = _error(capsys, ["app"], 1)
    assert 'pip install "lora-patch-adapters[app]"' in err
    assert not launches


def test_the_defaults_serve_the_testbed_on_loopback(capsys, launches):
    port = int(_free_port())
    assert main(["app", "--port", str(port)]) == 0
    (session, host, served_port), = launches
    assert (host, served_port) == ("127.0.0.1", port)
    assert session.generator == "testbed" and session.editors == {"bypass": None, "defensive": None}
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out


def test_an_official_generator_needs_its_checkpoint(capsys, launches):
    err = _error(capsys, ["app", "--generator", "stargan", "--port", _free_port()], 2)
    assert "--checkpoint" in err
    assert not launches
