"""The ``tongban`` parser imports only the command module the command line names
(``_COMMAND_MODULES``): the map must name every command each module adds, or that
command would be unknown when named alone."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tongban.cli import _COMMAND_MODULES, _OWN_COMMANDS, _build_parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def test_the_map_names_every_command_of_every_module() -> None:
    everything = _commands(_build_parser())
    assert everything == _OWN_COMMANDS | set(_COMMAND_MODULES)


@pytest.mark.parametrize("command", sorted(_COMMAND_MODULES))
def test_a_command_named_alone_is_known_with_its_modules_others(command: str) -> None:
    module = _COMMAND_MODULES[command]
    siblings = {c for c, m in _COMMAND_MODULES.items() if m == module}
    assert _commands(_build_parser(command)) == _OWN_COMMANDS | siblings


def test_a_command_imports_only_its_own_module() -> None:
    """``tongban dept ...`` does not import the client, the adapters (openpyxl) or
    pyHanko; a mistyped command still lists every command."""
    probe = (
        "import sys; from tongban.cli import _build_parser; _build_parser('dept');"
        "import tongban.cli.commands;"
        "print(sorted(m for m in ('openpyxl', 'pyhanko', 'tongban.adapters',"
        " 'tongban.exchange.node', 'tongban.cli.sharing_cmds') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
    typo = subprocess.run(
        [sys.executable, "-c", "from tongban.cli import main; main(['quary'])"],
        capture_output=True,
        text=True,
    )
    assert typo.returncode == 2
    assert "invalid choice: 'quary'" in typo.stderr
    assert "'query'" in typo.stderr
