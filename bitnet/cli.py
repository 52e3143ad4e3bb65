"""The two command-line front ends: one-shot inference and the HTTP server.

    python run_inference.py -m model.gguf -p "Once upon a time" -n 64 -temp 0
    python run_inference_server.py -m model.gguf --port 8080
    python -m bitnet infer ... / python -m bitnet serve ...   (same options)

Argument values are checked by argparse (exit 2); setup problems (missing model or binary) and launch
failures print the message and exit 1, without a traceback; Ctrl-C exits 130, SIGTERM 143 and SIGHUP
(a closed terminal) 129, always after stopping the engine; run_inference.py's --timeout exits 124.
Only this module configures logging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

try:
    import termios
except ImportError:  # pragma: no cover - Windows
    termios = None  # type: ignore[assignment]

from bitnet.errors import RuntimeConfigurationError, RuntimeLaunchError, RuntimeTimeoutError, StopRequested
from bitnet.runtime.diagnostics import INFERENCE_BINARY, SERVER_BINARY
from bitnet.runtime.process import stop_signals
from bitnet.runtime.runtime import BitNetRuntime
from bitnet.runtime.server import API_KEY_ENV, cors_args, require_api_key, serve_forever

__all__ = ["build_inference_parser", "build_server_parser", "inference_main", "main", "server_main"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TIMEOUT = 124  # what timeout(1) exits with


# ---------------------------------------------------------------------- argparse value types


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _threads(text: str) -> int | None:
    """`auto` (any case) -> None (all cores), else a positive int."""
    if text.strip().lower() == "auto":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 = greedy), got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1-65535, got {value}")
    return value


def _non_blank(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# ---------------------------------------------------------------------- parsers


def _base_parser(prog: str | None, description: str, *, server: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-m", "--model", help="path of the .gguf model (required unless --diagnostics)")
    if server:
        parser.add_argument(
            "-p", "--prompt", type=_non_blank, help="accepted for compatibility; llama-server ignores it"
        )
    else:
        parser.add_argument("-p", "--prompt", type=_non_blank, help="prompt (required unless --diagnostics)")
    parser.add_argument(
        "-n",
        "--n-predict",
        type=_positive_int,
        default=4096 if server else 128,
        help="tokens to generate (default: %(default)s)",
    )
    parser.add_argument(
        "-t",
        "--threads",
        type=_threads,
        default=None,
        help="an integer, or 'auto' = all cores (default)",
    )
    parser.add_argument(
        "-c", "--ctx-size", type=_positive_int, default=2048, help="context size (default: %(default)s)"
    )
    parser.add_argument(
        "-temp",
        "--temperature",
        type=_temperature,
        default=0.8,
        help="sampling temperature, 0 = greedy (default: %(default)s)",
    )
    # 512 (llama.cpp's physical batch) for both: a prompt is read in batches of this many tokens, 13-17x
    # faster than -b 1 (the seed's inference default). llama-server aborts with -b 1 at load anyway.
    parser.add_argument(
        "-b",
        "--batch-size",
        type=_positive_int,
        default=512,
        help="prompt tokens processed per batch (default: %(default)s; 1 makes long prompts ~15x slower)",
    )
    parser.add_argument(
        "-ngl",
        "--gpu-layers",
        type=_non_negative_int,
        default=None,
        help="layers to offload to a GPU (default: not passed; our engine is CPU-only, and -ngl on a "
        "CPU-only build only prints warnings)",
    )
    if server:
        parser.add_argument(
            "--host", type=_non_blank, default="127.0.0.1", help="bind address (default: %(default)s)"
        )
        parser.add_argument("--port", type=_port, default=8080, help="port (default: %(default)s)")
        parser.add_argument(
            "-np",
            "--parallel",
            type=_positive_int,
            default=None,
            help="requests decoded at once (server slots); default: llama-server's (4 slots sharing -c)",
        )
        parser.add_argument(
            "--api-key",
            default=None,
            metavar="KEY",
            help=f"key clients must send; required to bind anything but loopback. Prefer ${API_KEY_ENV} "
            "(a command line is visible to other users in `ps`)",
        )
        parser.add_argument(
            "--cors-origin",
            action="append",
            default=None,
            metavar="ORIGIN",
            help="let web pages of ORIGIN (e.g. https://app.example:8443, or '*' for any) call the server "
            "from a browser; repeatable (default: only the server's own web UI)",
        )
        parser.add_argument(
            "--ready-timeout",
            type=_positive_float,
            default=300.0,
            metavar="SECONDS",
            help="how long to wait for the model to load (default: %(default)s)",
        )
    else:
        parser.add_argument(
            "-cnv",
            "--conversation",
            action="store_true",
            help="chat interactively (the prompt is the system prompt)",
        )
        parser.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="show the engine's log (loading, timings) on stderr; always shown with -cnv, and its "
            "last lines are part of any error",
        )
        parser.add_argument(
            "--timeout",
            type=_positive_float,
            default=None,
            metavar="SECONDS",
            help="stop the engine and exit 124 if it runs longer (default: no limit)",
        )
    parser.add_argument("--build-dir", default="build", help="engine build dir (default: %(default)s)")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default="INFO",
        metavar="LEVEL",
        help=f"one of {', '.join(_LOG_LEVELS)}, any case (default: %(default)s)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command, shell-quoted; run nothing")
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="print a JSON health report; exit 1 if the runtime is not usable",
    )
    parser.add_argument(
        "--extra-args",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="ARG",
        help="everything after this is passed to the llama.cpp binary unchanged (must come last)",
    )
    return parser


def build_inference_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `run_inference.py`."""
    return _base_parser(prog, "Generate text with a BitNet model (llama-completion).", server=False)


def build_server_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `run_inference_server.py`."""
    return _base_parser(
        prog, "Serve a BitNet model over HTTP (llama.cpp's llama-server, OpenAI-compatible).", server=True
    )


# ---------------------------------------------------------------------- mains


def inference_main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point of `run_inference.py`; returns the exit status."""
    parser = build_inference_parser(prog)
    return _run(parser, parser.parse_args(argv), server=False)


def server_main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point of `run_inference_server.py`; returns the exit status."""
    parser = build_server_parser(prog)
    return _run(parser, parser.parse_args(argv), server=True)


_COMMANDS: dict[str, tuple[Callable[..., int], str]] = {
    "infer": (inference_main, "generate text (run_inference.py)"),
    "serve": (server_main, "serve over HTTP (run_inference_server.py)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bitnet {infer,serve} ...`."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m bitnet {infer,serve} [options]\n" + "".join(
        f"  {name:6} {text}; `python -m bitnet {name} --help` lists its options\n"
        for name, (_, text) in _COMMANDS.items()
    )
    if args and args[0] in ("-h", "--help"):
        print(usage, end="")
        return 0
    if not args or args[0] not in _COMMANDS:
        problem = "a command is required" if not args else f"unknown command {args[0]!r}"
        print(f"{usage}python -m bitnet: error: {problem}", file=sys.stderr)
        return 2
    entry, _ = _COMMANDS[args[0]]
    return entry(args[1:], prog=f"python -m bitnet {args[0]}")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, *, server: bool) -> int:
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        runtime = BitNetRuntime(build_dir=args.build_dir, log_level=args.log_level)
        if args.diagnostics:
            return _print_diagnostics(runtime, args.model, SERVER_BINARY if server else INFERENCE_BINARY)
        if args.model is None:
            parser.error("the following arguments are required: -m/--model")
        if not server and args.prompt is None:
            parser.error("the following arguments are required: -p/--prompt")
        common = {
            "model": args.model,
            "prompt": args.prompt,
            "n_predict": args.n_predict,
            "ctx_size": args.ctx_size,
            "temperature": args.temperature,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "gpu_layers": args.gpu_layers,
            "dry_run": args.dry_run,
            "extra_args": args.extra_args,
        }
        if server:
            common["extra_args"] = _slot_args(args.parallel) + cors_args(args.cors_origin) + args.extra_args
            require_api_key(args.host, args.api_key, env=runtime.environment, extra_args=common["extra_args"])
            if not args.dry_run:
                return _serve(parser.prog, runtime, args, common)
            result = runtime.run_server(host=args.host, port=args.port, **common)
        else:
            with stop_signals(), _terminal_restored(args.conversation and not args.dry_run):
                result = runtime.run_inference(
                    conversation=args.conversation,
                    timeout=args.timeout,
                    engine_log=args.verbose or args.conversation,
                    **common,
                )
        if isinstance(result, list):
            print(shlex.join(result))
        return 0
    except RuntimeTimeoutError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (RuntimeConfigurationError, RuntimeLaunchError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StopRequested as stop:  # SIGTERM, SIGHUP (or SIGINT) under stop_signals: engine stopped
        what = "interrupted" if stop.signum == signal.SIGINT else f"stopped by {stop.name}"
        print(f"{parser.prog}: {what}; engine stopped", file=sys.stderr)
        return stop.exit_code


@contextlib.contextmanager
def _terminal_restored(active: bool) -> Iterator[None]:
    """Put the terminal's settings back after an interactive chat, however the engine ended.

    llama-completion's chat turns echo off and reads keys raw; when it is stopped by a signal (our
    Ctrl-C handling terminates it) it cannot undo that, which would leave the user's shell without echo.
    """
    fd = sys.stdin.fileno() if active and sys.stdin is not None and sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None and termios is not None else None
    try:
        yield
    finally:
        if fd is not None and saved is not None and termios is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _slot_args(parallel: int | None) -> list[str]:
    return [] if parallel is None else ["-np", str(parallel)]


def _serve(prog: str, runtime: BitNetRuntime, args: argparse.Namespace, common: dict[str, Any]) -> int:
    """Serve until Ctrl-C (exit 130), SIGTERM (143) or SIGHUP (129); the server is stopped either way."""
    settings = {key: value for key, value in common.items() if key != "dry_run"}
    signum = serve_forever(
        runtime=runtime,
        host=args.host,
        port=args.port,
        parallel=None,  # -np, if given, is in extra_args (so --dry-run shows it)
        api_key=args.api_key,
        ready_timeout=args.ready_timeout,
        **settings,
    )
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    print(f"{prog}: {what}; server stopped", file=sys.stderr)
    return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP, as shells report them


def _print_diagnostics(runtime: BitNetRuntime, model: str | None, binary: str) -> int:
    report = runtime.diagnostics(model=model)
    usable = report.is_usable(binary)
    print(json.dumps({**report.as_dict(), "usable": usable}, indent=2))
    return 0 if usable else 1
