"""Throwaway SoftHSM2 tokens, for tests, ``bench keys`` and trying the token path: a token
directory and config of their own, so nothing touches a token outside them (PKCS#11 modules
read their config once per process, at C_Initialize, so ``SOFTHSM2_CONF`` is set for this
process before the module is first loaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pkcs11

from tongban.signing.pkcs11 import TokenConfig

__all__ = ["SOFTHSM_MODULE", "SoftHsm"]

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


class SoftHsm:
    """A token directory under ``root`` with one initialised token per ``new_token``."""

    def __init__(self, root: Path) -> None:
        util = shutil.which("softhsm2-util")
        if util is None or not SOFTHSM_MODULE.is_file():
            raise RuntimeError(
                "SoftHSM2 is not installed; run scripts/system-packages (apt-get install softhsm2)."
            )
        self._util = util
        self.root = root
        (root / "tokens").mkdir(parents=True, exist_ok=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(
            f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
            "log.level = ERROR\nslots.removable = false\n"
        )
        os.environ["SOFTHSM2_CONF"] = str(self.conf)

    def new_token(self, pin: str = "123456") -> TokenConfig:
        """Initialise a token with a unique label and return how to reach it."""
        label = "t-" + uuid.uuid4().hex[:12]
        subprocess.run(  # noqa: S603 - our own arguments, no shell
            [self._util, "--init-token", "--free", "--label", label,
             "--pin", pin, "--so-pin", "87654321"],
            check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )  # fmt: skip
        # SoftHSM2 reads its token directory at C_Initialize: if this process has loaded
        # the module already, initialise it again so the new token is seen (sessions
        # still open from earlier tests would end; each test closes its own).
        lib = pkcs11.lib(str(SOFTHSM_MODULE))
        lib.reinitialize()
        return TokenConfig(SOFTHSM_MODULE, label, pin)
