"""``tongban item``: the service-item catalogue (事项目录), over gRPC with a department's
bundle. ``register`` reads an item file (YAML or JSON, e.g.
``docs/examples/food-business-permit.item.yaml``), checked here for its form; the node
checks what it means (time limits, sources, keys)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tongban.cli.common import department_client, department_options, emit, message_dict
from tongban.client import DatasetSource, ItemSpec, LicenceSource, Material
from tongban.exchange.errors import InvalidArgument
from tongban.v1 import items_pb2

__all__ = ["add_parsers", "load_item_file", "problems_of", "read_spec_file", "run_item"]

_MAX_FILE = 1024 * 1024  # an item file is a few KB


# -- the item file of `item register` (validated at the edge) -----------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Licence(_Strict):
    type: str
    disclose: list[str] = []


class _KeyFrom(_Strict):
    material: str
    field: str


class _Dataset(_Strict):
    code: str
    fields: list[str]
    key_from: _KeyFrom | None = None


class _Deferral(_Strict):
    days: int = Field(ge=1, le=365)


class _Commitment(_Strict):
    check_days: int = Field(ge=1, le=365)


class _Material(_Strict):
    code: str
    name: str
    required: bool = True
    licence: _Licence | None = None
    dataset: _Dataset | None = None
    submitted: bool = False
    deferral: _Deferral | None = None
    """容缺: may be supplied within ``days`` working days after acceptance."""
    commitment: _Commitment | None = None
    """告知承诺: a commitment may replace it, checked within ``check_days`` working days."""

    @model_validator(mode="after")
    def _one_source(self) -> _Material:
        given = [s for s in ("licence", "dataset") if getattr(self, s) is not None]
        if self.submitted:
            given.append("submitted")
        if len(given) != 1:
            raise ValueError(
                "give exactly one source: licence, dataset, or submitted: true"
                + (f" (has {', '.join(given)})" if given else "")
            )
        return self

    def to_message(self) -> items_pb2.Material:
        message = items_pb2.Material(
            code=self.code,
            name=self.name,
            required=self.required,
            defer_days=self.deferral.days if self.deferral else 0,
            commitment_check_days=self.commitment.check_days if self.commitment else 0,
        )
        if self.licence is not None:
            message.licence.licence_type = self.licence.type
            message.licence.disclose.extend(self.licence.disclose)
        elif self.dataset is not None:
            message.dataset.dataset = self.dataset.code
            message.dataset.fields.extend(self.dataset.fields)
            if self.dataset.key_from is not None:
                message.dataset.key_from.material = self.dataset.key_from.material
                message.dataset.key_from.field = self.dataset.key_from.field
        else:
            message.submitted.SetInParent()
        return message


class _ItemFile(_Strict):
    """A service item, e.g. ``docs/examples/food-business-permit.item.yaml``."""

    code: str
    name: str
    legal_basis: str
    purpose: str
    legal_limit_days: int = Field(ge=0, le=2**32 - 1)
    promised_limit_days: int = Field(ge=0, le=2**32 - 1)
    immediate: bool = False
    issues_licence: str = ""
    on_breach: str = ""
    supervisors: list[str] = []
    materials: list[_Material]

    def to_message(self) -> items_pb2.ItemSpec:
        return items_pb2.ItemSpec(
            code=self.code,
            name=self.name,
            legal_basis=self.legal_basis,
            purpose=self.purpose,
            legal_limit_days=self.legal_limit_days,
            promised_limit_days=self.promised_limit_days,
            immediate=self.immediate,
            issues_licence=self.issues_licence,
            on_breach=self.on_breach,
            supervisors=self.supervisors,
            materials=[m.to_message() for m in self.materials],
        )


def read_spec_file(path: Path) -> Any:
    """The data of a spec file (``.yaml``/``.yml`` or ``.json``, at most 1 MiB); raise
    InvalidArgument saying what is wrong with it."""
    try:
        if path.stat().st_size > _MAX_FILE:
            raise InvalidArgument(f"{path} is over 1 MiB; an item file is a few KB.")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"Cannot read {path} as UTF-8 text: {e}.") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data: Any = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise InvalidArgument(
                f"{path} is neither .yaml, .yml nor .json; name the item file by its format."
            )
    except (yaml.YAMLError, ValueError) as e:
        raise InvalidArgument(f"{path} is not valid {suffix[1:].upper()}: {e}.") from None
    return data


def problems_of(error: ValidationError) -> str:
    """The first ten problems pydantic found, each with its path in the file."""
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or '(file)'}: {item['msg']}"
        for item in error.errors(include_url=False)[:10]
    )


def load_item_file(path: Path) -> items_pb2.ItemSpec:
    """Read and check an item file (``.yaml``/``.yml`` or ``.json``); raise
    InvalidArgument naming each problem."""
    data = read_spec_file(path)
    try:
        return _ItemFile.model_validate(data).to_message()
    except ValidationError as e:
        raise InvalidArgument(f"{path} is not a valid service item: {problems_of(e)}.") from None


# -- parsers -------------------------------------------------------------------------------


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban item register|list|show`` to the ``tongban`` parser."""
    dept = department_options(parser_class)

    item = sub.add_parser("item", help="the service-item catalogue (事项目录)")
    item_sub = item.add_subparsers(dest="item_command", required=True, parser_class=parser_class)
    register = item_sub.add_parser(
        "register",
        parents=[common, dept],
        help="register an item your department handles (or a new version) from YAML/JSON",
    )
    register.add_argument("file", type=Path)
    listing = item_sub.add_parser("list", parents=[common, dept], help="list the items")
    listing.add_argument("--department", default="", help="only this department's items")
    show = item_sub.add_parser("show", parents=[common, dept], help="one item, with its materials")
    show.add_argument("code")
    show.add_argument("--version", type=int, default=0, help="a version (default: current)")


# -- running -------------------------------------------------------------------------------


def _limits(spec: ItemSpec) -> str:
    if spec.immediate:
        return f"即办 (legal limit {spec.legal_limit_days} working days)"
    return f"promised {spec.promised_limit_days} / legal {spec.legal_limit_days} working days"


def _material_line(m: Material) -> str:
    if isinstance(m.source, LicenceSource):
        source = f"licence {m.source.licence_type}"
        if m.source.disclose:
            source += f" (disclose {', '.join(m.source.disclose)})"
    elif isinstance(m.source, DatasetSource):
        source = f"{m.source.dataset} ({', '.join(m.source.fields)})"
        if m.source.key_from is not None:
            source += f" keyed by {m.source.key_from.field} of {m.source.key_from.material}"
    else:
        source = "submitted by the applicant"
    extras = []
    if m.defer_days:
        extras.append(f"容缺 {m.defer_days} d")
    if m.commitment_check_days:
        extras.append(f"告知承诺 checked in {m.commitment_check_days} d")
    need = "required" if m.required else "optional"
    return f"  {m.code:<30} {m.name} — {source}; {need}" + (
        f"; {', '.join(extras)}" if extras else ""
    )


async def run_item(args: argparse.Namespace) -> int:
    if args.item_command == "register":
        spec = load_item_file(args.file)  # before connecting: a bad file needs no node
    async with department_client(args) as client:
        if args.item_command == "register":
            item = await client.register_item(spec)
            emit(
                args,
                {"item": message_dict(item, items_pb2.ServiceItem)},
                f"registered {item.spec.code} version {item.version} "
                f"(handled by {item.department})",
            )
        elif args.item_command == "list":
            found = await client.list_items(department=args.department)
            lines = [
                f"{i.spec.code:<32} v{i.version:<3} {i.department:<12} {i.spec.name} — "
                f"{_limits(i.spec)}, {len(i.spec.materials)} materials"
                for i in found
            ]
            emit(
                args,
                {"items": [message_dict(i, items_pb2.ServiceItem) for i in found]},
                "\n".join(lines) or "no items",
            )
        else:
            item = await client.get_item(args.code, args.version)
            shown = item.spec
            lines = [
                f"{shown.code} v{item.version} — {shown.name} (handled by {item.department})",
                f"  time limit: {_limits(shown)}",
                f"  legal basis: {shown.legal_basis}",
                f"  purpose of lookups: {shown.purpose}",
                "  materials:",
                *(_material_line(m) for m in shown.materials),
            ]
            emit(args, {"item": message_dict(item, items_pb2.ServiceItem)}, "\n".join(lines))
    return 0
