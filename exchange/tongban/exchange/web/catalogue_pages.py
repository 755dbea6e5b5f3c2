"""The catalogue, the service items and the supervision pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, timezone
from typing import Any

from aiohttp import web

from tongban.exchange.errors import DepartmentNotFound, InvalidArgument
from tongban.exchange.licensing.items import (
    DataSource,
    LicenceSource,
    Material,
    ServiceItem,
)
from tongban.exchange.licensing.packages import Step
from tongban.exchange.licensing.supervision import (
    SupervisionRow,
    month_range,
    supervision_report,
)
from tongban.exchange.licensing.supervision_cases import (
    SupervisedCaseKind,
)
from tongban.exchange.sharing.model import ShareClass
from tongban.exchange.web.base import _COLOURS, _PAGE, ConsoleBase
from tongban.licence import BUILTIN_REGISTRY

__all__ = ["CataloguePages"]


class CataloguePages(ConsoleBase):
    """/console/catalogue, /console/items and /console/supervision..."""

    async def _catalogue(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=False)
        if isinstance(auth, web.Response):
            return auth
        _, department = auth
        q = request.query
        share = q.get("class", "")
        try:
            share_class = ShareClass(share) if share else None
        except ValueError:
            raise InvalidArgument("Choose a share class from the list.") from None
        datasets, token = await self._sharing.datasets.search(
            department.code,
            keyword=q.get("keyword", "").strip() or None,
            owner=q.get("owner", "").strip() or None,
            share_class=share_class,
            page_size=_PAGE,
            page_token=q.get("page", ""),
        )
        now = self._clock.now()
        pending = [
            g
            for g in await self._sharing.grants.list(caller=department.code, now=now)
            if g.status.value == "pending"
        ]
        return self._page(
            request,
            "catalogue.html",
            datasets=datasets,
            next_token=token,
            department=department,
            pending=pending,
            now=now,
        )

    async def _item_catalogue(self, request: web.Request) -> web.Response:
        """The service items (事项目录): what each asks for and where each material comes
        from. For departments, as the dataset catalogue is: the material sources name the
        datasets and fields a case looks up."""
        auth = await self._department_session(request, auditor=False)
        if isinstance(auth, web.Response):
            return auth
        if self._items is None:
            raise web.HTTPNotFound
        department = request.query.get("department", "").strip()
        if len(department) > 63:
            raise InvalidArgument(
                "'department' is too long: a department code has at most 63 characters.",
                metadata={"field": "department"},
            )
        items, token = await self._items.list(
            department=department, page_size=_PAGE, page_token=request.query.get("page", "")
        )
        names = {d.code: d.name for d in await self._departments.list()}
        # The packages (一件事) coordinated by the department asked for (all of them
        # without one), on the first page: each step's item links to its entry above.
        packages = (
            await self._packages.list_current(department=department)
            if self._packages is not None and not request.query.get("page")
            else []
        )
        return self._page(
            request,
            "items.html",
            items=[_item_view(item) for item in items],
            packages=packages,
            department_names=names,
            next_token=token,
            params={"department": department} if department else {},
        )

    async def _supervision(self, request: web.Request) -> web.Response:
        """The supervision report (电子监察) for auditors: a chart and the figures per
        department and month the cases were opened in (docs/supervision.md). By default
        the last 12 months; the counts name nobody, so the view is not logged."""
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        department = request.query.get("department", "").strip()
        if len(department) > 63:
            raise InvalidArgument(
                "'department' is too long: a department code has at most 63 characters.",
                metadata={"field": "department"},
            )
        now = self._clock.now()
        first, last = month_range(
            request.query.get("from", ""), request.query.get("to", ""), fields=("from", "to")
        )
        if first is None and last is None:
            last = now.astimezone(timezone(self._working_offset)).date().replace(day=1)
            first = date(last.year - (last.month < 12), last.month % 12 + 1, 1)
        if department and await self._departments.find(department) is None:
            raise DepartmentNotFound(f"No department {department!r} is registered.")
        report = await supervision_report(
            self._pool,
            now=now,
            offset=self._working_offset,
            department=department or None,
            first_month=first,
            last_month=last,
        )
        by_department: dict[str, list[SupervisionRow]] = {}
        for row in report.rows:
            by_department.setdefault(row.department, []).append(row)
        return self._page(
            request,
            "supervision.html",
            now=now,
            first=first.strftime("%Y-%m") if first else "",
            last=last.strftime("%Y-%m") if last else "",
            charts=[
                {"department": code, "rows": rows, "chart": _month_bars(rows)}
                for code, rows in by_department.items()
            ],
        )

    async def _supervision_cases(self, request: web.Request) -> web.Response:
        """The cases behind a figure of the supervision report (auditors): decided late,
        past the legal date, or sent to 补正 more than once, of a department and month
        opened, a page at a time with the node's page tokens. They name applicants: each
        view is one access-log entry (``case.supervision``), written by the reader."""
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, reader = auth
        department = request.query.get("department", "").strip()
        if len(department) > 63:
            raise InvalidArgument(
                "'department' is too long: a department code has at most 63 characters.",
                metadata={"field": "department"},
            )
        word = request.query.get("kind", "")
        kind = next((k for k in SupervisedCaseKind if k.value == word), None)
        month = request.query.get("month", "")
        page = await self._supervised.cases(
            reader,
            session.officer,
            kind,
            department,
            month,
            page_size=_PAGE,
            page_token=request.query.get("page", ""),
            now=self._clock.now(),
        )
        params = {"kind": word}
        if department:
            params["department"] = department
        if month.strip():
            params["month"] = month.strip()
        return self._page(
            request,
            "supervision_cases.html",
            kind=word,
            cases=page.cases,
            next_token=page.next_page_token,
            params=params,
        )


def _month_bars(rows: Sequence[SupervisionRow]) -> dict[str, Any]:
    """A stacked bar per month, scaled to 640 by 200: decided within the promised limit,
    decided late, and open past a due date now (overdue)."""
    width, height, left, bottom, top_gap = 640, 200, 40, 24, 10
    series: tuple[tuple[str, str, Callable[[SupervisionRow], int]], ...] = (
        ("within", _COLOURS[2], lambda r: r.decided_within_promised),
        ("late", _COLOURS[3], lambda r: r.decided_late),
        ("overdue", _COLOURS[1], lambda r: r.overdue_promised + r.overdue_legal),
    )
    top = max((sum(f(r) for _, _, f in series) for r in rows), default=0) or 1
    slot = (width - left - 10) / max(len(rows), 1)
    bar = min(40.0, slot * 0.7)
    scale = (height - bottom - top_gap) / top
    bars = []
    for i, row in enumerate(rows):
        x = round(left + i * slot + (slot - bar) / 2, 1)
        base = float(height - bottom)
        parts = []
        for name, colour, count in series:
            n = count(row)
            if n:
                h = round(n * scale, 1)
                base -= h
                parts.append({"name": name, "colour": colour, "y": round(base, 1), "h": h, "n": n})
        bars.append(
            {
                "x": x,
                "w": round(bar, 1),
                "cx": round(x + bar / 2, 1),
                "month": row.month,
                "parts": parts,
            }
        )
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "y_top": top_gap,
        "y_zero": height - bottom,
        "bars": bars,
        "series": [(name, colour) for name, colour, _ in series],
    }


def _in_order(steps: Sequence[Step]) -> list[Step]:
    """The steps in the order they can be handled: those waiting for nothing first, then
    those after them, and so on (by item code within a level)."""
    after = {s.item: s.after for s in steps}
    depth: dict[str, int] = {}

    def level(item: str, seen: frozenset[str] = frozenset()) -> int:
        # ``seen``: packages are checked for cycles when registered; a bad row must
        # still not recurse forever on a page.
        if item not in depth:
            earlier = [a for a in after.get(item, ()) if a in after and a not in seen]
            depth[item] = 1 + max((level(a, seen | {item}) for a in earlier), default=-1)
        return depth[item]

    return sorted(steps, key=lambda s: (level(s.item), s.item))


def _material_view(material: Material) -> dict[str, Any]:
    """A material with its source spelled out for the item catalogue page."""
    source = material.source
    if isinstance(source, LicenceSource):
        return {
            "m": material,
            "kind": "licence",
            "licence_type": source.licence_type,
            "type_names": _type_names(source.licence_type),
            "names": source.disclose,
        }
    if isinstance(source, DataSource):
        return {
            "m": material,
            "kind": "dataset",
            "dataset": source.dataset,
            "names": source.fields,
            "key_from": source.key_from,
        }
    return {"m": material, "kind": "submitted"}


def _item_view(item: ServiceItem) -> dict[str, Any]:
    issues = item.spec.issues_licence
    return {
        "item": item,
        "issues": issues,
        "issues_names": _type_names(issues) if issues else ("", ""),
        "materials": [_material_view(m) for m in item.spec.materials],
    }


def _type_names(code: str) -> tuple[str, str]:
    """(Chinese, English) names of a licence type, or the code twice if unknown."""
    known = {t.code: t for t in BUILTIN_REGISTRY}
    kind = known.get(code)
    return (kind.name_zh, kind.name_en) if kind is not None else (code, code)
