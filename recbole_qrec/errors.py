"""Errors that carry a message for the user: the entry point prints them without a traceback."""


class QRecError(Exception):
    """Base class of user-facing errors: the message says what is wrong and how to fix it."""


class ConfigError(QRecError, ValueError):
    """A configuration key or value that cannot work."""


class UnknownModelError(ConfigError):
    """A model name that is neither a recbole-qrec nor a RecBole model."""


class DatasetNotFoundError(QRecError, FileNotFoundError):
    """No copy of a dataset exists in any searched location."""


class MalformedDataError(QRecError, ValueError):
    """An input file does not have the documented format."""
