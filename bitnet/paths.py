"""Where the repository's data lives, computed once: the checkout that holds this package.

The toolkit runs from a checkout (`pip install -e .`): kernels/, bench/ and models/ sit next to bitnet/.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent
