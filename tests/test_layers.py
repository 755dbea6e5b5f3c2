"""The layering contracts of pyproject.toml ([tool.tongban.layers]) hold for the source,
and the check finds a new violation however it is written."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts/import_graph.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_source_keeps_the_layering_contracts() -> None:
    violations = _import_graph().check()
    assert violations == [], "\n".join(map(str, violations))


def test_a_new_violation_is_found_however_it_is_imported(tmp_path: Path) -> None:
    graph = _import_graph()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    files = {
        # a domain module reaching into the gRPC layer, absolute and relative
        "exchange/tongban/exchange/sharing/a.py": (
            "from tongban.exchange.server.caller import current_caller\nfrom ..web import app\n"
        ),
        # signing importing the exchange, deferred inside a function
        "signing/tongban/signing/b.py": "def f():\n    import tongban.exchange.node\n",
        # an adapter importing the node; the node importing the command line
        "adapters/tongban/adapters/c.py": "from tongban.exchange import settings\nimport grpc\n",
        "exchange/tongban/exchange/d.py": "from tongban.cli import commands\n",
        # the command line may import the adapters; the node may not
        "cli/tongban/cli/adapter_cmds.py": "import tongban.adapters.runner\n",
        "exchange/tongban/exchange/e.py": "import tongban.adapters.runner\n",
        # another package's private module; a private module used inside its package
        "signing/tongban/signing/_secret.py": "X = 1\n",
        "licence/tongban/licence/h.py": "from tongban.signing._secret import X\n",
        "signing/tongban/signing/i.py": "from ._secret import X\n",
        # a circle, one of whose imports is deferred; another only for type checking
        "licence/tongban/licence/j.py": "from tongban.licence import k\n",
        "licence/tongban/licence/k.py": "def f():\n    from tongban.licence.j import x\n",
        "licence/tongban/licence/m.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from tongban.licence.n import y\n"
        ),
        "licence/tongban/licence/n.py": "from tongban.licence.m import z\n",
        # allowed: licence on signing, adapters on the clock
        "licence/tongban/licence/f.py": "from tongban.signing import keys\n",
        "adapters/tongban/adapters/g.py": "from tongban.signing.clock import SystemClock\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    found = {(v.importer, v.imported) for v in graph.check(tmp_path)}
    assert found == {
        ("tongban.exchange.sharing.a", "tongban.exchange.server.caller.current_caller"),
        ("tongban.exchange.sharing.a", "tongban.exchange.web.app"),
        ("tongban.signing.b", "tongban.exchange.node"),
        ("tongban.adapters.c", "tongban.exchange.settings"),
        ("tongban.adapters.c", "grpc"),
        ("tongban.exchange.d", "tongban.cli.commands"),
        ("tongban.exchange.e", "tongban.adapters.runner"),
        ("tongban.licence.h", "tongban.signing._secret.X"),
        ("tongban.licence.j", "tongban.licence.k"),  # the circle j -> k -> j
    }


def test_only_the_recorder_makes_access_log_entries() -> None:
    # Every decision becomes entries through audit/recorder.py (AccessRecorder), which
    # names the node and hashes the subject; no module builds an AccessEntry by hand.
    import ast

    graph = _import_graph()
    makers = set()
    for name, path in graph.modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if called == "AccessEntry":
                    makers.add(name)
    assert makers <= {"tongban.exchange.audit.recorder", "tongban.exchange.audit.leaf"}, makers
    assert "tongban.exchange.audit.recorder" in makers
