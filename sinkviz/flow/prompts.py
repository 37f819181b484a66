"""Turn a prompt into token ids, optionally through the model's chat template."""

from dataclasses import dataclass

from sinkviz.errors import BadPrompt
from sinkviz.output.readable import readable_tokens

MAX_PROMPT_CHARS = 1_000_000


@dataclass(frozen=True)
class TokenizedPrompt:
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]      # each id decoded on its own, e.g. "<|im_start|>", " capital"
    special: tuple[bool, ...]    # BOS, template markers and other special tokens
    templated: bool              # True when the chat template wrapped the prompt
    text: str                    # the exact text that was tokenized
    offsets: tuple = ()          # per token, (start, stop) of the characters of ``text`` it covers
    user_span: tuple = ()        # (start, stop) of the user's prompt in ``text``; () if not found
    system_span: tuple = ()      # (start, stop) of the system turn's content in ``text``; () if none
    labels: tuple = ()           # per token, readable text: '␣are', '↵', 'こ⟨0xE3 0x81⟩' (readable.py)

    def __post_init__(self):     # stored as JSON lists: back to tuples
        object.__setattr__(self, "offsets", tuple(tuple(o) for o in self.offsets))
        for name in ("user_span", "system_span", "labels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def shown(self) -> tuple[str, ...]:
        """Readable labels where known, else the decoded tokens."""
        return self.labels or self.tokens


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
        user_span, system_span = turn_spans(tokenizer, text, prompt, system)
    else:
        text, user_span, system_span = prompt, (0, len(prompt)), ()
    ids, offsets = _encode(tokenizer, text, add_special_tokens=not templated)
    if max_tokens is not None and len(ids) > max_tokens:
        raise BadPrompt(f"the prompt has {len(ids):,} tokens; the limit is {max_tokens:,}")
    special_ids = set(tokenizer.all_special_ids)
    special = tuple(i in special_ids for i in ids)
    tokens = tuple(tokenizer.decode([i]) for i in ids)
    return TokenizedPrompt(
        token_ids=tuple(int(i) for i in ids), tokens=tokens,
        special=special, templated=templated, text=text, offsets=offsets,
        user_span=user_span, system_span=system_span,
        labels=readable_tokens(tokenizer, ids, text, offsets, special, tokens))


def _encode(tokenizer, text: str, add_special_tokens: bool) -> tuple[list[int], tuple]:
    """Token ids and, from a fast tokenizer, each token's character offsets (else ())."""
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return enc["input_ids"], tuple((int(a), int(b)) for a, b in enc["offset_mapping"])
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"], ()


SENTINELS = ("\ue000", "\ue001")   # private-use characters no real prompt or template holds


def turn_spans(tokenizer, text: str, prompt: str, system: str | None) -> tuple[tuple, tuple]:
    """((start, stop) of the user's prompt, (start, stop) of the system turn's content) in the
    templated ``text``, found by rendering the template with sentinels in place of both contents
    (so a default system turn the template adds is found too); () where one cannot be located."""
    try:
        probe = tokenizer.apply_chat_template(
            [{"role": "system", "content": SENTINELS[0]}, {"role": "user", "content": SENTINELS[1]}],
            tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that refuses a system turn: find the user turn alone
        probe = None
    user = _user_span(tokenizer, text, prompt)
    if not user or probe is None or probe.count(SENTINELS[0]) != 1 or probe.count(SENTINELS[1]) != 1:
        return user, ()
    before, rest = probe.split(SENTINELS[0])
    between = rest.split(SENTINELS[1])[0]
    head = text[:user[0]]
    if not (head.startswith(before) and head.endswith(between)) or len(head) < len(before) + len(between):
        return user, ()
    start, stop = len(before), len(head) - len(between)
    return user, ((start, stop) if stop > start and (system is None or text[start:stop].strip() == system.strip()) else ())


def _user_span(tokenizer, text: str, prompt: str) -> tuple:
    """(start, stop) of the user's content: the template rendered around a sentinel gives the
    text before and after it; the content is what lies between (the prompt, maybe trimmed)."""
    try:
        probe = tokenizer.apply_chat_template([{"role": "user", "content": SENTINELS[1]}],
                                              tokenize=False, add_generation_prompt=True)
    except Exception:
        return ()
    if probe.count(SENTINELS[1]) != 1:
        return ()
    after = probe.split(SENTINELS[1])[1]
    if not text.endswith(after):
        return ()
    stop = len(text) - len(after)
    for content in (prompt, prompt.strip()):
        if content and text[:stop].endswith(content):
            return (stop - len(content), stop)
    return ()
