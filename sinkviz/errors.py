"""User-facing errors: each carries one sentence that names the cause.

The CLI prints ``str(err)`` and exits non-zero; pages show it with ``st.error``.
Anything that is not a ``SinkvizError`` is a bug and keeps its traceback.
"""


class SinkvizError(Exception):
    """Base class: the message is meant for the user, in one line."""


class BadPrompt(SinkvizError):
    """The prompt is empty, too short for the chosen metric, or too long."""


class ModelNotFound(SinkvizError):
    """No model under that id or path could be loaded offline."""


class UnsupportedArchitecture(SinkvizError):
    """The model's attention does not go through the attention interface we hook."""


class AttentionOutsideInterface(UnsupportedArchitecture):
    """The model computes attention itself; its eager ``output_attentions`` path may still serve."""


class BadSetting(SinkvizError):
    """A setting is out of its allowed range."""


class OutOfMemory(SinkvizError):
    """The device ran out of memory; memory was released and the next request can run."""
