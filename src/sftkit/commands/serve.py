"""`sftkit serve`: serve a model over the Ollama and OpenAI-compatible HTTP APIs.

Example:
    $ sftkit serve --model runs/default          # answers as "sftkit-default"
    $ OLLAMA_HOST=http://127.0.0.1:11434 ollama run sftkit-default
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sftkit.commands.generate import add_quantize_argument

if TYPE_CHECKING:
    from sftkit.serve import Engine

DEFAULT_MODEL = "smollm2-135m-instruct"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a run directory (its model/), a run's model/ directory, a preset, "
                             f"a .gguf, a Hub id, ... (default: {DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=port_number, default=11434,
                        help="port to listen on, 1-65535, or 0 for any free one "
                             "(default: Ollama's 11434)")
    parser.add_argument("--name", help="the model name clients ask for (default: from --model, "
                                       "e.g. sftkit-default for runs/default)")
    parser.add_argument("--style", help="prompt style for chat messages (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps, ...")
    parser.add_argument("--max-new-tokens", type=int, default=2048,
                        help="the cap on one request's new tokens: num_predict (Ollama) and "
                             "max_tokens (OpenAI) above it, or unset, get this many at most, and "
                             "an answer it cuts short ends with done_reason/finish_reason "
                             "\"length\" (default: 2048)")
    parser.add_argument("--slots", type=int, default=16,
                        help="the most requests generated together (continuous batching: a "
                             "new request joins at the next token; more wait) (default: 16)")
    add_quantize_argument(parser)
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"),
                        help="the server's log level")


def port_number(text: str) -> int:
    """`--port`: 1 to 65535, or 0 for any free port.

    >>> port_number("8080")
    8080
    >>> port_number("99999")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a number from 1 to 65535 (0: any free port)
    """
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be a number from 1 to 65535 (0: any free port)")
    return port


def default_name(source: str) -> str:
    """The name a model answers to: the preset's, `sftkit-<run>` for a run's model, else the
    file or directory name; lower case, in the characters Ollama allows.

    >>> default_name("runs/default/model"), default_name("gpt2-medium")
    ('sftkit-default', 'gpt2-medium')
    >>> default_name("/models/SmolLM2-360M.Q8_0.gguf")
    'smollm2-360m.q8_0'
    """
    path = Path(source).expanduser()
    if path.name in ("model", "adapter") and path.parent.name:  # a run's model/, a LoRA run's
        name = f"sftkit-{path.parent.name}"
    elif path.suffix in (".gguf", ".pth", ".pt"):
        name = path.stem
    elif "/" in source and not path.exists():
        name = source.rsplit("/", 1)[1]  # a Hub id: the repository's name
    else:
        name = path.name or source
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "sftkit"


def run(args: argparse.Namespace) -> int:
    from sftkit.checkpoints import load_pretrained, resolve_source
    from sftkit.data.templates import check_style_name
    from sftkit.device import pick_device
    from sftkit.errors import SftkitError
    from sftkit.generation import for_decoding
    from sftkit.serve import Engine, Limits, listen, serve

    # Every mistake in the arguments is found before the model's (long) load.
    if args.max_new_tokens < 1:
        raise SftkitError("--max-new-tokens must be at least 1")
    if args.slots < 1:
        raise SftkitError("--slots must be at least 1")
    device = pick_device(args.device)
    if args.style:
        check_style_name(args.style)
    _, source = resolve_source(args.model)  # a run directory stands for its model/
    with listen(args.host, args.port) as listener:
        start = time.perf_counter()
        loaded = load_pretrained(source)
        loaded.model.to(device)
        loaded = for_decoding(loaded, args.quantize)
        name = args.name or default_name(source)
        engine = Engine(loaded, name=name, style=args.style,
                        limits=Limits(max_new_tokens=args.max_new_tokens, slots=args.slots),
                        load_seconds=time.perf_counter() - start)
        _print_banner(engine, args.host, listener.getsockname()[1])
        serve(engine, log_level=args.log_level, listener=listener)
    return 0


def _print_banner(engine: Engine, host: str, port: int) -> None:
    """How to reach the server, with each kind of client."""
    url = f"http://{_url_host(host)}:{port}"
    name = engine.name
    request = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}],
                          "stream": False})
    print(f"serving {name!r}: {engine.loaded.source}, {engine.style.name} prompts, "
          f"loaded in {engine.load_seconds:.1f} s, up to {engine.limits.slots} requests "
          f"at once, {engine.limits.max_new_tokens} new tokens each\n"
          f"  listening on {url} (Ollama API at /api, OpenAI-compatible API at /v1)\n"
          f"  ollama:  OLLAMA_HOST={url} ollama run {name}\n"
          f"  curl:    curl {url}/api/chat -d '{request}'\n"
          f"  openai:  OpenAI(base_url=\"{url}/v1\", api_key=\"unused\")\n"
          f"  judge:   sftkit evaluate --judge ollama:{name} --host {url}", flush=True)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"  # reachable from this machine, whatever the interface
    return f"[{host}]" if ":" in host else host
