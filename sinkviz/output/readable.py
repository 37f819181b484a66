"""Tokens people can read: the text a token covers, whitespace made visible, byte fragments marked.

Byte-level tokenizers (GPT-2, SmolLM2, Llama 3 ...) split a character such as 'こ' (bytes E3 81 93)
into tokens that are not text on their own; decoded alone they print '�'. A token is labelled:
- a special token: as decoded ('<|im_start|>');
- a whole-text token: its decoded text with spaces, newlines and tabs shown as '␣', '↵', '⇥';
- a fragment (its own bytes are not UTF-8): the character(s) it is part of, from the tokenizer's
  character offsets, followed by its own bytes, e.g. 'こ⟨0xE3 0x81⟩' and 'こ⟨0x93⟩'.
"""

import re
from functools import lru_cache

VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>\Z")   # SentencePiece byte fallback
EMPTY = "∅"


def visible(text: str) -> str:
    """``text`` with whitespace drawn ('␣', '↵', '⇥', '␍'); '∅' for the empty string."""
    return text.translate(VISIBLE) if text else EMPTY


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character -> the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_bytes(piece: str) -> bytes | None:
    """The bytes a vocabulary piece stands for: byte-level ('ãģ' -> E3 81) or '<0xE3>';
    None when the piece is neither."""
    match = BYTE_TOKEN.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    decoder = _byte_decoder()
    if piece and all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    return None


def is_fragment(data: bytes | None) -> bool:
    if data is None:
        return False
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def readable_tokens(tokenizer, ids, text: str, offsets: tuple, special: tuple,
                    decoded: tuple[str, ...]) -> tuple[str, ...]:
    """One label per token of ``ids`` (see the module docstring). ``offsets``: per token
    (start, stop) in ``text``, or () when the tokenizer gives none; ``decoded``: each id decoded
    on its own."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    labels = []
    for k, (own, piece) in enumerate(zip(decoded, pieces)):
        data = token_bytes(piece) if isinstance(piece, str) else None
        fragment = is_fragment(data) if data is not None else "\ufffd" in own
        if special[k] or not fragment:
            labels.append(visible(own) if not special[k] else own)
            continue
        covered = text[offsets[k][0]:offsets[k][1]] if offsets else ""
        escape = " ".join(f"0x{b:02X}" for b in data) if data else "part"
        labels.append(f"{visible(covered) if covered else ''}⟨{escape}⟩")
    return tuple(labels)


def quoted(label: str) -> str:
    """A label between single quotes, for sentences and lists ('␣are')."""
    return f"'{label}'"
