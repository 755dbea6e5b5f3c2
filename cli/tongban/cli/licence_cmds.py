"""``tongban licence ...`` and ``tongban seal ...``: electronic licences and seals.

Issuing, getting, listing and changing status act as the department of ``--as BUNDLE``
over gRPC. ``licence list`` without ``--as`` is the operator's view, read from the data
dir's database. ``licence verify`` and ``licence trust-list`` are what a verifier outside
government runs: they need only the exchange root CA certificate and (online) the node's
HTTP address; ``--offline`` verifies with the cached trust list and status lists alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from tongban.cli.common import (
    department_client,
    department_options,
    emit,
    settings_from_args,
)
from tongban.cli.wire_json import message_json
from tongban.client import ExchangeClient, Licence, LicenceVerification
from tongban.exchange.errors import InvalidArgument
from tongban.licence import (
    BUILTIN_REGISTRY,
    StatusListCache,
    StatusUnavailable,
    StatusUrlUntrusted,
    TrustList,
    TrustListCache,
    TrustListUnavailable,
    VerificationFailed,
    VerificationResult,
    qr_png,
    verify_licence,
)
from tongban.licence.sm2_seal import verify_sm2_licence_signature
from tongban.licence.verify import failure
from tongban.signing import load_pem_certificates
from tongban.signing.files import write_atomic
from tongban.v1 import licence_pb2

__all__ = ["add_parsers", "run_licence", "run_seal"]

_FORMATS = ("sd-jwt", "sd-jwt-sm2", "qr", "qr-png", "pdf", "json")
_STATUS_COMMANDS = ("suspend", "reinstate", "revoke", "cancel")
_MAX_FETCH = 4 * 1024 * 1024
_MAX_FILE = 16 * 1024 * 1024


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tongban" / "verifier"


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``licence`` and ``seal`` to the ``tongban`` parser."""
    dept = department_options(parser_class)
    optional_dept = department_options(parser_class, required=False)
    verifier = parser_class(add_help=False)
    verifier.add_argument("--url", help="the node's HTTP address, e.g. http://127.0.0.1:8080")
    verifier.add_argument("--ca", type=Path, help="the exchange root CA certificate (PEM)")
    verifier.add_argument("--cache-dir", type=Path, default=None,
                          help="verifier cache (default ~/.cache/tongban/verifier)")  # fmt: skip

    licence = sub.add_parser("licence", help="electronic licences (电子证照)")
    lsub = licence.add_subparsers(dest="licence_command", required=True, parser_class=parser_class)
    lsub.add_parser("types", parents=[common], help="the licence types and their claims")
    issue = lsub.add_parser("issue", parents=[common, dept], help="issue a licence")
    issue.add_argument("licence_type", help="e.g. business-licence")
    issue.add_argument("--claims", type=Path, required=True, help="a JSON file of the claims")
    issue.add_argument("--case", dest="case_id", default="", help="the case (办件编号)")
    issue.add_argument("--reason", default="", help="e.g. the approval decision's number")
    get = lsub.add_parser("get", parents=[common, dept], help="a licence, in a format")
    get.add_argument("number")
    get.add_argument("--format", choices=_FORMATS, default="json")
    get.add_argument("--out", type=Path, help="write the licence here (default: stdout)")
    get.add_argument("--purpose", help="fetch for an approval with this purpose (logged)")
    get.add_argument("--case", dest="case_id", help="... and this case id")
    get.add_argument("--disclose", default="", help="claims to disclose when fetching (a,b)")
    get.add_argument(
        "--authorisation",
        default="",
        help="the holder's one-time code (授权用证) for personal claims without a grant",
    )
    listing = lsub.add_parser("list", parents=[common, optional_dept], help="list licences")
    listing.add_argument("--holder", help="the holder's USCC or citizen id")
    for action in _STATUS_COMMANDS:
        change = lsub.add_parser(action, parents=[common, dept], help=f"{action} a licence")
        change.add_argument("number")
        change.add_argument("--reason", required=True)
    verify = lsub.add_parser(
        "verify",
        parents=[common, verifier, optional_dept],
        help="verify a licence (with --as: ask your exchange's node, which also knows its "
        "peers' licences)",
    )
    verify.add_argument("file", nargs="?", type=Path, help="an SD-JWT, QR text or PNG file")
    verify.add_argument("--qr", help="the QR text (TB1:...)")
    verify.add_argument("--offline", action="store_true",
                        help="use only the cached trust list and status lists")  # fmt: skip
    verify.add_argument(
        "--sm2",
        metavar="SIGNATURE",
        help="the SM2 signature beside an SD-JWT (Licence.sd_jwt_sm2), or @FILE holding it: "
        "the licence then verifies only if it does too",
    )
    verify.add_argument(
        "--sm2-ca",
        type=Path,
        help="the exchange's SM2 root (ca/sm2-ca.crt) for --sm2 without --as; default: the "
        "data dir's",
    )
    trust = lsub.add_parser("trust-list", parents=[common, verifier],
                            help="show (or --refresh) the cached trust list")  # fmt: skip
    trust.add_argument("--refresh", action="store_true", help="fetch a fresh one from --url")

    seal = sub.add_parser("seal", help="electronic seals (电子印章) on PDF documents")
    ssub = seal.add_subparsers(dest="seal_command", required=True, parser_class=parser_class)
    spdf = ssub.add_parser("pdf", parents=[common, dept], help="seal a PDF with our seal")
    spdf.add_argument("input", type=Path)
    spdf.add_argument("output", type=Path)
    spdf.add_argument("--reason", default="")
    sverify = ssub.add_parser("verify", parents=[common], help="check a sealed PDF")
    sverify.add_argument("file", type=Path)
    sverify.add_argument("--ca", type=Path, help="the exchange root CA (default: the data dir's)")
    enrol = ssub.add_parser("enrol", parents=[common],
                            help="give a registered department a custodial seal")  # fmt: skip
    enrol.add_argument("code")
    sm2 = ssub.add_parser(
        "sm2",
        parents=[common],
        help="give a department an SM2 seal that signs its licences beside ES256 "
        "(or --list, --revoke)",
    )
    sm2.add_argument("code", nargs="?", help="the department (optional with --list)")
    sm2.add_argument("--list", action="store_true", help="show the SM2 seal keys and their state")
    sm2.add_argument("--revoke", metavar="SHA256", help="revoke this SM2 seal certificate")
    sm2.add_argument("--reason", help="why it is revoked (1-500 characters)")
    move = ssub.add_parser(
        "move-to-token",
        parents=[common],
        help="move custodial seal keys from the database into the PKCS#11 token",
    )
    move.add_argument(
        "holders", nargs="*", metavar="CODE", help="departments (default: every key held)"
    )


def _licence_dict(licence: Licence) -> dict[str, Any]:
    data = message_json(licence, licence_pb2.Licence)
    data["claims"] = json.loads(data.pop("claims_json", "{}") or "{}")
    return data


def _read(path: Path, what: str, limit: int = _MAX_FILE) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InvalidArgument(f"Cannot read the {what} {path}: {e.strerror}.") from None
    if len(data) > limit:
        raise InvalidArgument(f"The {what} {path} is over {limit // (1024 * 1024)} MiB.")
    return data


def _write(path: Path | None, data: bytes) -> None:
    if path is None:
        os.write(1, data)
        return
    try:
        write_atomic(path, data, mode=0o644, dir_mode=0o755)
    except OSError as e:
        raise InvalidArgument(f"Cannot write {path}: {e.strerror}.") from None


async def run_licence(args: argparse.Namespace) -> int:
    command = args.licence_command
    if command == "types":
        return _types(args)
    if command == "verify":
        return await _verify(args)
    if command == "trust-list":
        return await _trust_list(args)
    if command == "list" and args.bundle is None:
        return await _operator_list(args)
    async with department_client(args) as client:
        if command == "issue":
            try:
                claims = json.loads(_read(args.claims, "claims file", 64 * 1024))
            except ValueError:
                raise InvalidArgument(f"{args.claims} is not a JSON object of claims.") from None
            if not isinstance(claims, dict):
                raise InvalidArgument(f"{args.claims} is not a JSON object of claims.")
            licence = await client.issue_licence(
                args.licence_type, claims, case_id=args.case_id, reason=args.reason
            )
            emit(args, {"licence": _licence_dict(licence)},
                 f"issued {licence.number} ({licence.licence_type}) to {licence.holder_name} "
                 f"({licence.holder_id})")  # fmt: skip
        elif command == "get":
            await _get(args, client)
        elif command == "list":
            found = await client.list_licences(args.holder or "")
            _emit_list(args, [_licence_dict(item) for item in found])
        else:
            licence = await client.change_licence_status(args.number, command, args.reason)
            emit(args, {"licence": _licence_dict(licence)},
                 f"{licence.number} is now {licence.status}")  # fmt: skip
    return 0


def _types(args: argparse.Namespace) -> int:
    types = [json.loads(t.model_dump_json()) for t in BUILTIN_REGISTRY]
    lines = []
    for t in BUILTIN_REGISTRY:
        also = f"; status also changed by {', '.join(t.revokers)}" if t.revokers else ""
        lines.append(f"{t.code:<22} {t.name_zh}  issued by {', '.join(t.issuers)}{also}")
        for c in t.claims:
            flags = ",".join(
                f for f, on in (("required", c.required), ("disclosable", c.disclosable),
                                ("holder", c.holder_id)) if on
            )  # fmt: skip
            lines.append(f"    {c.name:<22} {c.type:<8} {c.label_zh} [{flags}]")
    emit(args, {"types": types}, "\n".join(lines))
    return 0


def _emit_list(args: argparse.Namespace, items: list[dict[str, Any]]) -> None:
    lines = [
        f"{i['number']:<28} {i['licence_type']:<22} {i['status']:<10} {i['holder_id']} "
        f"{i.get('holder_name', '')}"
        for i in items
    ]
    emit(args, {"licences": items}, "\n".join(lines) or "no licences")


async def _operator_list(args: argparse.Namespace) -> int:
    from tongban.exchange.db.database import Database
    from tongban.exchange.licensing.register import read_licences

    settings = settings_from_args(args)
    async with await Database.open(settings, pool_size=1) as db:
        items = await read_licences(db.pool, args.holder)
    _emit_list(args, items)
    return 0


async def _get(args: argparse.Namespace, client: ExchangeClient) -> None:
    if args.purpose or args.case_id:
        disclose = [c.strip() for c in args.disclose.split(",") if c.strip()]
        licence = await client.fetch_licence(
            number=args.number,
            purpose=args.purpose or "",
            case_id=args.case_id or "",
            disclose=disclose,
            authorisation=args.authorisation,
        )
    else:
        licence = await client.get_licence(args.number)
    fmt = args.format
    if fmt == "json":
        if args.out is not None:
            _write(args.out, json.dumps(_licence_dict(licence), ensure_ascii=False).encode())
        emit(args, {"licence": _licence_dict(licence)},
             "" if args.out else json.dumps(_licence_dict(licence), ensure_ascii=False,
                                            indent=2))  # fmt: skip
        return
    if fmt == "sd-jwt":
        data = licence.sd_jwt.encode("ascii")
    elif fmt == "sd-jwt-sm2":
        if not licence.sd_jwt_sm2:
            raise InvalidArgument(
                f"Licence {licence.number} has no SM2 signature: its issuer had no SM2 seal "
                "when it was issued (`tongban seal sm2 DEPT`)."
            )
        data = licence.sd_jwt_sm2.encode("ascii")
    elif fmt == "qr":
        data = licence.qr.encode("ascii")
    elif fmt == "qr-png":
        data = qr_png(licence.qr, scale=6)
    else:
        data = await client.render_licence(licence.number)
    if args.out is None and args.json:
        raise InvalidArgument("With --json, give --out for the licence file.")
    text_format = fmt in ("sd-jwt", "sd-jwt-sm2", "qr")
    _write(args.out, data + (b"\n" if args.out is None and text_format else b""))
    if args.out is not None:
        emit(args, {"number": licence.number, "format": fmt, "out": str(args.out),
                    "bytes": len(data)},
             f"wrote {licence.number} as {fmt} to {args.out} ({len(data):,} bytes)")  # fmt: skip


# -- verification (a verifier outside government) -------------------------------------


class _Verifier:
    """The verifier's cache: root CA, trust list, status lists, and where to fetch."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dir: Path = args.cache_dir or _default_cache()
        self.trust = TrustListCache(self.dir / "trust-list.jwt")
        self.status = StatusListCache(self.dir / "status-lists")
        self.args = args

    def roots(self) -> list[x509.Certificate]:
        stored = self.dir / "ca.crt"
        given: Path | None = self.args.ca
        if given is None and self.args.data_dir is not None:
            candidate = self.args.data_dir / "ca" / "ca.crt"
            given = candidate if candidate.exists() else None
        if given is not None:
            pem = _read(given, "CA certificate", 64 * 1024)
            try:
                roots = load_pem_certificates(pem)
            except ValueError:
                raise InvalidArgument(f"{given} is not a PEM certificate.") from None
            if not roots:
                raise InvalidArgument(f"{given} holds no PEM certificate.")
            if not stored.exists() or stored.read_bytes() != pem:
                write_atomic(stored, pem, mode=0o644, dir_mode=0o755)
            return roots
        if stored.exists():
            return load_pem_certificates(stored.read_bytes())
        raise InvalidArgument(
            "No exchange root CA certificate: give --ca FILE (from `tongban ca export`) once; "
            "it is kept in the verifier cache."
        )

    def url(self) -> str | None:
        source = self.dir / "source.json"
        if self.args.url:
            url = str(self.args.url).rstrip("/")
            write_atomic(source, json.dumps({"url": url}).encode(), mode=0o644, dir_mode=0o755)
            return url
        try:
            value = json.loads(source.read_text()).get("url")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    async def fetch(self, url: str, what: str, error: type[VerificationFailed]) -> str:
        """GET ``url``, following no redirect: the address was checked, where a redirect
        points was not (a status list's base URL comes from the trust list)."""
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(url, allow_redirects=False) as response,
            ):
                if 300 <= response.status < 400:
                    fix = (
                        "give the node's own address with --url"
                        if error is TrustListUnavailable
                        else "only the address the trust list names is fetched"
                    )
                    raise error(
                        f"Fetching the {what} from {url} gave a redirect (HTTP "
                        f"{response.status}), which is not followed; {fix}."
                    )
                if response.status != 200:
                    raise error(f"Fetching the {what} from {url} gave HTTP {response.status}.")
                body = await response.content.read(_MAX_FETCH + 1)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise error(
                f"The {what} could not be fetched from {url} ({type(e).__name__}); check the "
                "address, or verify --offline with the cached one."
            ) from None
        if len(body) > _MAX_FETCH:
            raise error(f"The {what} from {url} is over {_MAX_FETCH // (1024 * 1024)} MiB.")
        return body.decode("ascii", "replace")

    async def refresh_trust_list(self, roots: list[x509.Certificate]) -> TrustList:
        url = self.url()
        if url is None:
            raise TrustListUnavailable(
                "No node address to fetch the trust list from: give --url once (it is "
                "remembered in the verifier cache)."
            )
        token = await self.fetch(url + "/trust-list", "trust list", TrustListUnavailable)
        return self.trust.store(token, roots=roots, now=datetime.now(UTC))


async def _verify(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.qr is None):
        raise InvalidArgument("Give a licence FILE or --qr TEXT (one of them).")
    if args.qr is not None:
        text = args.qr.strip()
    else:
        # A licence PDF (its QR code is read from the rendered page), an image of the QR
        # code, or a file holding the QR text or an SD-JWT.
        from tongban.licence.uploads import RenderSlots, licence_text_from_upload

        # One file, one render: the slots bound a node's concurrent uploads.
        text = await licence_text_from_upload(_read(args.file, "licence file"), RenderSlots(1, 0))
    sm2 = _sm2_signature(args)
    if args.bundle is not None:
        # The node verifies (LicenceService/Verify): its own licences with the registry's
        # status, and its peers' with their trust lists (docs/federation.md).
        async with department_client(args) as client:
            return _report_node(args, await client.verify_licence(text, sd_jwt_sm2=sm2))
    verifier = _Verifier(args)
    roots = verifier.roots()
    now = datetime.now(UTC)
    fetched = False  # whether the trust list in hand was fetched by this command
    try:
        if args.offline:
            trust_list = verifier.trust.load(roots=roots, now=now)
        else:
            try:
                trust_list = verifier.trust.load(roots=roots, now=now)
                if trust_list.needs_refresh(now):
                    trust_list, fetched = await verifier.refresh_trust_list(roots), True
            except TrustListUnavailable:
                trust_list, fetched = await verifier.refresh_trust_list(roots), True
    except VerificationFailed as e:
        result = failure(e, "unknown")
        return _report(args, result)
    # Nothing is fetched for a licence until its signature, issuer, disclosures and
    # validity hold (a forged one must not make us request an address of its choosing),
    # and then only from under a base URL the signed trust list names for its issuer.
    checked = verify_licence(
        text, roots=roots, trust_list=trust_list, registry=BUILTIN_REGISTRY, now=now,
        status=None,
    )  # fmt: skip
    ref = checked.status_reference
    if not checked.verified or ref is None:
        return _report(args, checked)
    if not args.offline:
        try:
            try:
                uri = trust_list.check_status_url(checked.issuer, ref.uri)
            except StatusUrlUntrusted as untrusted:
                if fetched:
                    raise
                # The exchange may have named a new address since the cached list.
                try:
                    trust_list = await verifier.refresh_trust_list(roots)
                except VerificationFailed:
                    raise untrusted from None
                uri = trust_list.check_status_url(checked.issuer, ref.uri)
            token = await verifier.fetch(uri, "status list", StatusUnavailable)
            trusted = trust_list.status_list_certificates_for(checked.issuer)
            verifier.status.store(token, uri=uri, roots=roots, trusted=trusted, now=now)
        except VerificationFailed as e:
            return _report(args, _failed(checked, e))

    def lookup(issuer: str, uri: str, index: int) -> int | None:
        # Offline too: a list cached from an address the trust list no longer names
        # is not believed.
        trust_list.check_status_url(issuer, uri)
        trusted = trust_list.status_list_certificates_for(issuer)
        status_list = verifier.status.load(uri, roots=roots, trusted=trusted, now=now)
        return None if status_list is None else status_list.get(index)

    result = verify_licence(
        text, roots=roots, trust_list=trust_list, registry=BUILTIN_REGISTRY, now=now,
        status=lookup,
    )  # fmt: skip
    if sm2 and result.verified:
        try:
            verify_sm2_licence_signature(
                text, sm2, sm2_roots=_sm2_roots(args), trust_list=trust_list, now=now
            )
        except VerificationFailed as e:
            return _report(args, _failed(result, e))
        result = dataclasses.replace(result, sm2_verified=True)
    return _report(args, result)


def _sm2_signature(args: argparse.Namespace) -> str:
    given: str | None = args.sm2
    if not given:
        return ""
    if given.startswith("@"):
        return _read(Path(given[1:]), "SM2 signature", 64 * 1024).decode("ascii", "replace").strip()
    return given.strip()


def _sm2_roots(args: argparse.Namespace) -> list[x509.Certificate]:
    given: Path | None = args.sm2_ca
    if given is None and args.data_dir is not None:
        candidate = args.data_dir / "ca" / "sm2-ca.crt"
        given = candidate if candidate.exists() else None
    if given is None:
        raise InvalidArgument(
            "--sm2 needs the exchange's SM2 root to check the signature with: give --sm2-ca "
            "FILE (the exchange's ca/sm2-ca.crt), or ask the node with --as."
        )
    return load_pem_certificates(_read(given, "SM2 root certificate", 64 * 1024))


def _failed(checked: VerificationResult, error: VerificationFailed) -> VerificationResult:
    """``checked`` (verified but for its status) turned into the failure ``error``."""
    failed = failure(error, checked.format)
    return dataclasses.replace(
        checked,
        verified=False,
        message=failed.message,
        check=failed.check,
        reason=failed.reason,
        status=failed.status,
    )


def _report(args: argparse.Namespace, result: VerificationResult) -> int:
    return _say(args, result, result.to_dict())


def _report_node(args: argparse.Namespace, result: LicenceVerification) -> int:
    data = dataclasses.asdict(result)
    for key in ("not_before", "expires"):
        data[key] = data[key].isoformat() if data[key] is not None else None
    return _say(args, result, data)


def _say(
    args: argparse.Namespace,
    result: VerificationResult | LicenceVerification,
    data: dict[str, Any],
) -> int:
    """Print a verification (``data`` as JSON with --json); exit 0 if it verified."""
    if args.json:
        print(json.dumps({"ok": result.verified, **data}, ensure_ascii=False), flush=True)
    elif result.verified:
        sm2 = " The SM2 signature beside it verified too." if result.sm2_verified else ""
        print(f"VERIFIED: {result.message}{sm2}", flush=True)
    else:
        print(
            f"NOT VERIFIED ({result.check} check, {result.reason}): {result.message}",
            flush=True,
        )
    return 0 if result.verified else 1


async def _trust_list(args: argparse.Namespace) -> int:
    verifier = _Verifier(args)
    roots = verifier.roots()
    now = datetime.now(UTC)
    if args.refresh:
        trust_list = await verifier.refresh_trust_list(roots)
    else:
        trust_list = verifier.trust.load(roots=roots, now=now)
    entries = {
        code: {
            "seal_certificates": [c.subject.rfc4514_string() for c in e.seal_certificates],
            "status_list_certificates": [
                c.subject.rfc4514_string() for c in e.status_list_certificates
            ],
            "status_base_urls": list(e.status_base_urls),
        }
        for code, e in trust_list.entries.items()
    }
    emit(
        args,
        {
            "issuer": trust_list.issuer,
            "issued_at": trust_list.issued_at.isoformat(),
            "next_update": trust_list.next_update.isoformat(),
            "expires_at": trust_list.expires_at.isoformat(),
            "departments": entries,
            "cache": str(verifier.trust.path),
        },
        f"trust list from node {trust_list.issuer}, issued {trust_list.issued_at:%Y-%m-%d %H:%M}"
        f" UTC; refresh after {trust_list.next_update:%Y-%m-%d %H:%M}; valid until "
        f"{trust_list.expires_at:%Y-%m-%d %H:%M}\n"
        + "\n".join(
            f"  {code}: {', '.join(v['seal_certificates'])}" for code, v in entries.items()
        ),
    )
    return 0


# -- seals ----------------------------------------------------------------------------


async def run_seal(args: argparse.Namespace) -> int:
    if args.seal_command == "verify":
        return await _seal_verify(args)
    if args.seal_command == "enrol":
        return await _seal_enrol(args)
    if args.seal_command == "move-to-token":
        return await _seal_move(args)
    if args.seal_command == "sm2":
        return await _seal_sm2(args)
    pdf = _read(args.input, "PDF")
    async with department_client(args) as client:
        sealed = await client.seal_pdf(pdf, reason=args.reason)
    _write(args.output, sealed)
    emit(args, {"out": str(args.output), "bytes": len(sealed)},
         f"sealed {args.input} as {args.bundle.name}: {args.output}")  # fmt: skip
    return 0


async def _seal_verify(args: argparse.Namespace) -> int:
    from tongban.exchange.datadir import ca_certificate_pem
    from tongban.exchange.licensing.documents import verify_document

    pdf = _read(args.file, "PDF")
    if args.ca is not None:
        pem = _read(args.ca, "CA certificate", 64 * 1024)
    else:
        pem = ca_certificate_pem(settings_from_args(args))
    result = await verify_document(pdf, load_pem_certificates(pem), datetime.now(UTC))
    seals = [
        {
            "field": s.field_name,
            "department": s.department_code,
            "signer": s.signer_name,
            "signed_at": s.signing_time.isoformat() if s.signing_time else None,
            "intact": s.intact,
            "coverage": s.coverage,
            "pades_level": s.pades_level,
        }
        for s in result.seals
    ]
    payload = {"verified": result.verified, "check": result.check, "reason": result.reason,
               "message": result.message, "seals": seals}  # fmt: skip
    if args.json:
        print(json.dumps({"ok": result.verified, **payload}, ensure_ascii=False), flush=True)
    elif result.verified:
        lines = [f"VERIFIED: {result.message}"] + [
            f"  {s['signer']} ({s['department']}) sealed at {s['signed_at']}, "
            f"{s['pades_level']}, covers {s['coverage']}"
            for s in seals
        ]
        print("\n".join(lines), flush=True)
    else:
        print(f"NOT VERIFIED ({result.check} check, {result.reason}): {result.message}")
    return 0 if result.verified else 1


async def _seal_enrol(args: argparse.Namespace) -> int:
    from tongban.exchange.datadir import open_token
    from tongban.exchange.db.database import Database
    from tongban.exchange.licensing.setup import enrol_seal, vault_for

    settings = settings_from_args(args)
    token = await asyncio.to_thread(open_token)  # with a token, the new key goes into it
    try:
        # The seal's fingerprint goes into the registry: the owner's login (migration 0021).
        async with await Database.open(settings, pool_size=1, owner=True) as db:
            fingerprint = await enrol_seal(
                vault_for(db.pool, settings, token), db.pool, settings, args.code, datetime.now(UTC)
            )
    finally:
        if token is not None:
            token.close()
    where = f" in token {token.label}" if token is not None else ""
    emit(
        args,
        {"department": args.code, "seal_fingerprint": fingerprint.hex(), "in_token": bool(token)},
        f"{args.code} now has a custodial seal{where} (certificate sha256 {fingerprint.hex()})",
    )
    return 0


async def _seal_sm2(args: argparse.Namespace) -> int:
    """Enrol, list or revoke departments' SM2 seals (the schema owner's login: the node
    only reads them)."""
    from tongban.exchange.db.database import Database
    from tongban.exchange.licensing.setup import enrol_sm2_seal, sm2_seals_for

    if not args.list and not args.code:
        raise InvalidArgument("Name the department: `tongban seal sm2 CODE`.")
    reason = (args.reason or "").strip()
    if args.revoke is not None:
        try:
            fingerprint = bytes.fromhex(args.revoke)
        except ValueError:
            fingerprint = b""
        if len(fingerprint) != 32:
            raise InvalidArgument(
                f"{args.revoke[:80]!r} is not a SHA-256 in hex (64 characters); "
                "`tongban seal sm2 --list` shows them."
            )
        if not 1 <= len(reason) <= 500:
            raise InvalidArgument("--revoke needs --reason (1-500 characters).")
    settings = settings_from_args(args)
    now = datetime.now(UTC)
    async with await Database.open(settings, pool_size=1, owner=True) as db:
        seals = sm2_seals_for(db.pool, settings)
        if args.list:
            keys = await seals.keys(args.code)
            rows = [
                {"department": k.holder, "state": k.state, "sha256": k.fingerprint.hex(),
                 "created_at": k.created_at.isoformat(),
                 "not_after": k.certificate.not_valid_after_utc.isoformat()}
                for k in keys
            ]  # fmt: skip
            lines = [
                f"{r['department']:<14} {r['state']:<8} sha256 {r['sha256'][:16]}…  until "
                f"{r['not_after'][:10]}"
                for r in rows
            ]
            emit(args, {"sm2_seals": rows}, "\n".join(lines) or "no SM2 seals")
        elif args.revoke is not None:
            await seals.revoke(args.code, fingerprint, reason, now)
            emit(
                args,
                {"department": args.code, "sha256": fingerprint.hex(), "revoked": True},
                f"{args.code}: SM2 seal {fingerprint.hex()} revoked; it signs no more and the "
                "next trust list stops naming it, so its signatures fail with "
                "SM2_SEAL_UNTRUSTED",
            )
        else:
            fingerprint = await enrol_sm2_seal(seals, db.pool, settings, args.code, now)
            emit(
                args,
                {"department": args.code, "sha256": fingerprint.hex()},
                f"{args.code} now has an SM2 seal (certificate sha256 {fingerprint.hex()}); "
                "its licences carry an SM2 signature beside the SD-JWT from the nodes' next "
                "read (within 30 seconds)",
            )
    return 0


async def _seal_move(args: argparse.Namespace) -> int:
    from tongban.exchange.datadir import open_token
    from tongban.exchange.db.database import Database
    from tongban.exchange.licensing.setup import vault_for

    settings = settings_from_args(args)
    token = await asyncio.to_thread(open_token)
    try:
        async with await Database.open(settings, pool_size=1) as db:
            vault = vault_for(db.pool, settings, token)
            wanted = args.holders or sorted({key.holder for key in await vault.keys()})
            for holder in wanted:
                # Raises TokenUnavailable without a token, SealNotEnrolled for a stranger.
                await vault.move_to_token(holder)
            # Every unrevoked key of the holders, by label (moved now or before).
            moved = {
                holder: sorted(
                    k.key_label or "" for k in await vault.keys(holder) if k.state != "revoked"
                )
                for holder in wanted
            }
    finally:
        if token is not None:
            token.close()
    emit(
        args,
        {"keys": moved},
        "\n".join(
            f"{holder}: in the token as {', '.join(labels)}" for holder, labels in moved.items()
        )
        or "no custodial keys",
    )
    return 0
