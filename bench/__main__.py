"""``python -m bench``: run the benchmark (see ``bench.foundation`` and ``bench.sharing``)."""

from __future__ import annotations

import sys

from bench.foundation import main

if __name__ == "__main__":
    sys.exit(main())
