from __future__ import annotations

from pathlib import Path

from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.settings import Settings


def bundle_path(settings: Settings, code: str) -> Path:
    return bundle_dir(settings, code)
