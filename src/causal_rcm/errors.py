"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A mistake in the user's input (path, option, checkpoint, prompt): say what to do."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not match the model configuration."""


class InputWarning(UserWarning):
    """Input that works but not as given (e.g. an image cropped to the model's aspect ratio): the CLI prints one line."""


class TrainingStopped(Exception):
    """A run stopped on purpose (e.g. repeated non-finite losses); its last checkpoint is intact."""


def shorten(text: str, limit: int = 80) -> str:
    """``repr(text)``, cut to its first ``limit`` characters with the length said when longer: how an error
    quotes what a user typed, so that a 100 KB prompt is not echoed back whole."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
