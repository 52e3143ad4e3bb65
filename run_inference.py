"""Generate text with a BitNet model: `python run_inference.py -m model.gguf -p "Hello"` (see --help)."""

import sys

from bitnet.cli import inference_main as main

if __name__ == "__main__":
    sys.exit(main())
