"""The exceptions nsmagic raises, shared by every layer."""


class NsmagicError(Exception):
    """Base class of every error nsmagic raises on purpose."""


class SpecError(NsmagicError, ValueError):
    """An option or limit is invalid; the message is one sentence naming it and what is accepted."""


class CapabilityError(NsmagicError):
    """The host does not allow something that was explicitly asked for."""


class ContainerSetupError(NsmagicError):
    """The container could not be created; the message says which step failed and why."""
