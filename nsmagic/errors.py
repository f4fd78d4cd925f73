"""The exceptions nsmagic raises, shared by every layer."""


class NsmagicError(Exception):
    """Base class of every error nsmagic raises on purpose."""


class SpecError(NsmagicError, ValueError):
    """An option or limit is invalid; the message is one sentence naming it and what is accepted."""


class CapabilityError(NsmagicError):
    """The host does not allow something that was explicitly asked for."""


class ContainerSetupError(NsmagicError):
    """The container could not be created; the message says which step failed and why."""


class ProtocolError(NsmagicError):
    """A message or frame from another process was malformed or too large."""


def explain(error: BaseException) -> str:
    """An error in plain words, without Python's decoration."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror if not error.filename else f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__
