"""`bitnet.server`, as the README documents it: the OpenAI-compatible server (bitnet/runtime/server.py)."""

from bitnet.runtime.server import (
    API_KEY_ENV,
    LLAMA_API_KEY_ENV,
    ServerHandle,
    check_port_free,
    cors_args,
    is_loopback,
    require_api_key,
    serve,
    serve_forever,
    start_server,
)

__all__ = [
    "API_KEY_ENV",
    "LLAMA_API_KEY_ENV",
    "ServerHandle",
    "check_port_free",
    "cors_args",
    "is_loopback",
    "require_api_key",
    "serve",
    "serve_forever",
    "start_server",
]
