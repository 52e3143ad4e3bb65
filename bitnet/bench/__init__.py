"""Stage 4, measurement: every benchmark of the toolkit, stored as tidy rows.

- `sweep`: llama-bench over models × threads × configs (`invoke bench`), `spec` its TOML format,
  `llama_bench` the tool's argv and output;
- `serving`: llama-server under concurrent clients (`invoke serve-bench`);
- `perplexity`: llama-perplexity on a text (`invoke ppl`); `numerics`: our engine against transformers;
- `tune`: kernel parameters for this CPU (`invoke tune`);
- `results`, `plots`, `roofline`: reading rows back, tables, plots, bandwidth bounds.
"""
