"""The registry of licence types (证照类型) and the validation of licence claims.

A ``LicenceType`` says what a licence of that type holds (its claim schema), who may
issue it, which claims a holder may withhold (selectively disclosable, as SD-JWT
disclosures), how long it is valid by default, and its ``vct`` URI. Types are pydantic
models (strict, ``extra="forbid"``), so a type defined in a configuration file is
checked exactly like a built-in one.

``validate_claims`` turns claims as a department system sends them into the normalised
JSON values a licence carries: text NFC-normalised and stripped, dates as ``YYYY-MM-DD``,
decimals as exact strings (``"50.00"``; never a binary float), integers within the
range JSON readers handle exactly.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tongban.errors import TongbanError
from tongban.licence.errors import ClaimInvalid, LicenceTypeUnknown

__all__ = [
    "BUILTIN_REGISTRY",
    "BUILTIN_TYPES",
    "BUSINESS_LICENCE",
    "FOOD_BUSINESS_PERMIT",
    "ClaimField",
    "ClaimType",
    "HolderKind",
    "LicenceType",
    "LicenceTypeRegistry",
    "default_expiry",
    "split_claims",
    "validate_claims",
]

ClaimType = Literal["string", "date", "integer", "decimal", "enum", "boolean"]
HolderKind = Literal["enterprise", "person"]

_DEPT_CODE = r"^[a-z][a-z0-9-]{1,62}$"  # as tongban.signing department codes
_MAX_JSON_INTEGER = 2**53 - 1  # beyond this, JavaScript and many JSON readers round
_MAX_DECIMAL_LENGTH = 40
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ALLOWED_CONTROLS = frozenset("\n")  # multi-line text such as a business scope
_METADATA_VALUE_LENGTH = 100

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class ClaimField(BaseModel):
    """One claim of a licence type's schema."""

    model_config = _STRICT

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    """The claim name in the credential (``legal_representative``)."""
    type: ClaimType
    """``string``, ``date`` (YYYY-MM-DD), ``integer``, ``decimal`` (exact, as a string),
    ``enum`` (one of ``choices``) or ``boolean``."""
    label_zh: Annotated[str, Field(min_length=1, max_length=64)]
    """The field's label on the licence (法定代表人)."""
    label_en: Annotated[str, Field(min_length=1, max_length=64)]
    """The English label (legal representative)."""
    required: bool = True
    """Whether every licence of this type must carry the claim."""
    max_length: Annotated[int, Field(ge=1, le=10_000)] | None = None
    """Longest value in characters; required for ``string`` claims, not allowed for
    others."""
    choices: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = ()
    """The allowed values of an ``enum`` claim."""
    disclosable: bool = False
    """Whether the holder may withhold it (an SD-JWT disclosure); otherwise it is signed
    in clear and always shown."""
    personal: bool = False
    """Whether it is personal information (个人信息) of a natural person."""
    holder_id: bool = False
    """Whether it is the holder's identifier (USCC or citizen id), checked by the
    ``validate_holder`` passed to ``validate_claims``."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.type == "string") != (self.max_length is not None):
            raise ValueError("max_length is required for string claims and only for them")
        if (self.type == "enum") != bool(self.choices):
            raise ValueError("choices are required for enum claims and only for them")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError("choices must be distinct")
        if self.holder_id and (self.type != "string" or not self.required or self.disclosable):
            raise ValueError("a holder_id claim must be a required, clear string")
        return self


class LicenceType(BaseModel):
    """A type of electronic licence and the schema of its claims."""

    model_config = _STRICT

    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,62}$")]
    """Stable machine name (``business-licence``)."""
    name_zh: Annotated[str, Field(min_length=1, max_length=64)]
    """Name on the licence (营业执照)."""
    name_en: Annotated[str, Field(min_length=1, max_length=128)]
    number_prefix: Annotated[str, Field(pattern=r"^[A-Z0-9]{1,8}$")]
    """First part of its licence numbers (``YYZZ``; see ``tongban.licence.numbers``)."""
    vct: Annotated[str, Field(pattern=r"^[a-z][a-z0-9+.-]*:\S+$", max_length=255)]
    """The SD-JWT VC type URI (``urn:tongban:licence:business-licence:1``); a new
    version of the schema gets a new URI."""
    issuers: Annotated[tuple[Annotated[str, Field(pattern=_DEPT_CODE)], ...], Field(min_length=1)]
    """Codes of the departments that may issue it (and amend, renew and change the
    status of what they issued)."""
    revokers: tuple[Annotated[str, Field(pattern=_DEPT_CODE)], ...] = ()
    """Codes of further departments that may suspend, reinstate or revoke licences of
    this type without issuing them (a regulator supervising what an approval bureau
    issued, 审管分离)."""
    holder_kind: HolderKind
    """Who holds it: an enterprise (id: USCC) or a person (id: citizen id)."""
    claims: Annotated[tuple[ClaimField, ...], Field(min_length=1, max_length=64)]
    """The claim schema, in display order."""
    validity_days: Annotated[int, Field(ge=1, le=36_500)] | None
    """Default validity from the start date, or None for open-ended (长期)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [c.name for c in self.claims]
        if len(set(names)) != len(names):
            raise ValueError("claim names must be distinct")
        if sum(c.holder_id for c in self.claims) > 1:
            raise ValueError("at most one claim may be the holder_id")
        if len(set(self.issuers)) != len(self.issuers):
            raise ValueError("issuers must be distinct")
        if len(set(self.revokers)) != len(self.revokers) or set(self.revokers) & set(self.issuers):
            raise ValueError("revokers must be distinct and not also issuers")
        return self

    def may_change_status(self, department: str) -> bool:
        """Whether ``department`` may suspend, reinstate or revoke licences of this type."""
        return department in self.issuers or department in self.revokers

    def claim(self, name: str) -> ClaimField:
        """Return the schema of claim ``name``; raises ClaimInvalid (problem
        ``unknown``) if the type has no such claim."""
        for field in self.claims:
            if field.name == name:
                return field
        raise _claim_error(self, name, "unknown", self._unknown_sentence(name))

    @property
    def disclosable_claims(self) -> frozenset[str]:
        """Names of the claims a holder may withhold."""
        return frozenset(c.name for c in self.claims if c.disclosable)

    @property
    def holder_claim(self) -> str | None:
        """Name of the claim holding the holder's id, if the type has one."""
        return next((c.name for c in self.claims if c.holder_id), None)

    def _unknown_sentence(self, name: str) -> str:
        return (
            f"A {self.name_en} ({self.name_zh}) has no claim {name[:64]!r}; its claims are "
            f"{', '.join(c.name for c in self.claims)}."
        )


def _claim_error(licence_type: LicenceType, name: str, problem: str, message: str) -> ClaimInvalid:
    return ClaimInvalid(
        message,
        metadata={"licence_type": licence_type.code, "claim": name[:64], "problem": problem},
    )


def _text(value: str) -> str:
    return unicodedata.normalize("NFC", value).strip()


def _has_bad_characters(text: str) -> bool:
    return any(
        unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") and c not in _ALLOWED_CONTROLS
        for c in text
    )


def _normalise(licence_type: LicenceType, field: ClaimField, value: object) -> object:
    """Return the normalised JSON value of one claim, or raise ClaimInvalid."""
    label = f"{field.label_en} ({field.label_zh}, {field.name!r})"

    def wrong(expected: str) -> ClaimInvalid:
        return _claim_error(
            licence_type,
            field.name,
            "type",
            f"The {label} must be {expected}, not {type(value).__name__}.",
        )

    if field.type == "boolean":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if field.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        if abs(value) > _MAX_JSON_INTEGER:
            raise _claim_error(
                licence_type,
                field.name,
                "value",
                f"The {label} is beyond ±(2**53 - 1), which JSON readers cannot hold exactly.",
            )
        return value
    if field.type == "decimal":
        return _decimal(licence_type, field, value, label, wrong)
    if field.type == "date":
        return _date(licence_type, field, value, label, wrong)
    if not isinstance(value, str):
        raise wrong("text")
    text = _text(value)
    if field.type == "enum":
        if text not in field.choices:
            raise _claim_error(
                licence_type,
                field.name,
                "value",
                f"The {label} must be one of {', '.join(field.choices)}; got {text[:64]!r}.",
            )
        return text
    if _has_bad_characters(text):
        raise _claim_error(
            licence_type,
            field.name,
            "value",
            f"The {label} contains control or unassigned characters; remove them.",
        )
    assert field.max_length is not None  # guaranteed for string claims
    if len(text) > field.max_length:
        raise _claim_error(
            licence_type,
            field.name,
            "length",
            f"The {label} has {len(text)} characters; at most {field.max_length} are allowed.",
        )
    return text


def _decimal(
    licence_type: LicenceType,
    field: ClaimField,
    value: object,
    label: str,
    wrong: Callable[[str], ClaimInvalid],
) -> str:
    if isinstance(value, bool | float):
        raise wrong("an exact decimal (a Decimal, an int or a string such as '50.00')")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str) and _DECIMAL_TEXT.fullmatch(_text(value)):
        try:
            number = Decimal(_text(value))
        except InvalidOperation as e:  # unreachable for the pattern, kept to fail closed
            raise wrong("a decimal number such as '50.00'") from e
    else:
        raise wrong("an exact decimal (a Decimal, an int or a string such as '50.00')")
    text = format(number, "f") if number.is_finite() else ""
    if not text or len(text) > _MAX_DECIMAL_LENGTH:
        raise _claim_error(
            licence_type,
            field.name,
            "value",
            f"The {label} must be a finite decimal of at most {_MAX_DECIMAL_LENGTH} characters.",
        )
    return text


def _date(
    licence_type: LicenceType,
    field: ClaimField,
    value: object,
    label: str,
    wrong: Callable[[str], ClaimInvalid],
) -> str:
    if isinstance(value, datetime):  # a datetime is a date too; its time would be lost
        raise wrong("a date without a time")
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise wrong("a date (YYYY-MM-DD)")
    text = _text(value)
    parsed = _parse_date(text)
    if parsed is None:
        raise _claim_error(
            licence_type,
            field.name,
            "value",
            f"The {label} is {text[:32]!r}, not a real date written YYYY-MM-DD.",
        )
    return parsed.isoformat()


def _parse_date(text: str) -> date | None:
    if not _DATE_TEXT.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:  # 2026-02-30
        return None


def validate_claims(
    licence_type: LicenceType,
    claims: Mapping[str, object],
    *,
    validate_holder: Callable[[str], str],
) -> dict[str, object]:
    """Return ``claims`` normalised for a licence of ``licence_type``, in schema order:
    text NFC-normalised and stripped, dates ``YYYY-MM-DD``, decimals exact strings.
    Optional claims that are absent, None or empty text are left out.

    ``validate_holder`` checks the holder-id claim (for example a USCC for an enterprise
    licence: pick it by ``licence_type.holder_kind``) and returns it normalised; it
    signals a bad id by raising ValueError or a TongbanError.

    Raises ClaimInvalid naming the field (metadata ``claim`` and ``problem``: ``unknown``,
    ``missing``, ``type``, ``length``, ``value`` or ``holder_id``).
    """
    for name in claims:
        if not isinstance(name, str):
            raise _claim_error(licence_type, repr(name), "unknown", "Claim names must be text.")
        licence_type.claim(name)  # raises for a claim the type does not have
    out: dict[str, object] = {}
    for field in licence_type.claims:
        value = claims.get(field.name)
        if isinstance(value, str) and not _text(value):
            value = None
        if value is None:
            if field.required:
                raise _claim_error(
                    licence_type,
                    field.name,
                    "missing",
                    f"A {licence_type.name_en} ({licence_type.name_zh}) needs the "
                    f"{field.label_en} ({field.label_zh}, {field.name!r}).",
                )
            continue
        normalised = _normalise(licence_type, field, value)
        if field.holder_id:
            assert isinstance(normalised, str)  # holder_id claims are strings
            try:
                normalised = validate_holder(normalised)
            except (ValueError, TongbanError) as e:
                detail = e.message if isinstance(e, TongbanError) else str(e)
                raise _claim_error(
                    licence_type,
                    field.name,
                    "holder_id",
                    f"The {field.label_en} ({field.label_zh}) is not a valid "
                    f"{licence_type.holder_kind} id: {detail}",
                ) from e
        out[field.name] = normalised
    return out


def split_claims(
    licence_type: LicenceType, claims: Mapping[str, object]
) -> tuple[dict[str, object], dict[str, object]]:
    """Return ``claims`` (as ``validate_claims`` returns them) split into the clear claims
    and the selectively disclosable ones, ready for ``issue_sd_jwt``.

    Raises ClaimInvalid (problem ``unknown``) for a claim the type does not have.
    """
    clear: dict[str, object] = {}
    disclosable: dict[str, object] = {}
    for name, value in claims.items():
        target = disclosable if licence_type.claim(name).disclosable else clear
        target[name] = value
    return clear, disclosable


def default_expiry(licence_type: LicenceType, start: datetime) -> datetime | None:
    """Return when a licence of ``licence_type`` valid from ``start`` expires by default
    (``start`` plus ``validity_days``), or None if the type is open-ended (长期)."""
    if licence_type.validity_days is None:
        return None
    return start + timedelta(days=licence_type.validity_days)


class LicenceTypeRegistry:
    """The licence types a node knows, by code and by ``vct``."""

    def __init__(self, types: Iterable[LicenceType]) -> None:
        """Hold ``types``; raises ValueError if two share a code or a ``vct``."""
        self._by_code: dict[str, LicenceType] = {}
        self._by_vct: dict[str, LicenceType] = {}
        for licence_type in types:
            if licence_type.code in self._by_code:
                raise ValueError(f"Licence type code {licence_type.code!r} is defined twice.")
            if licence_type.vct in self._by_vct:
                raise ValueError(f"Licence type vct {licence_type.vct!r} is used twice.")
            self._by_code[licence_type.code] = licence_type
            self._by_vct[licence_type.vct] = licence_type

    def _unknown(self, what: str, value: str) -> LicenceTypeUnknown:
        known = ", ".join(sorted(self._by_code)) or "none"
        return LicenceTypeUnknown(
            f"There is no licence type with {what} {value[:100]!r}; the known licence types "
            f"are: {known}.",
            metadata={what: value[:100]},
        )

    def get(self, code: str) -> LicenceType:
        """Return the licence type ``code``; raises LicenceTypeUnknown, listing the known
        codes, if there is none."""
        try:
            return self._by_code[code]
        except KeyError:
            raise self._unknown("code", code) from None

    def by_vct(self, vct: str) -> LicenceType:
        """Return the licence type whose ``vct`` is ``vct``; raises LicenceTypeUnknown,
        listing the known codes, if there is none."""
        try:
            return self._by_vct[vct]
        except KeyError:
            raise self._unknown("vct", vct) from None

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __iter__(self) -> Iterator[LicenceType]:
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)


def _field(
    name: str,
    type_: ClaimType,
    zh: str,
    en: str,
    *,
    max_length: int | None = None,
    required: bool = True,
    disclosable: bool = False,
    personal: bool = False,
    holder_id: bool = False,
    choices: tuple[str, ...] = (),
) -> ClaimField:
    return ClaimField(
        name=name,
        type=type_,
        label_zh=zh,
        label_en=en,
        max_length=max_length,
        required=required,
        disclosable=disclosable,
        personal=personal,
        holder_id=holder_id,
        choices=choices,
    )


BUSINESS_LICENCE = LicenceType(
    code="business-licence",
    name_zh="营业执照",
    name_en="Business licence",
    number_prefix="YYZZ",
    vct="urn:tongban:licence:business-licence:1",
    issuers=("samr",),
    holder_kind="enterprise",
    claims=(
        _field("name", "string", "名称", "name", max_length=100),
        _field(
            "uscc",
            "string",
            "统一社会信用代码",
            "unified social credit code",
            max_length=18,
            holder_id=True,
        ),
        _field(
            "legal_representative",
            "string",
            "法定代表人",
            "legal representative",
            max_length=50,
            disclosable=True,
            personal=True,
        ),
        _field("address", "string", "住所", "address", max_length=200),
        _field(
            "registered_capital",
            "decimal",
            "注册资本（万元）",
            "registered capital (10,000 CNY)",
            required=False,
        ),
        _field("entity_type", "string", "类型", "type of entity", max_length=100),
        _field("business_scope", "string", "经营范围", "business scope", max_length=4000),
        _field("established", "date", "成立日期", "date established"),
    ),
    validity_days=None,  # 营业期限：长期
)

FOOD_BUSINESS_PERMIT = LicenceType(
    code="food-business-permit",
    name_zh="食品经营许可证",
    name_en="Food business permit",
    number_prefix="JY",
    vct="urn:tongban:licence:food-business-permit:1",
    # The approval bureau issues (相对集中行政许可权); the market regulator supervises and
    # may suspend or revoke (DESIGN.md step 6).
    issuers=("approval",),
    revokers=("regulator",),
    holder_kind="enterprise",
    claims=(
        _field("operator_name", "string", "经营者名称", "operator name", max_length=100),
        _field(
            "uscc",
            "string",
            "统一社会信用代码",
            "unified social credit code",
            max_length=18,
            holder_id=True,
        ),
        _field(
            "legal_representative",
            "string",
            "法定代表人（负责人）",
            "legal representative",
            max_length=50,
            disclosable=True,
            personal=True,
        ),
        _field("premises_address", "string", "经营场所", "premises address", max_length=200),
        _field(
            "main_business",
            "enum",
            "主体业态",
            "main business",
            choices=("食品销售经营者", "餐饮服务经营者", "集中用餐单位食堂"),
        ),
        _field("business_items", "string", "经营项目", "business items", max_length=1000),
    ),
    validity_days=5 * 365 + 1,  # 有效期 5 年, counting the usual one leap day
)

#: The licence types of the restaurant story (DESIGN.md).
BUILTIN_TYPES: tuple[LicenceType, ...] = (BUSINESS_LICENCE, FOOD_BUSINESS_PERMIT)
#: A registry of ``BUILTIN_TYPES``.
BUILTIN_REGISTRY = LicenceTypeRegistry(BUILTIN_TYPES)
