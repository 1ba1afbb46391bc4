"""`sftkit serve` arguments: which model a run stands for and the name it answers to."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sftkit import checkpoints
from sftkit.checkpoints import resolve_source
from sftkit.cli import build_parser, main
from sftkit.commands.serve import default_name
from sftkit.errors import SftkitError


@pytest.mark.parametrize(("source", "name"), [
    ("runs/default/model", "sftkit-default"),
    ("smollm2-135m-instruct", "smollm2-135m-instruct"),
    ("/models/SmolLM2-360M-Instruct.Q8_0.gguf", "smollm2-360m-instruct.q8_0"),
    ("HuggingFaceTB/SmolLM2-135M", "smollm2-135m"),
    ("/tmp/my model dir", "my-model-dir"),
])
def test_default_name(source, name):
    assert default_name(source) == name


def test_a_run_directory_stands_for_its_model(tmp_path):
    run = tmp_path / "runs" / "demo"
    (run / "model").mkdir(parents=True)
    (run / "config.toml").write_text("")
    with pytest.raises(SftkitError, match="without a trained model"):
        resolve_source(str(run))
    (run / "model" / "config.json").write_text("{}")
    assert resolve_source(str(run)) == ("path", str(run / "model"))
    assert default_name(resolve_source(str(run))[1]) == "sftkit-demo"
    assert resolve_source("gpt2") == ("preset", "gpt2")


def test_the_command_line():
    args = build_parser().parse_args(["serve", "--model", "runs/x", "--port", "8080"])
    assert (args.model, args.host, args.port, args.name) == ("runs/x", "127.0.0.1", 8080, None)


@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http"])
def test_a_port_out_of_range_is_refused_while_parsing(port, capsys):
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["serve", "--port", port])
    assert raised.value.code == 2
    assert "--port: must be a number from 1 to 65535 (0: any free port)" in \
        capsys.readouterr().err


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The sources `serve` asked to load; loading itself is refused, so nothing is served."""
    asked: list[str] = []

    def load_pretrained(source: str, **kwargs):
        asked.append(source)
        raise SftkitError(f"(test) not loading {source}")

    monkeypatch.setattr(checkpoints, "load_pretrained", load_pretrained)
    return asked


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another server listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize("model", ["runs/missing", "smollm2-135m-instruct"])
def test_a_busy_port_is_found_before_the_model_loads(model, busy_port, loads, capsys,
                                                      tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--model", model, "--port", str(busy_port)]) == 2
    assert capsys.readouterr().err == (f"sftkit serve: error: port {busy_port} on 127.0.0.1 "
                                       "is already in use (by another server?); stop it or "
                                       "choose another port\n")
    assert loads == []


def test_a_host_that_is_not_ours_is_a_clear_error(loads, capsys):
    assert main(["serve", "--host", "192.0.2.1", "--port", "0"]) == 2
    assert "cannot listen on 192.0.2.1" in capsys.readouterr().err
    assert loads == []


def test_a_missing_model_is_a_clean_error(tmp_path, capsys):
    missing = tmp_path / "runs" / "missing"
    assert main(["serve", "--model", str(missing), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sftkit serve: error: ") and str(missing) in err
    assert "Traceback" not in err


def test_a_book_checkpoint_is_passed_through_to_the_loader(tmp_path, loads):
    book = tmp_path / "gpt2-small-sft.pth"
    book.write_bytes(b"")
    assert main(["serve", "--model", str(book), "--port", "0"]) == 2
    assert loads == [str(book)]


def test_an_unknown_style_or_device_is_refused_before_loading(loads, capsys):
    assert main(["serve", "--style", "klingon", "--port", "0"]) == 2
    assert "unknown prompt style 'klingon'" in capsys.readouterr().err
    assert main(["serve", "--device", "tpu9", "--port", "0"]) == 2
    assert "unknown device 'tpu9'" in capsys.readouterr().err
    assert loads == []


def test_quantize_int8_serves_int8_layers(tmp_path, monkeypatch):
    """`serve --quantize int8` hands the engine the int8 decoding copy of the model."""
    import sftkit.serve
    from sftkit.checkpoints.native import save_native
    from sftkit.generation.quantize import Int8Linear
    from sftkit.models import ModelConfig, build_model
    from sftkit.tokenizers import gpt2_tokenizer

    config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4)
    model_dir = save_native(build_model(config), gpt2_tokenizer(), tmp_path / "tiny")
    served = []
    monkeypatch.setattr(sftkit.serve, "serve", lambda engine, **_: served.append(engine))
    assert main(["serve", "--model", str(model_dir), "--port", "0", "--quantize", "int8"]) == 0
    layers = [type(module) for module in served[0].loaded.model.modules()]
    assert Int8Linear in layers
