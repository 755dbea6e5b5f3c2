"""The auditors' pages: search, an entry, export, verification, anomalies, volume and
covert cases."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from aiohttp import web

from tongban.errors import TongbanError
from tongban.exchange.audit.anomalies import MAX_PERIOD, find_anomalies
from tongban.exchange.audit.merkle import leaf_hash, verify_inclusion
from tongban.exchange.audit.note import open_checkpoint
from tongban.exchange.audit.store import SearchFilters
from tongban.exchange.audit.verify import verify_log
from tongban.exchange.db.trouble import DRIVER_ERRORS
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.federation.trail import CaseTrail
from tongban.exchange.sharing.policy import MAX_CASE_ID
from tongban.exchange.web.base import (
    _COLOURS,
    _FILTERS,
    _INDEX,
    _PAGE,
    _VOLUME_DAYS,
    ConsoleBase,
    _instant,
    _VerifyJob,
)
from tongban.exchange.web.i18n import translator
from tongban.exchange.web.sessions import Session

__all__ = ["AuditPages", "spreadsheet_safe"]


class AuditPages(ConsoleBase):
    """/console/audit/..."""

    # ---- audit --------------------------------------------------------------------------

    async def _filters(self, request: web.Request, who: Session, action: str) -> SearchFilters:
        q = request.query
        for name in _FILTERS:
            if len(q.get(name, "")) > 200:
                raise InvalidArgument(f"'{name}' is too long (at most 200 characters).")
        decision = q.get("decision", "").strip() or None
        if decision not in (None, "allowed", "denied"):
            raise InvalidArgument("'decision' must be allowed, denied or empty.")
        subject = q.get("subject", "").strip()
        filters = SearchFilters(
            subject_hmac=self._hasher(subject) if subject else None,
            caller=q.get("caller", "").strip() or None,
            officer=q.get("officer", "").strip() or None,
            dataset=q.get("dataset", "").strip() or None,
            purpose=q.get("purpose", "").strip() or None,
            case_id=q.get("case", "").strip() or None,
            decision=decision,
            start=_instant(q.get("from", ""), "from", self._zone),
            end=_instant(q.get("to", ""), "to", self._zone),
        )
        filters.where(1)  # validate (start before end) before anything is logged
        # Logged whatever the filters: a search or an export of everyone reads everyone.
        await self._log_view(
            who.principal,
            who.officer,
            action,
            filters.subject_hmac,
            f"audit {filters.described()}".strip(),
        )
        return filters

    async def _audit_search(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        searched = any(request.query.get(n, "").strip() for n in _FILTERS) or (
            "page" in request.query
        )
        entries: list[Any] = []
        token = ""
        if searched:
            filters = await self._filters(request, session, "audit.search")
            entries, token = await self._store.search(
                filters, page_size=_PAGE, page_token=request.query.get("page", "")
            )
        params = {k: v for k, v in request.query.items() if k in _FILTERS and v}
        return self._page(
            request,
            "audit_search.html",
            entries=entries,
            searched=searched,
            next_token=token,
            params=params,
            logged=bool(params.get("subject")),
        )

    async def _audit_entry(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        text = request.match_info["index"]
        if not _INDEX.fullmatch(text):
            raise InvalidArgument("The entry index must be a whole number (0, 1, 2, ...).")
        entry = await self._store.entry(int(text))
        checkpoint = await self._checkpoints.latest()
        if checkpoint.size <= entry.index:
            checkpoint = await self._checkpoints.sign_now()
        proof = await self._store.inclusion(entry.index, checkpoint.size)
        signed = open_checkpoint(
            checkpoint.note, [(self._origin, self._verifier)], origin=self._origin
        )
        verify_inclusion(leaf_hash(entry.leaf), entry.index, signed.size, proof, signed.root)
        if entry.subject_hmac is not None:
            await self._log_view(
                session.principal, session.officer, "audit.entry", entry.subject_hmac, "audit"
            )
        return self._page(
            request,
            "audit_entry.html",
            entry=entry,
            proof=proof,
            checkpoint=checkpoint,
            verifier_key=self._checkpoints.verifier_key,
        )

    async def _audit_export(self, request: web.Request) -> web.StreamResponse:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        fmt = request.match_info["fmt"]
        if fmt not in ("csv", "jsonl"):
            raise web.HTTPNotFound
        filters = await self._filters(request, session, "audit.export")
        stamp = self._clock.now().astimezone(self._zone).strftime("%Y%m%d-%H%M%S")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8"
                if fmt == "csv"
                else "application/jsonl; charset=utf-8",
                "Content-Disposition": f'attachment; filename="access-log-{stamp}.{fmt}"',
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        columns = list(_export_columns())
        if fmt == "csv":
            await response.write("\ufeff".encode() + _csv_line(columns))  # BOM: Excel reads UTF-8
        async for entry in self._store.export(filters):
            row = entry.to_dict()
            if fmt == "csv":
                row["fields"] = " ".join(entry.fields)
                await response.write(_csv_line([row[c] for c in columns]))
            else:
                await response.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
        await response.write_eof()
        return response

    async def _audit_verify_page(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        job = request.query.get("job", "")
        return self._page(
            request,
            "audit_verify.html",
            job=job if job in self._jobs else "",
            state=self._jobs.get(job),
        )

    async def _audit_verify_start(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        running = [k for k, j in self._jobs.items() if j.state == "running"]
        if running:  # one full check at a time per node
            raise web.HTTPSeeOther(f"/console/audit/verify?job={running[0]}")
        job_id = secrets.token_urlsafe(9)
        job = _VerifyJob()
        self._jobs = {job_id: job}  # keep only the latest result
        task = asyncio.get_running_loop().create_task(self._run_verify(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        raise web.HTTPSeeOther(f"/console/audit/verify?job={job_id}")

    async def _run_verify(self, job: _VerifyJob) -> None:
        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            await self._checkpoints.sign_now()
            report = await verify_log(
                self._pool, origin=self._origin, verifier=self._verifier, progress=progress
            )
        except TongbanError as e:
            job.state, job.message = (
                ("corrupt" if e.reason == "LOG_CORRUPT" else "failed"),
                e.message,
            )
            return
        except DRIVER_ERRORS as e:
            job.state, job.message = (
                "failed",
                f"The database could not be read ({type(e).__name__}).",
            )
            return
        job.state = "ok"
        job.done = job.total = report.size
        job.result = {
            "size": report.size,
            "checkpoints": report.checkpoints,
            "seconds": round(report.seconds, 2),
            "root": base64.b64encode(report.root).decode(),
        }

    async def _audit_verify_status(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return web.json_response({"state": "refused"}, status=auth.status)
        job = self._jobs.get(request.query.get("job", ""))
        if job is None:
            return web.json_response({"state": "unknown"}, status=404)
        t = translator(self._lang(request))
        text = (
            t("verifylog.ok", **job.result)
            if job.state == "ok"
            else t("verifylog.bad", message=job.message)
            if job.state in ("corrupt", "failed")
            else t("verifylog.running")
        )
        return web.json_response(
            {"state": job.state, "done": job.done, "total": job.total, "text": text},
            headers={"Cache-Control": "no-store"},
        )

    async def _audit_anomalies(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        end = _instant(request.query.get("to", ""), "to", self._zone) or self._clock.now()
        start = _instant(request.query.get("from", ""), "from", self._zone) or end - timedelta(
            days=1
        )
        if start >= end or end - start > MAX_PERIOD:
            raise InvalidArgument("The period must be 1 second to 31 days long.")
        found = await find_anomalies(self._pool, start=start, end=end)
        return self._page(request, "audit_anomalies.html", anomalies=found, start=start, end=end)

    async def _audit_volume(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        today = self._clock.now().astimezone(self._zone).date()
        first = today - timedelta(days=_VOLUME_DAYS - 1)
        series = await self._store.daily_volume(first, _VOLUME_DAYS, self._working_offset)
        days = [first + timedelta(days=i) for i in range(_VOLUME_DAYS)]
        return self._page(
            request, "audit_volume.html", chart=_chart(days, series), days=_VOLUME_DAYS
        )

    async def _audit_trail(self, request: web.Request) -> web.Response:
        """One case followed across exchanges (docs/federation.md, "One trail per
        case"): our entries of the case, and for each forwarded request the peer's entry
        checked under its signed checkpoint with the log key pinned for it. The look is
        logged."""
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        case_id = request.query.get("case", "").strip()
        if len(case_id) > MAX_CASE_ID or any(c in case_id for c in "\x00\r\n"):
            raise InvalidArgument(
                f"'case' is not a case id (at most {MAX_CASE_ID} characters, one line).",
                metadata={"field": "case"},
            )
        trail = None
        if case_id:
            await self._log_view(
                session.principal, session.officer, "audit.trail", None, f"trail case={case_id}"
            )
            trail = await self._trails(case_id) if self._trails is not None else None
            if trail is None:
                local, _ = await self._store.search(SearchFilters(case_id=case_id), page_size=_PAGE)
                trail = CaseTrail(case_id, tuple(local), ())
        return self._page(request, "audit_trail.html", case_id=case_id, trail=trail)

    async def _audit_covert(self, request: web.Request) -> web.Response:
        """The covert cases (the declaration in force of each); the look is logged."""
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        department = request.query.get("department", "").strip()
        if len(department) > 63:
            raise InvalidArgument(
                "'department' is too long: a department code has at most 63 characters.",
                metadata={"field": "department"},
            )
        include_ended = request.query.get("all", "") == "1"
        now = self._clock.now()
        cases, token = await self._covert.list_cases(
            now=now,
            department=department or None,
            include_ended=include_ended,
            page_size=_PAGE,
            page_token=request.query.get("page", ""),
        )
        described = f"covert cases department={department}" if department else "covert cases"
        await self._log_view(
            session.principal,
            session.officer,
            "audit.covert",
            None,
            described + (" include_ended" if include_ended else ""),
        )
        params = {"department": department, "all": "1" if include_ended else ""}
        return self._page(
            request,
            "audit_covert.html",
            cases=cases,
            now=now,
            next_token=token,
            params={k: v for k, v in params.items() if v},
        )


def _export_columns() -> tuple[str, ...]:
    return (
        "index", "at", "node", "caller", "officer", "action", "dataset", "fields", "purpose",
        "case_id", "subject_hmac", "decision", "reason", "leaf",
    )  # fmt: skip


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell a spreadsheet will not run: one starting with = + - @ tab or CR gets a
    leading apostrophe (OWASP's rule for CSV injection). The log entry keeps the
    original; only the export's cell changes."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_line(values: Sequence[object]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else spreadsheet_safe(v) for v in values])
    return out.getvalue().encode()


def _chart(days: list[Any], series: dict[str, list[int]]) -> dict[str, Any]:
    """Lines of an inline SVG chart: one polyline per department, scaled to 640 by 240."""
    width, height, left, bottom = 640, 240, 40, 24
    top = max((max(v) for v in series.values()), default=0) or 1
    step = (width - left - 10) / max(len(days) - 1, 1)

    def x(i: int) -> float:
        return round(left + i * step, 1)

    def y(n: int) -> float:
        return round(height - bottom - n * (height - bottom - 10) / top, 1)

    lines = [
        {
            "name": name,
            "colour": _COLOURS[i % len(_COLOURS)],
            "points": " ".join(f"{x(j)},{y(n)}" for j, n in enumerate(counts)),
            "total": sum(counts),
        }
        for i, (name, counts) in enumerate(sorted(series.items()))
    ]
    ticks = [{"x": x(i), "label": d.strftime("%m-%d")} for i, d in enumerate(days) if i % 2 == 0]
    return {
        "width": width,
        "height": height,
        "lines": lines,
        "ticks": ticks,
        "top": top,
        "y_top": y(top),
        "y_zero": y(0),
        "left": left,
    }
