"""User errors as one line: what a bad config key or value, path or file, a full disk or a lost permission
becomes — the text after ``error:`` on the console and in a run's ``FAILED`` marker. Dispatches on exception
types and their attributes only (never on Hydra's message wording).
"""

from __future__ import annotations

from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ceod.errors import CeodError, ConfigError
from ceod.training.faults import environment_error, worker_message


def unwrap(e: BaseException) -> BaseException:
    """The user-facing cause behind Hydra's InstantiationException wrappers."""
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def instantiate_at(cfg: DictConfig, key: str, **kwargs):
    """``instantiate(cfg.<key>)``; a constructor's TypeError/ValueError becomes a ConfigError naming ``key``."""
    return instantiate_node(OmegaConf.select(cfg, key), key, **kwargs)


def instantiate_node(node, key: str, **kwargs):
    """``instantiate(node)`` (the config at ``key``): a constructor's TypeError/ValueError — bad arguments — becomes
    one ConfigError line naming the key and the target; a CeodError and anything else pass through."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = unwrap(e)
        if isinstance(cause, CeodError) or not isinstance(cause, (TypeError, ValueError)):
            raise
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        raise ConfigError(f"bad arguments for {target} ({key}): {type(cause).__name__}: {first_line(cause)}") from e


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def one_line(e: BaseException) -> str | None:
    """A one-line message for a user error (bad config key/value, path, file), None for a bug.

    Dispatches on exception types and their attributes only (never on Hydra's message wording).
    """
    from hydra.errors import ConfigCompositionException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    wrapped, e = isinstance(e, InstantiationException), unwrap(e)
    if isinstance(e, CeodError):
        return worker_message(str(e))  # not a DataLoader worker's traceback
    environment = environment_error(e)  # full disk, no permission, a vanished file
    if environment is not None:
        return environment
    if wrapped and isinstance(e, (TypeError, ValueError)):
        return f"bad config arguments: {type(e).__name__}: {first_line(e)}"
    if isinstance(e, MisconfigurationException):
        return f"trainer: {first_line(e)}"
    if isinstance(e, MissingMandatoryValue):
        return f"missing value for {e.full_key} (set {e.full_key}=...)"
    if isinstance(e, OverrideParseException):
        return f"cannot parse override {e.override!r}: {first_line(e)}"
    if isinstance(e, MissingConfigException):
        options = f" (available: {', '.join(e.options)})" if getattr(e, "options", None) else ""
        return first_line(e) + options
    if isinstance(e, ConfigCompositionException) and isinstance(e.__cause__, (ConfigKeyError, ConfigAttributeError)):
        key = e.__cause__.full_key
        return f"{first_line(e)} {first_line(e.__cause__)} (to add a new key: +{key}=...)"
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        cause = f" {first_line(e.__cause__)}" if e.__cause__ is not None and str(e.__cause__).strip() else ""
        return first_line(e) + cause
    return None


def describe(e: BaseException) -> str:
    """The FAILED marker's text: the user-error line, else the exception's type and first line."""
    return one_line(e) or f"{type(e).__name__}: {first_line(e)}"
