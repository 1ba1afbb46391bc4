"""An Ollama Modelfile for an exported GGUF: `FROM`, a `TEMPLATE` in Ollama's Go-template
syntax that renders the text the model was trained on, `PARAMETER stop` for the end-of-turn
strings and the default `SYSTEM` when the prompt style has one.

The template is written from the style's turn layout (`sftkit.export.turns`). Ollama gives it
`.System` (the system message, else the Modelfile's `SYSTEM`) and `.Messages` (every message,
system ones too, each with `.Role` and `.Content`); a user turn that comes last is followed by
the generation prompt, where the answer starts.

Example:
    >>> from sftkit.data.prompts import get_style
    >>> print(modelfile("model.gguf", get_style("chatml")))
    FROM ./model.gguf
    TEMPLATE \"""{{ if .System }}<|im_start|>system
    {{ .System }}<|im_end|>
    {{ end }}{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}\
{{ if eq .Role "user" }}<|im_start|>user
    {{ .Content }}<|im_end|>
    {{ if $last }}<|im_start|>assistant
    {{ end }}{{ else if eq .Role "assistant" }}<|im_start|>assistant
    {{ .Content }}<|im_end|>
    {{ end }}{{ end }}\"""
    PARAMETER stop "<|im_end|>"
    PARAMETER stop "<|im_start|>"
    <BLANKLINE>
"""

from __future__ import annotations

import json
from pathlib import Path

from sftkit.data.prompts import PromptStyle
from sftkit.errors import SftkitError
from sftkit.export.turns import default_system_message, split_format, turn_layout

MODELFILE = "Modelfile"


def go_template(style: PromptStyle) -> tuple[str, str | None]:
    """The Go template that renders what `style.render` renders, and the default system
    message for the Modelfile's `SYSTEM` (None: the template writes the default itself, or
    there is none).

    Example:
        >>> from sftkit.data.prompts import get_style
        >>> template, system = go_template(get_style("alpaca"))
        >>> template[:40], system[:14]
        ('{{ if .System }}{{ .System }}{{ end }}{{', 'Below is an in')
    """
    layout = turn_layout(style)
    system = default_system_message(layout)
    system_before, system_after = split_format(layout.system_format)
    user_before, user_after = split_format(layout.user_format)
    default = "" if system is not None or not layout.default_system \
        else "{{ else }}" + _text(layout.default_system)
    template = "".join((
        "{{ if .System }}", _text(system_before), "{{ .System }}", _text(system_after),
        default, "{{ end }}",
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}",
        '{{ if eq .Role "user" }}', _text(user_before), "{{ .Content }}", _text(user_after),
        "{{ if $last }}", _text(layout.generation_prompt), "{{ end }}",
        '{{ else if eq .Role "assistant" }}',
        _text(layout.generation_prompt), "{{ .Content }}", _text(layout.end_of_turn),
        _if_not_last(layout.turn_separator), "{{ end }}{{ end }}",
    ))
    return template, system


def _if_not_last(text: str) -> str:
    return "{{ if not $last }}" + _text(text) + "{{ end }}" if text else ""


def _text(text: str) -> str:
    """Literal text of a Go template, which is written as it is unless it holds `{{` (an
    action) or `\"""` (the end of the Modelfile's TEMPLATE): those go in a quoted string."""
    if "{{" in text or '"""' in text:
        return "{{ " + json.dumps(text) + " }}"  # JSON's escapes are Go's
    return text


def modelfile(gguf_name: str, style: PromptStyle) -> str:
    """The Modelfile text for the GGUF `gguf_name` (beside it) used in `style`."""
    template, system = go_template(style)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system is not None:
        lines.append(f'SYSTEM """{_checked(system, "default system message")}"""')
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stop_strings(style)]
    return "\n".join(lines) + "\n"


def stop_strings(style: PromptStyle) -> list[str]:
    """The style's stop strings as Modelfile values: one line each, so without the blank lines
    around Alpaca's `### Instruction:` (Modelfile values are single-line).

    Example:
        >>> from sftkit.data.prompts import get_style
        >>> stop_strings(get_style("alpaca"))
        ['### Instruction:', '### Input:', '### Response:']
    """
    stops = [stop.strip() for stop in style.stop_strings]
    for stop in stops:
        if "\n" in stop:
            raise SftkitError(f"stop string {stop!r} spans lines; a Modelfile cannot hold it")
    return [stop for stop in dict.fromkeys(stops) if stop]


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _checked(text: str, what: str) -> str:
    if '"""' in text:
        raise SftkitError(f'the {what} holds """, which a Modelfile cannot quote')
    return text


def create_command(name: str, directory: Path) -> str:
    """The command that makes the export an Ollama model.

    Example:
        >>> create_command("sftkit-default", Path("/tmp/out"))
        'ollama create sftkit-default -f /tmp/out/Modelfile'
    """
    return f"ollama create {name} -f {directory / MODELFILE}"
