"""Stage 1, the engine: the pinned llama.cpp built with our patches and ternary kernels, per ISA.

- `build`: fetch, patch and compile the engine (`invoke build`), its pin in kernels/engine.toml;
- `cpu`: what this host's CPU can run;
- `contract`: every name the engine and the toolkit share (binaries, env vars, GGUF keys, report lines).

Imports nothing above itself (see bitnet/ARCHITECTURE.md).
"""
