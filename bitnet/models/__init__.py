"""Stage 2, the models: a checkpoint or a synthetic model turned into a GGUF the engine runs.

- `catalog`, `hub`: which models exist and downloading them;
- `convert/`: checkpoint → GGUF, one module per architecture, registered;
- `synthetic`: random ternary models of real shapes (offline);
- `formats/`: the GGUF files themselves (writer, reader, checks, ternary packing, the I2_S layout);
- `installed`: the models dir, lock files, listing and removing installed models.

Uses the runtime (stage 3) only through `bitnet.runtime`'s public names (see bitnet/ARCHITECTURE.md).
"""
