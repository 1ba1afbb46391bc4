"""`sftkit chat`: an interactive terminal chat that streams the model's answer.

Ctrl-C while an answer is being written stops that answer (what was shown stays in the
conversation, as Ollama does); Ctrl-C at the prompt, twice in a row, quits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftkit.generation import TextStreamer

HELP = ("commands: /reset forgets the conversation, /bye (or Ctrl-D) quits; Ctrl-C stops an "
        "answer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sftkit.commands.generate import add_sampling_arguments

    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a run directory (its model/), a run's model/ directory, a preset, a "
                             ".gguf, a Hub id, ...")
    parser.add_argument("--style", help="prompt style: template (the model's own chat "
                                        "template), alpaca, phi3, chatml (default: the "
                                        "model's own)")
    parser.add_argument("--system",
                        help="a system message, for styles that have one (default: none, or "
                             "the template's default system message)")
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sftkit.checkpoints import load_pretrained
    from sftkit.generation import TextStreamer, generation_settings, stream
    from sftkit.generation.packed import packed_for_decoding

    loaded = load_pretrained(args.model, style=args.style)
    # Packed once for the whole chat: each answer's batcher then finds nothing left to pack.
    model = packed_for_decoding(loaded.model)
    style = loaded.style
    tokenizer = loaded.tokenizer
    config = generation_settings(loaded, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, seed=args.seed)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    print(f"{loaded.source}, {style.name} prompts. {HELP}", file=sys.stderr)
    at_prompt_interrupt = False  # the last Ctrl-C came at the prompt: another one quits
    while True:
        try:
            user = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            if at_prompt_interrupt:
                print()
                return 0
            at_prompt_interrupt = True
            print("\n(Ctrl-C again, /bye or Ctrl-D to quit)", file=sys.stderr)
            continue
        at_prompt_interrupt = False
        command = user.strip()
        if command in ("/bye", "/exit", "/quit"):
            return 0
        if command == "/reset":
            messages = list(opening)
            continue
        if not command:
            continue
        messages.append({"role": "user", "content": user})
        ids = tokenizer.encode(style.format_conversation(messages))
        # Forget the oldest turns when the conversation outgrows the context.
        while len(ids) + 16 > loaded.config.context_length and len(messages) > 2:
            messages = opening + messages[len(opening) + 2:]
            ids = tokenizer.encode(style.format_conversation(messages))
        answer = _write_answer(stream(model, ids, config, decode=tokenizer.decode),
                               TextStreamer(tokenizer.decode, style.stop_strings))
        messages.append({"role": "assistant", "content": answer})


def _write_answer(tokens: Iterator[int], streamer: TextStreamer) -> str:
    """Print the answer as its tokens come; Ctrl-C stops it. The answer as shown."""
    try:
        for token in tokens:
            print(streamer.feed(token), end="", flush=True)
        print(streamer.flush(), flush=True)
    except KeyboardInterrupt:
        print(flush=True)  # this answer ends here; the chat goes on
    return streamer.text.strip()
