"""Show what is learned: an example's rendered text with its learned tokens marked.

Marked are the tokens a target learns (target i is token i + 1, so the first token never is),
within `max_length`, and the appended end-of-text when it is learned. In a terminal the
learned text is green; otherwise it is wrapped in [[brackets]].

Example:
    >>> from sftkit.data.dataset import InstructionDataset
    >>> from sftkit.data.prompts import get_style
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> chat = {"messages": [{"role": "user", "content": "Hi"},
    ...                      {"role": "assistant", "content": "Hello."}]}
    >>> data = InstructionDataset([chat], gpt2_tokenizer(), get_style("chatml"))
    >>> print(marked_example(data, 0, mask_prompt=False, max_length=None, color=False))
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    [[Hello.<|im_end|>
    <|endoftext|>]]
"""

from __future__ import annotations

from sftkit.data.dataset import InstructionDataset, record_text

GREEN, RESET = "\033[1;32m", "\033[0m"


def marked_example(dataset: InstructionDataset, index: int, *, mask_prompt: bool,
                   max_length: int | None, color: bool) -> str:
    """Example `index` of `dataset` as text, its learned part marked (see the module doc)."""
    example = dataset.examples[index]
    text = record_text(dataset.records[index], dataset.style, dataset.tokenizer)
    ids, offsets = dataset.tokenizer.encode_with_offsets(text)
    targets = example.target_mask(mask_prompt)[:max_length]
    # Token j is learned when target j - 1 is; the last target is the end-of-text.
    learned = [False] + targets[:len(ids) - 1] + [False] * (len(ids) - len(targets))
    pieces = [(text[start:end], flag) for (start, end), flag in zip(offsets, learned)]
    if len(targets) == len(ids):
        pieces.append((dataset.tokenizer.decode([dataset.tokenizer.eos_id]), targets[-1]))
    opening, closing = (GREEN, RESET) if color else ("[[", "]]")
    out, inside = [], False
    for piece, flag in pieces:
        if flag != inside:
            out.append(opening if flag else closing)
            inside = flag
        out.append(piece)
    if inside:
        out.append(closing)
    if len(targets) < len(ids):
        out.append(f"\n(cut: training sees the first {max_length} tokens of {len(ids) + 1})")
    return "".join(out)
