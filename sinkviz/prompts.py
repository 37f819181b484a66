"""Turn a prompt into token ids, optionally through the model's chat template."""

from dataclasses import dataclass

from .errors import BadPrompt

MAX_PROMPT_CHARS = 1_000_000


@dataclass(frozen=True)
class TokenizedPrompt:
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]      # each id decoded on its own, e.g. "<|im_start|>", " capital"
    special: tuple[bool, ...]    # BOS, template markers and other special tokens
    templated: bool              # True when the chat template wrapped the prompt
    text: str                    # the exact text that was tokenized


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadPrompt("the prompt is empty")
    if "\x00" in prompt:
        raise BadPrompt("the prompt contains a NUL character")
    check_text(prompt, "the prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadPrompt(f"the prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
    return prompt


def check_text(text: str, what: str) -> str:
    """BadPrompt when ``text`` holds a lone surrogate (not Unicode text; e.g. undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadPrompt(f"{what} is not valid text: character {err.start + 1:,} is a lone surrogate "
                        f"(U+{ord(text[err.start]):04X}), e.g. from bytes that are not UTF-8") from None
    return text


def tokenize(tokenizer, prompt: str, use_template: bool = True, system: str | None = None,
             max_tokens: int | None = None) -> TokenizedPrompt:
    """Prompt as a user turn of the chat template (with ``system`` if given), or raw text with
    the tokenizer's own special tokens (e.g. a BOS) when there is no template or it is off.
    Raises BadPrompt past ``max_tokens``."""
    check_prompt(prompt)
    templated = bool(use_template and tokenizer.chat_template)
    if templated:
        messages = ([{"role": "system", "content": system}] if system else []) + \
                   [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = prompt
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if max_tokens is not None and len(ids) > max_tokens:
        raise BadPrompt(f"the prompt has {len(ids):,} tokens; the limit is {max_tokens:,}")
    special_ids = set(tokenizer.all_special_ids)
    return TokenizedPrompt(
        token_ids=tuple(int(i) for i in ids),
        tokens=tuple(tokenizer.decode([i]) for i in ids),
        special=tuple(i in special_ids for i in ids),
        templated=templated, text=text)
