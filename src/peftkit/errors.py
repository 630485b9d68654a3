"""Exception types. Every error names what is wrong and how to fix it."""


class ConfigError(ValueError):
    """A config field holds a value the method cannot use."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class TargetError(ValueError):
    """Targeting matched nothing, or matched a module the method cannot wrap."""


class AdapterError(ValueError):
    """An adapter operation was asked for something that does not exist or is not allowed now."""


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or unsafe to load."""


class BaseModelMismatchError(CheckpointError):
    """An adapter was saved for a different base model than the one it is loaded onto."""
