"""The small ``key=value`` command lines of ``ceod.predict``, ``ceod.report``, ``ceod.export`` and ``ceod.audit``,
and the exit status of the argparse ones (``ceod.aoi``, ``ceod.mvtec``, the generators).

Same look as the Hydra entry point (``python -m ceod.predict ckpt=run/checkpoints/last.ckpt input=imgs/``);
a user error is one ``error: …`` line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from ceod.errors import CeodError, ConfigError

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _convert(key: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"{key} must be true or false, got {raw!r}")
    if raw.lower() in ("null", "none", ""):
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key} must be {'a number' if kind in (int, float) else kind.__name__}, got {raw!r}") from None


def parse(argv: list[str], options: dict[str, tuple[type, Any]], positional: str | None = None,
          usage: str = "") -> dict[str, Any]:
    """``key=value`` words → {key: value} typed by ``options`` ({key: (type, default)}; default ``...``: required).

    ``positional``: the key a bare word (no ``=``) sets, e.g. ``report DIR``.
    """
    values: dict[str, Any] = {}
    for word in argv:
        if word in ("-h", "--help"):
            print(usage)
            sys.exit(0)
        key, sep, raw = word.partition("=")
        if not sep:
            if positional is None or positional in values:
                raise ConfigError(f"unexpected argument {word!r} (use key=value; {usage})")
            key, raw = positional, word
        key = key.lstrip("+")
        if key not in options:
            raise ConfigError(f"unknown option {key!r} (options: {', '.join(options)})")
        values[key] = _convert(key, raw, options[key][0])
    for key, (_, default) in options.items():
        if key not in values:
            if default is ...:
                raise ConfigError(f"missing {key}=... ({usage})")
            values[key] = default
    return values


def run_command(fn: Callable[[], Any]) -> Any:
    """Run ``fn()``; a :class:`CeodError` prints one ``error:`` line and exits 2."""
    try:
        return fn()
    except CeodError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def exit_status(fn: Callable[[], Any]) -> int:
    """For argparse mains: print what ``fn()`` returns and give 0; a :class:`CeodError` prints one ``error:``
    line and gives 2."""
    try:
        print(fn())
    except CeodError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
