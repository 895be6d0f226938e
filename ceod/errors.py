"""User-facing errors: raised for bad input, printed as one line by the entry points."""


class CeodError(Exception):
    """A problem with the user's input (config, path, file, mask); printed as one line."""


class ConfigError(CeodError, ValueError):
    """A config value that cannot be used."""


class DataError(CeodError):
    """A dataset path, file or mask that cannot be used."""
