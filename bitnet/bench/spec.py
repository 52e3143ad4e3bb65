"""Benchmark specs: which models, thread counts and engine configurations a sweep runs, and how often.

A spec is data: a TOML file in ``bench/specs/`` (``invoke bench --spec quick`` reads
``bench/specs/quick.toml``) or the flags of ``invoke bench``. Everything is validated here, before
anything runs; resolving "all" cores and checking ISA variants against the engine happens in
`bitnet.bench.sweep`, which knows the host.

File format (every key optional except ``models``; the top level holds defaults for the sweeps)::

    description = "what this matrix answers"
    reps = 5                      # runs of each (model, threads, config); configs alternate A B A B
    n_prompt = 512                # llama-bench -p (prefill test ppN); 0 skips it
    n_gen = 128                   # llama-bench -n (decode test tgN); 0 skips it
    threads = ["all"]             # ints, "all" (= the host's cores) or "1..all" (1, 2, 4, ..., cores)
    compare = ["stock"]           # configs besides "ours": ours|stock, an ISA variant, or "stock+avx2"
    isa = ["auto"]                # CPU variants to run every config on: auto (ggml picks), names, all
    busy = ["idle"]               # host conditions: idle, pinned (a busy loop on the last core), free
    baseline = "stock"            # config the ratio column divides by (default: stock if present)
    roofline = true               # probe read bandwidth, report decode as a fraction of its bound
    timeout = 1800                # seconds one llama-bench run may take
    engine_args = "-lm none"      # extra llama-bench arguments for our configs (ours, stock, variants)

    [[models]]                    # synthetic models: every combination of the listed values
    size = ["125M", "2B"]         # bitnet.models.synthetic sizes
    outtype = ["tq2_0", "tq1_0"]  # ternary weight format
    head_type = "f16"             # tied embedding / output head format
    [[models]]
    file = "models/my.gguf"       # or a GGUF file (relative to the current directory)

    [[sweep]]                     # optional: several sweeps in one run, each overriding the
    name = "threads"              # defaults above (models, threads, n_prompt, n_gen, compare, isa)
    threads = "1..all"

    [[peer]]                      # optional: another engine's llama-bench, run in the same rounds
    name = "ik"                   # its config label in rows, tables and plots
    binary = "/opt/ik_llama.cpp/build/bin/llama-bench"
    model = "/models/bitnet-2B-iq2_bn.gguf"   # its own file (default: each sweep model's file)
    args = ["-fa", "1", "-rtr", "1"]         # extra llama-bench arguments for it

Peers are given by the user and never downloaded or built here (``invoke bench --compare-bin
ik=PATH --compare-model ik=FILE --compare-args "ik=-fa 1 -rtr 1"``). Every config also gets a load
probe per repetition (``load = false`` turns it off): see `bitnet.bench.sweep`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from bitnet.engine.contract import ACT_QUANT_ENV, AMX_ENV, CPU_VARIANT_ENV, KERNELS_ENV
from bitnet.errors import BenchSpecError
from bitnet.paths import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_MODEL",
    "TINY_MODEL",
    "DUMMY_SIZES",
    "KERNELS",
    "SPEC_DIR",
    "VARIANT_ENV",
    "BenchSpec",
    "Config",
    "ModelRequest",
    "Peer",
    "Sweep",
    "expand_configs",
    "expand_threads",
    "load_spec",
    "parse_spec",
    "spec_from_flags",
]

SPEC_DIR = REPO_ROOT / "bench" / "specs"
VARIANT_ENV = CPU_VARIANT_ENV  # our engine patch 0002: force libggml-cpu-<name>
# ours: BITNET_KERNELS=1 (the file's activation mode); stock: =0; perblock: our kernels forced to ggml's
# per-256-block activations (BITNET_ACT_QUANT=per_block), to price the per-token definition (issue 12);
# noamx: our kernels with the GEMM kept off AMX-INT8 tiles (BITNET_AMX=0), to price them where a CPU has them
KERNELS = ("ours", "stock", "perblock", "noamx")
# bitnet.models.synthetic's sizes (kept here so a spec is checked without importing the generator).
DUMMY_SIZES = ("tiny", "125M", "350M", "700M", "1.3B", "2B", "3B", "7B", "13B")
DEFAULT_N_PROMPT, DEFAULT_N_GEN, DEFAULT_REPS = 512, 128, 5
DEFAULT_TIMEOUT = 1800.0

_TOP_KEYS = {"description", "reps", "baseline", "roofline", "timeout", "sweep", "peer", "load", "engine_args"}
_PEER_KEYS = {"name", "binary", "model", "args"}
_SWEEP_KEYS = {"models", "threads", "n_prompt", "n_gen", "compare", "isa", "busy"}
BUSY_CONDITIONS = ("idle", "pinned", "bursty", "free")  # bitnet.bench.busy's conditions
_MODEL_KEYS = {"size", "outtype", "head_type", "file"}
_NAME_RE = re.compile(r"^[a-z0-9_]+$")
_RANGE_RE = re.compile(r"^\s*(\d+|all)\s*\.\.\s*(\d+|all)\s*$")


# ---------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelRequest:
    """One model of a sweep: a synthetic `bitnet.models.synthetic` size in a format, or a GGUF file."""

    size: str | None = None
    outtype: str = "tq2_0"
    head_type: str = "f16"
    file: Path | None = None

    @property
    def label(self) -> str:
        """Short name for tables and plots: the file's stem, or "2B" plus its formats if not default."""
        if self.file is not None:
            return self.file.stem
        if (self.outtype, self.head_type) == ("tq2_0", "f16"):
            return str(self.size)
        return f"{self.size}-{self.outtype}-{self.head_type}"

    def path(self, models_dir: Path) -> Path:
        """Where the model is: its file, or where `invoke setup` / `invoke dummy` put the synthetic model
        (`bitnet.models.synthetic.synthetic_model_path`: ``<models_dir>/dummy-2B/ggml-model-tq2_0.gguf``)."""
        if self.file is not None:
            return self.file
        from bitnet.models.synthetic import synthetic_model_path

        return synthetic_model_path(str(self.size), self.outtype, self.head_type, models_dir)


# What `invoke bench` measures when told nothing and no converted model is installed: the BitNet b1.58
# 2B4T shape (made once into models/dummy-2B/, 1.2 GB). The tiny test model's numbers mean nothing to a
# user (it fits in the cache), so it is measured only when asked for (`--size tiny`).
DEFAULT_MODEL = ModelRequest(size="2B")
TINY_MODEL = ModelRequest(size="tiny")  # the offline test model: a few MB, real tokenizer


# ---------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Config:
    """An engine configuration: our kernels or stock ggml's, and a forced CPU variant (None = auto);
    or a peer engine (`peer` is its name, kernels "peer")."""

    kernels: str = "ours"
    variant: str | None = None
    peer: str | None = None

    @property
    def label(self) -> str:
        """ "ours", "stock", "ours+avx2", ... (parseable back by `parse_config`), or the peer's name."""
        if self.peer is not None:
            return self.peer
        return self.kernels if self.variant is None else f"{self.kernels}+{self.variant}"

    def env(self) -> dict[str, str | None]:
        """Environment overrides for the engine; None means "remove the variable" (auto variant, the
        file's own activation mode). A peer gets none of our switches."""
        if self.peer is not None:
            return {KERNELS_ENV: None, ACT_QUANT_ENV: None, AMX_ENV: None, VARIANT_ENV: None}
        return {
            KERNELS_ENV: "0" if self.kernels == "stock" else "1",
            ACT_QUANT_ENV: "per_block" if self.kernels == "perblock" else None,
            AMX_ENV: "0" if self.kernels == "noamx" else None,
            VARIANT_ENV: self.variant,
        }


@dataclass(frozen=True)
class Peer:
    """Another engine's llama-bench-compatible binary, measured side by side with ours.

    `model` is its own model file (None: the sweep's model, e.g. stock llama.cpp reading our GGUF);
    `args` are extra llama-bench arguments (e.g. ``-fa 1 -rtr 1`` for ik_llama.cpp)."""

    name: str
    binary: Path
    model: Path | None = None
    args: tuple[str, ...] = ()

    @property
    def config(self) -> Config:
        return Config(kernels="peer", peer=self.name)

    def check(self) -> None:
        """Raise `BenchSpecError` unless the binary is an executable file and the model a file."""
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise BenchSpecError(
                f"peer {self.name!r}: {self.binary} is not an executable file. Give the path of that "
                "engine's llama-bench (built outside this project): --compare-bin NAME=/path/llama-bench."
            )
        if self.model is not None and not self.model.is_file():
            raise BenchSpecError(
                f"peer {self.name!r}: model file {self.model} does not exist. Give that engine's own GGUF "
                "with --compare-model NAME=FILE (or leave it out to use the benchmarked model)."
            )


def peers_from_flags(
    bins: Sequence[str] | None, models: Sequence[str] | None = None, args: Sequence[str] | None = None
) -> tuple[Peer, ...]:
    """``--compare-bin NAME=PATH`` (repeatable) with optional ``--compare-model NAME=FILE`` and
    ``--compare-args "NAME=ARGS"`` as peers, in the order given."""

    def pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in items or ():
            name, sep, value = str(item).partition("=")
            name = name.strip().lower()
            if not sep or not name or not value.strip():
                raise BenchSpecError(f"{flag} takes NAME=VALUE, e.g. {flag} ik=/path. Got {item!r}.")
            if name in out:
                raise BenchSpecError(f"{flag} names {name!r} twice.")
            out[name] = value.strip()
        return out

    binaries = pairs(bins, "--compare-bin")
    model_files = pairs(models, "--compare-model")
    extra = pairs(args, "--compare-args")
    for flag, named in (("--compare-model", model_files), ("--compare-args", extra)):
        stray = sorted(set(named) - set(binaries))
        if stray:
            raise BenchSpecError(f"{flag} names {', '.join(stray)}, which no --compare-bin NAME=PATH gives.")
    return _peers_field(
        [
            {
                "name": n,
                "binary": b,
                **({"model": model_files[n]} if n in model_files else {}),
                "args": shlex.split(extra.get(n, "")),
            }
            for n, b in binaries.items()
        ]  # fmt: skip
    )


def _peers_field(value: Any) -> tuple[Peer, ...]:
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not all(isinstance(v, dict) for v in items):
        raise BenchSpecError(
            'peer must be a list of tables ([[peer]] name = "ik", binary = "/path/llama-bench").'
        )
    peers: list[Peer] = []
    for item in items:
        unknown = set(item) - _PEER_KEYS
        if unknown:
            raise BenchSpecError(_unknown_keys(unknown, _PEER_KEYS, "peer entry"))
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in (*KERNELS, "auto", "all", "peer"):
            raise BenchSpecError(
                f"peer name {name!r} must be lower-case letters, digits or _ and not one of our configs "
                f"({', '.join(KERNELS)}, auto), e.g. ik or bitnet_cpp."
            )
        if any(p.name == name for p in peers):
            raise BenchSpecError(f"peer {name!r} is given twice.")
        binary, model = item.get("binary"), item.get("model")
        if not isinstance(binary, str) or not binary:
            raise BenchSpecError(f'peer {name!r} needs binary = "/path/to/llama-bench".')
        if model is not None and (not isinstance(model, str) or not model):
            raise BenchSpecError(f"peer {name!r}: model must be a path string. Got {model!r}.")
        args = _args_field(item.get("args", []), f"peer {name!r}: args")
        peers.append(
            Peer(name, Path(binary).expanduser(), Path(model).expanduser() if model else None, tuple(args))
        )
    return tuple(peers)


def _args_field(value: Any, what: str) -> tuple[str, ...]:
    """Extra llama-bench arguments: a shell-quoted string or a list of strings, none that we set."""
    args = shlex.split(value) if isinstance(value, str) else value
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
        raise BenchSpecError(f"{what} must be a string or a list of strings. Got {value!r}.")
    reserved = sorted({a for a in args if a in ("-m", "-p", "-n", "-t", "-r", "-o")})
    if reserved:
        raise BenchSpecError(
            f"{what} must not set {', '.join(reserved)}: the benchmark sets the model, "
            "tests, threads, repetitions and output itself."
        )
    return tuple(args)


def parse_config(text: str) -> tuple[str | None, str | None, bool]:
    """Parse "stock", "avx2", "stock+avx2", "ours+auto" into (kernels or None, variant, variant given).

    Raises:
        BenchSpecError: an empty item, two kernel names or two variants.
    """
    tokens = [t.strip().lower() for t in str(text).split("+")]
    kernels: str | None = None
    variant: str | None = None
    variant_given = False
    for token in tokens:
        if token in KERNELS:
            if kernels is not None:
                raise BenchSpecError(f"compare item {text!r} names two kernel choices; use ours OR stock.")
            kernels = token
        elif _NAME_RE.match(token):
            if variant_given:
                raise BenchSpecError(f"compare item {text!r} names two CPU variants; give one.")
            variant, variant_given = (None if token == "auto" else token), True
        else:
            raise BenchSpecError(
                f"compare item {text!r} is not understood: use ours, stock, a CPU variant name such as "
                "avx2, or a combination like stock+avx2."
            )
    return kernels, variant, variant_given


def expand_configs(compare: Sequence[str], isa: Sequence[str | None] = ()) -> list[Config]:
    """The configs a sweep runs: "ours" plus each `compare` item, each on every variant in `isa`.

    A compare item that names its own variant ("stock+avx2") runs only on that one. `isa` holds
    variant names or None/"auto" (ggml's automatic choice); "all" must have been resolved by the caller.
    Duplicates are dropped, first occurrence wins, so the order is stable.
    """
    variants = [None if v in (None, "auto") else v for v in isa] or [None]
    configs: list[Config] = []
    for item in ["ours", *compare]:
        kernels, variant, given = parse_config(item)
        for v in [variant] if given else variants:
            config = Config(kernels=kernels or "ours", variant=v)
            if config not in configs:
                configs.append(config)
    return configs


# ---------------------------------------------------------------------------------------- threads


def expand_threads(requested: Iterable[int | str], cores: int) -> tuple[list[int], list[str]]:
    """Resolve thread requests against the host: ints, "all" (= `cores`), "a..b" ranges.

    A range walks powers of two from a up to b and adds b (``1..all`` on 12 cores: 1 2 4 8 12).
    Anything above `cores` is clamped to `cores`, with one warning per clamped value; the result is
    sorted and without duplicates.

    Returns:
        (thread counts, warnings).
    """
    values: list[int] = []
    for item in requested:
        values.extend(_thread_values(item, cores))
    warnings = [
        f"threads={n} is more than the {cores} cores of this machine; running with {cores} instead"
        for n in sorted(set(values))
        if n > cores
    ]
    return sorted({min(n, cores) for n in values}), warnings


def _thread_values(item: int | str, cores: int) -> list[int]:
    if isinstance(item, bool):
        raise BenchSpecError(
            f"threads must be positive integers, 'all' or a range like '1..all'. Got {item}."
        )
    if isinstance(item, int):
        if item <= 0:
            raise BenchSpecError(f"threads must be positive integers. Got {item}.")
        return [item]
    text = str(item).strip().lower()
    if text == "all":
        return [cores]
    if text.isdigit():
        return _thread_values(int(text), cores)
    match = _RANGE_RE.match(text)
    if not match:
        raise BenchSpecError(
            f"threads must be positive integers, 'all' or a range like '1..all' or '1..8'. Got {item!r}."
        )
    lo, hi = (cores if g == "all" else int(g) for g in match.groups())
    if lo <= 0 or hi < lo:
        raise BenchSpecError(f"threads range {item!r} must go from a positive number up. Got {lo}..{hi}.")
    out, n = [], lo
    while n < hi:
        out.append(n)
        n = 1 << n.bit_length() if n & (n - 1) else n * 2  # next power of two
    return [*out, hi]


# ---------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Sweep:
    """One product of models × threads × configs, with the test sizes."""

    name: str
    models: tuple[ModelRequest, ...]
    threads: tuple[int | str, ...] = ("all",)
    n_prompt: int = DEFAULT_N_PROMPT
    n_gen: int = DEFAULT_N_GEN
    compare: tuple[str, ...] = ()
    isa: tuple[str, ...] = ("auto",)
    busy: tuple[str, ...] = ("idle",)


@dataclass(frozen=True)
class BenchSpec:
    """A named benchmark matrix: its sweeps and how each measurement is repeated and compared."""

    name: str
    sweeps: tuple[Sweep, ...]
    description: str = ""
    reps: int = DEFAULT_REPS
    baseline: str | None = None
    roofline: bool = True
    timeout: float = DEFAULT_TIMEOUT
    peers: tuple[Peer, ...] = ()
    load: bool = True  # a load probe per config and repetition (load_s column)
    engine_args: tuple[str, ...] = ()  # appended to the llama-bench argv of our configs (not peers')
    source: Path | None = field(default=None, compare=False)

    def with_overrides(
        self,
        *,
        models: Sequence[ModelRequest] | None = None,
        threads: Sequence[int | str] | None = None,
        n_prompt: int | None = None,
        n_gen: int | None = None,
        compare: Sequence[str] | None = None,
        isa: Sequence[str] | None = None,
        reps: int | None = None,
        baseline: str | None = None,
        peers: Sequence[Peer] | None = None,
        busy: Sequence[str] | None = None,
        engine_args: str | Sequence[str] | None = None,
    ) -> BenchSpec:
        """A copy where every given (non-None) value replaces the spec's, in every sweep; `peers` are
        added to the spec's (a peer of the same name is replaced)."""
        sweep_changes: dict[str, Any] = {}
        if models is not None:
            sweep_changes["models"] = tuple(models)
        if threads is not None:
            sweep_changes["threads"] = _threads_field(list(threads), "threads")
        if n_prompt is not None:
            sweep_changes["n_prompt"] = _count(n_prompt, "n_prompt")
        if n_gen is not None:
            sweep_changes["n_gen"] = _count(n_gen, "n_gen")
        if compare is not None:
            sweep_changes["compare"] = _compare_field(list(compare))
        if isa is not None:
            sweep_changes["isa"] = _isa_field(list(isa))
        if busy is not None:
            sweep_changes["busy"] = _busy_field(list(busy))
        sweeps = tuple(dataclasses.replace(s, **sweep_changes) for s in self.sweeps)
        for sweep in sweeps:
            _check_tests(sweep)
        top: dict[str, Any] = {"sweeps": sweeps}
        if reps is not None:
            top["reps"] = _positive(reps, "reps")
        if peers:
            given = {p.name for p in peers}
            top["peers"] = (*(p for p in self.peers if p.name not in given), *peers)
        if baseline is not None:
            names = [p.name for p in top.get("peers", self.peers)]
            top["baseline"] = _baseline_field(baseline, names)
        if engine_args is not None:
            top["engine_args"] = _args_field(
                engine_args if isinstance(engine_args, str) else list(engine_args), "engine_args"
            )
        return dataclasses.replace(self, **top)


def load_spec(name_or_path: str | Path) -> BenchSpec:
    """Read a spec: a path to a TOML file, or the name of one in ``bench/specs/`` ("quick", "full").

    Raises:
        BenchSpecError: the file is missing, not TOML, or holds an invalid value (message says which).
    """
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and not path.exists():
        path = SPEC_DIR / f"{text}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.toml"))) or "none"
        raise BenchSpecError(
            f"bench spec {text!r} not found (looked for {path}). Pass a TOML file or one of: {known}."
        )
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BenchSpecError(f"cannot read bench spec {path}: {exc}. Fix the file (it is TOML).") from exc
    if data.get("kind") == "serve":
        raise BenchSpecError(
            f'{path} is a serving spec (kind = "serve"): run it with invoke serve-bench --spec.'
        )
    try:
        return parse_spec(data, name=path.stem, source=path)
    except BenchSpecError as exc:
        raise BenchSpecError(f"{path}: {exc}") from None


def parse_spec(data: Mapping[str, Any], *, name: str, source: Path | None = None) -> BenchSpec:
    """Build a `BenchSpec` from the parsed TOML of a spec file (see the module docstring)."""
    unknown = set(data) - _TOP_KEYS - _SWEEP_KEYS
    if unknown:
        raise BenchSpecError(_unknown_keys(unknown, _TOP_KEYS | _SWEEP_KEYS, "top level"))
    defaults = {k: data[k] for k in _SWEEP_KEYS if k in data}
    raw_sweeps = data.get("sweep", [{}])
    if not isinstance(raw_sweeps, list) or not raw_sweeps or not all(isinstance(s, dict) for s in raw_sweeps):
        raise BenchSpecError("'sweep' must be a list of tables ([[sweep]] entries).")
    sweeps = []
    for i, raw in enumerate(raw_sweeps):
        sweep_name = str(raw.get("name", name if len(raw_sweeps) == 1 else f"sweep{i + 1}"))
        unknown = set(raw) - _SWEEP_KEYS - {"name"}
        if unknown:
            raise BenchSpecError(_unknown_keys(unknown, _SWEEP_KEYS | {"name"}, f"sweep {sweep_name!r}"))
        merged = {**defaults, **{k: v for k, v in raw.items() if k != "name"}}
        sweeps.append(_parse_sweep(sweep_name, merged))
    timeout = data.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise BenchSpecError(f"timeout must be a number of seconds > 0. Got {timeout!r}.")
    roofline = data.get("roofline", True)
    if not isinstance(roofline, bool):
        raise BenchSpecError(f"roofline must be true or false. Got {roofline!r}.")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise BenchSpecError(f"description must be a string. Got {description!r}.")
    load = data.get("load", True)
    if not isinstance(load, bool):
        raise BenchSpecError(f"load must be true or false. Got {load!r}.")
    peers = _peers_field(data.get("peer", []))
    baseline = data.get("baseline")
    return BenchSpec(
        name=name,
        sweeps=tuple(sweeps),
        description=description,
        reps=_positive(data.get("reps", DEFAULT_REPS), "reps"),
        baseline=None if baseline is None else _baseline_field(baseline, [p.name for p in peers]),
        roofline=roofline,
        timeout=float(timeout),
        peers=peers,
        load=load,
        engine_args=_args_field(data.get("engine_args", []), "engine_args"),
        source=source,
    )


# What `invoke bench` compares ours with when no --compare is given: the number a user asks first is the
# ratio against the engine they would run otherwise (stock ggml on the same file).
DEFAULT_COMPARE = ("stock",)


def spec_from_flags(
    *,
    model: str | Path | None = None,
    size: str | None = None,
    outtype: str = "tq2_0",
    head_type: str = "f16",
    threads: Sequence[int | str] | None = None,
    n_prompt: int | None = None,
    n_gen: int | None = None,
    reps: int | None = None,
    compare: Sequence[str] | None = None,
    isa: Sequence[str] | None = None,
    baseline: str | None = None,
) -> BenchSpec:
    """The one-sweep spec ``invoke bench`` runs without ``--spec``: defaults are the 2B4T-shaped synthetic
    model, pp512 + tg128, all cores, 5 repetitions, ours and stock ggml alternated (`DEFAULT_COMPARE`;
    ``compare=["ours"]`` runs ours alone), automatic CPU variant."""
    models = models_from_flags(model=model, size=size, outtype=outtype, head_type=head_type)
    base = BenchSpec(name="adhoc", sweeps=(Sweep(name="adhoc", models=(models or (DEFAULT_MODEL,))),))
    return base.with_overrides(
        threads=threads,
        n_prompt=n_prompt,
        n_gen=n_gen,
        reps=reps,
        compare=DEFAULT_COMPARE if compare is None else compare,
        isa=isa,
        baseline=baseline,
    )


def models_from_flags(
    *, model: str | Path | None, size: str | None, outtype: str = "tq2_0", head_type: str = "f16"
) -> tuple[ModelRequest, ...] | None:
    """``--model F`` or ``--size S`` as model requests; None when neither was given."""
    if model and size:
        raise BenchSpecError("pass either --model FILE or --size SIZE, not both.")
    if model:
        return (ModelRequest(file=Path(model)),)
    if size:
        return _parse_models([{"size": size, "outtype": outtype, "head_type": head_type}])
    return None


# ---------------------------------------------------------------------------------------- validation


def _parse_sweep(name: str, raw: Mapping[str, Any]) -> Sweep:
    if "models" not in raw:
        raise BenchSpecError(f'sweep {name!r} has no models: add a [[models]] table (size = "tiny").')
    sweep = Sweep(
        name=name,
        models=_parse_models(raw["models"]),
        threads=_threads_field(raw.get("threads", ["all"]), "threads"),
        n_prompt=_count(raw.get("n_prompt", DEFAULT_N_PROMPT), "n_prompt"),
        n_gen=_count(raw.get("n_gen", DEFAULT_N_GEN), "n_gen"),
        compare=_compare_field(raw.get("compare", [])),
        isa=_isa_field(raw.get("isa", ["auto"])),
        busy=_busy_field(raw.get("busy", ["idle"])),
    )
    _check_tests(sweep)
    return sweep


def _check_tests(sweep: Sweep) -> None:
    if sweep.n_prompt == 0 and sweep.n_gen == 0:
        raise BenchSpecError(f"sweep {sweep.name!r}: n_prompt and n_gen are both 0, so nothing would run.")


def _parse_models(raw: Any) -> tuple[ModelRequest, ...]:
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise BenchSpecError(
            'models must be a non-empty list of tables ([[models]] size = "2B" or file = ...).'
        )
    models: list[ModelRequest] = []
    for item in items:
        if not isinstance(item, dict):
            raise BenchSpecError(f"each models entry must be a table. Got {item!r}.")
        unknown = set(item) - _MODEL_KEYS
        if unknown:
            raise BenchSpecError(_unknown_keys(unknown, _MODEL_KEYS, "models entry"))
        if ("file" in item) == ("size" in item):
            raise BenchSpecError(f"a models entry needs exactly one of size or file. Got {item!r}.")
        if "file" in item:
            if set(item) != {"file"} or not isinstance(item["file"], str) or not item["file"]:
                raise BenchSpecError(f'a file models entry takes only file = "path.gguf". Got {item!r}.')
            models.append(ModelRequest(file=Path(item["file"])))
            continue
        sizes = _str_list(item["size"], "size")
        for size in sizes:
            if size not in DUMMY_SIZES:
                raise BenchSpecError(f"unknown model size {size!r}: choose from {', '.join(DUMMY_SIZES)}.")
        outtypes = [_qtype_name(v, "outtype") for v in _str_list(item.get("outtype", "tq2_0"), "outtype")]
        heads = [_qtype_name(v, "head_type") for v in _str_list(item.get("head_type", "f16"), "head_type")]
        for size, out, head in itertools.product(sizes, outtypes, heads):
            request = ModelRequest(size=size, outtype=out, head_type=head)
            if request not in models:
                models.append(request)
    return tuple(models)


def _qtype_name(value: str, key: str) -> str:
    name = value.strip().lower()
    if name.upper() not in GGMLQuantizationType.__members__:
        raise BenchSpecError(f"{key} {value!r} is not a GGML type name (e.g. tq2_0, tq1_0, f16, q8_0, q4_0).")
    return name


def _str_list(value: Any, key: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise BenchSpecError(f"{key} must be a string or a list of strings. Got {value!r}.")
    return [v.strip() for v in items]


def _threads_field(value: Any, key: str) -> tuple[int | str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise BenchSpecError(f"{key} must not be empty: give ints, 'all' or '1..all'.")
    expand_threads(items, cores=1)  # validates the syntax; the host's cores are applied later
    return tuple(items)


def _compare_field(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise BenchSpecError(f'compare must be a list of config names such as ["stock"]. Got {value!r}.')
    items = [v.strip() for v in items if v.strip()]
    for item in items:
        parse_config(item)
    return tuple(items)


def _isa_field(value: Any) -> tuple[str, ...]:
    items = _str_list(value, "isa") if value else ["auto"]
    out = []
    for item in items:
        name = item.lower()
        if not _NAME_RE.match(name):
            raise BenchSpecError(f"isa {item!r} is not a CPU variant name (e.g. auto, all, avx2, avx512).")
        out.append(name)
    return tuple(out)


def _busy_field(value: Any) -> tuple[str, ...]:
    items = [v.lower() for v in _str_list(value, "busy")] if value else ["idle"]
    for item in items:
        if item not in BUSY_CONDITIONS:
            raise BenchSpecError(
                f"busy {item!r} is not a host condition: choose from {', '.join(BUSY_CONDITIONS)} "
                "(pinned: a busy loop on the last core; bursty: the same, busy 8 ms of every 16; "
                "free: the busy loop, not pinned)."
            )
    return tuple(dict.fromkeys(items))


def _baseline_field(value: Any, peers: Sequence[str] = ()) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BenchSpecError(f'baseline must be a config name such as "stock". Got {value!r}.')
    if value.strip().lower() in peers:
        return value.strip().lower()
    kernels, variant, _ = parse_config(value)
    return Config(kernels=kernels or "ours", variant=variant).label


def _positive(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BenchSpecError(f"{key} must be a positive integer. Got {value!r}.")
    return value


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BenchSpecError(f"{key} must be an integer >= 0 (0 skips that test). Got {value!r}.")
    return value


def _unknown_keys(unknown: set[str], allowed: set[str], where: str) -> str:
    return (
        f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(sorted(unknown))} at the {where}; "
        f"allowed: {', '.join(sorted(allowed))}."
    )
