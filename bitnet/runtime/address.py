"""Who may reach a server and where it can listen: the loopback/API-key rule and port checks.

Used by `bitnet.runtime.server` before it starts llama-server; nothing here starts a process.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence

from bitnet.errors import PortInUseError, RuntimeConfigurationError

__all__ = [
    "API_KEY_ENV",
    "LLAMA_API_KEY_ENV",
    "check_port_free",
    "check_single_host",
    "connect_host",
    "free_port",
    "is_loopback",
    "require_api_key",
    "url_host",
]

API_KEY_ENV = "BITNET_API_KEY"  # our variable: the key a non-loopback server must have
LLAMA_API_KEY_ENV = "LLAMA_API_KEY"  # llama-server reads --api-key from here (common/arg.cpp)
_KEY_ARGS = ("--api-key", "--api-key-file")  # extra_args that give llama-server a key themselves
_KEY_ENVS = (LLAMA_API_KEY_ENV, "LLAMA_ARG_API_KEY_FILE")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); False for anything else.

    Other host names count as non-loopback without being resolved: a name can point anywhere.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _key_given_elsewhere(extra_args: Sequence[str], env: Mapping[str, str]) -> bool:
    """True when llama-server gets a key without us: ``--api-key`` in extra_args or LLAMA_API_KEY set."""
    in_args = any(arg == flag or arg.startswith(flag + "=") for arg in extra_args for flag in _KEY_ARGS)
    return in_args or any(env.get(name) for name in _KEY_ENVS)


def require_api_key(
    host: str,
    api_key: str | None,
    *,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> str | None:
    """Return the API key the server should use: `api_key`, else ``$BITNET_API_KEY``, else None.

    `env` is the environment llama-server will run in (default ``os.environ``); ``$BITNET_API_KEY`` is
    read from it first, then from ``os.environ``. Raises `RuntimeConfigurationError` when `host` is not
    loopback and no key is given by any of: `api_key`, ``$BITNET_API_KEY``, ``--api-key`` or
    ``--api-key-file`` in `extra_args`, ``$LLAMA_API_KEY`` or ``$LLAMA_ARG_API_KEY_FILE`` in `env`
    (llama-server reads those itself). A key must be a non-empty string without commas or whitespace
    (llama-server splits its key list on commas).
    """
    env = os.environ if env is None else env
    from_env = env.get(API_KEY_ENV) or os.environ.get(API_KEY_ENV) or None
    key = api_key if api_key is not None else from_env
    if key is not None:
        source = "api_key" if api_key is not None else f"${API_KEY_ENV}"
        if not isinstance(key, str) or not key or any(ch.isspace() or ch == "," for ch in key):
            shown = "<empty>" if key == "" else "<hidden>" if isinstance(key, str) else repr(key)
            raise RuntimeConfigurationError(
                f"{source} must be a non-empty string without commas or whitespace. Got {shown}."
            )
        return key
    if is_loopback(host) or _key_given_elsewhere(extra_args, env):
        return None
    raise RuntimeConfigurationError(
        f"refusing to serve on {host!r} without an API key: that address can be reached from other "
        "machines, and anyone who reaches it could use the model. Set one with --api-key KEY (Python: "
        f"api_key=...) or the environment variable {API_KEY_ENV}; clients then send it as their API key "
        "(`OpenAI(api_key=KEY)`). Or bind 127.0.0.1 (the default) to serve this machine only."
    )


def connect_host(host: str) -> str:
    """Where a client on this machine connects to reach a server bound to `host`."""
    bare = host.strip().strip("[]")
    if bare in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bare == "::":
        return "::1"
    return bare


def url_host(host: str) -> str:
    """`host` as it goes into a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host


def check_single_host(host: str) -> None:
    """serve() binds one TCP address; llama-server's comma lists and unix sockets are not for it."""
    if "," in host or host.strip().endswith(".sock"):
        raise RuntimeConfigurationError(
            f"host must be one address or name (serve() binds a single TCP address). Got {host!r}. "
            "For several addresses or a unix socket, run llama-server through "
            "BitNetRuntime.run_server(extra_args=[...])."
        )


def check_port_free(host: str, port: int) -> None:
    """Raise `PortInUseError` if `host`:`port` cannot be bound now; return quietly if it can.

    The probe socket sets SO_REUSEADDR (as servers do, so a port left in TIME_WAIT by a stopped server
    counts as free) but not SO_REUSEPORT, which llama-server sets: two llama-servers of one user could
    otherwise share a port, each getting some of the connections.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RuntimeConfigurationError(
            f"cannot resolve host {host!r} ({exc.strerror}). Use an IP address such as 127.0.0.1."
        ) from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise _bind_error(host, port, exc) from exc


def _bind_error(host: str, port: int, exc: OSError) -> RuntimeConfigurationError:
    pick = "pass another port (--port N; in Python, port=None picks a free one)"
    if exc.errno == errno.EADDRINUSE:
        return PortInUseError(
            f"port {port} on {host} is already in use (another server is listening there). Stop that "
            f"server, or {pick}. `ss -ltnp 'sport = :{port}'` shows who holds it.",
            host=host,
            port=port,
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PortInUseError(
            f"not allowed to bind port {port} on {host} ({exc.strerror}): ports below 1024 need "
            f"privileges. {pick[0].upper()}{pick[1:]}.",
            host=host,
            port=port,
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return RuntimeConfigurationError(
            f"cannot bind {host}:{port}: {host} is not an address of this machine. Use 127.0.0.1, "
            "0.0.0.0 (all interfaces, needs an API key) or one of this machine's addresses."
        )
    return RuntimeConfigurationError(f"cannot bind {host}:{port}: {exc.strerror or exc}.")


def free_port(host: str) -> int:
    """A port the kernel says is free on `host` now (bind to port 0, read it back, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            raise _bind_error(host, 0, exc) from exc
        return int(probe.getsockname()[1])
