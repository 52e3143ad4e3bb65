"""Serve a BitNet model over HTTP: `python run_inference_server.py -m model.gguf` (see --help)."""

import sys

from bitnet.cli import server_main as main

if __name__ == "__main__":
    sys.exit(main())
