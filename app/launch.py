"""Start the app with ``streamlit_config.toml`` in force.

Streamlit reads ``.streamlit/config.toml``, ``STREAMLIT_*`` variables and ``--section.option``
flags, but has no flag naming a config file elsewhere. This launcher reads the repository's
``streamlit_config.toml`` and passes every option as a flag, so ``make run``, the README and the
tests start the same server with the same settings.

Usage::

    python -m app.launch [--server.port 8502] [--section.option=value ...]

Flags given here override the file's values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomllib

from app.paths import MAIN, ROOT, SERVER_CONFIG

RAM_DIR = Path("/dev/shm") / f"drnets-app-{os.getuid()}"  # tmpfs on Linux: temporary files stay in memory


class LaunchError(ValueError):
    """A config file or a command-line flag the launcher cannot turn into Streamlit flags."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"server": {"port": 1}}`` -> ``{"server.port": 1}``; nested tables (``[theme.sidebar]``) nest further."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def format_value(value: Any) -> str:
    """TOML value -> the text Streamlit's flag parser expects (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise LaunchError(f"cannot pass {value!r} ({type(value).__name__}) as a Streamlit flag")


def config_flags(options: Mapping[str, Any]) -> list[str]:
    """Flat options -> ``--section.option=value`` flags; a list value repeats its flag per item."""
    flags = []
    for name, value in options.items():
        values = value if isinstance(value, list) else [value]
        flags += [f"--{name}={format_value(v)}" for v in values]
    return flags


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["--server.port", "8502", "--server.headless=true"]`` -> ``{"server.port": "8502", ...}``."""
    overrides: dict[str, str] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise LaunchError(f"expected a --section.option flag such as --server.port 8502, got {arg!r}")
        if "=" in arg:
            name, value = arg[2:].split("=", 1)
        elif rest and not rest[0].startswith("--"):
            name, value = arg[2:], rest.pop(0)
        else:
            raise LaunchError(f"{arg} needs a value, e.g. {arg}=VALUE")
        overrides[name] = value
    return overrides


def read_config(path: Path = SERVER_CONFIG) -> dict[str, Any]:
    try:
        return flatten(tomllib.loads(path.read_text()))
    except FileNotFoundError:
        raise LaunchError(f"{path} is missing; it holds the app's server settings") from None
    except tomllib.TOMLDecodeError as err:
        raise LaunchError(f"{path} is not valid TOML: {err}") from None


def resolve_options(args: Sequence[str] = (), config_path: Path = SERVER_CONFIG) -> dict[str, Any]:
    """The file's options with the command line's on top."""
    return {**read_config(config_path), **parse_overrides(args)}


def build_command(options: Mapping[str, Any]) -> list[str]:
    """The ``python -m app.serve run app/main.py --flags...`` command for these options: Streamlit's
    own command line, run by ``app.serve`` so the server warms its caches before the first visitor."""
    return [sys.executable, "-m", "app.serve", "run", str(MAIN), *config_flags(options)]


def main(argv: Sequence[str] | None = None) -> None:
    try:
        options = resolve_options(sys.argv[1:] if argv is None else argv)
        command = build_command(options)
    except LaunchError as err:
        sys.exit(f"app.launch: {err}")
    print(f"drnets app: http://localhost:{options.get('server.port', 8501)} (settings from {SERVER_CONFIG.name})")
    env = server_env(os.environ)
    sys.stdout.flush()
    # exec, not a child process: the launcher's pid is the server's, so stopping one stops the other.
    os.execve(sys.executable, command, env)


def server_env(environ: Mapping[str, str], ram_dir: Path = RAM_DIR) -> dict[str, str]:
    """The server's environment.

    The pages import ``app.*`` and ``drnets``, so the repository root goes on PYTHONPATH.
    Starlette spools an upload larger than 1 MB into a temporary file while it parses it;
    pointing TMPDIR at a RAM-backed folder keeps uploaded bytes off the disk. A TMPDIR the
    user set is kept.
    """
    env = dict(environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")])))
    if "TMPDIR" not in environ and ram_dir.parent.is_dir() and os.access(ram_dir.parent, os.W_OK):
        ram_dir.mkdir(mode=0o700, exist_ok=True)
        env["TMPDIR"] = str(ram_dir)
    return env


if __name__ == "__main__":
    main()
