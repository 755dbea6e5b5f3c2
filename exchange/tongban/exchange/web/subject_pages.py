"""The data subject's pages: who accessed my data, my cases and packages, authorisations
and ratings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.authorisations import HolderAuthorisation, authorise
from tongban.exchange.licensing.errors import ServiceItemUnknown
from tongban.exchange.licensing.package_store import OpenedPackage
from tongban.exchange.licensing.packages import Step
from tongban.exchange.licensing.ratings import Rating
from tongban.exchange.web.base import ConsoleBase, _form
from tongban.exchange.web.catalogue_pages import _in_order
from tongban.exchange.web.i18n import translator

__all__ = ["SubjectPages"]


class SubjectPages(ConsoleBase):
    """/console/subject and /console/rate/..."""

    # ---- subject and catalogue -------------------------------------------------------------

    async def _subject(self, request: web.Request) -> web.Response:
        return await self._subject_page(request)

    async def _subject_page(
        self,
        request: web.Request,
        *,
        made: tuple[str, HolderAuthorisation] | None = None,
        rated: Rating | None = None,
    ) -> web.Response:
        t = translator(self._lang(request))
        session = self._session(request)
        if session is None or session.kind != "subject":
            return self._message(
                request, 401, t("login.required").split("（")[0].split(" (")[0],
                reason="LINK_REQUIRED",
            )  # fmt: skip
        subject = self._hasher(session.principal)
        # The view itself is logged first, so it is part of what the subject sees.
        await self._log_view("subject", None, "subject.view", subject, "subject view")
        accesses, token, withheld = await self._store.subject_accesses(
            subject, self._clock.now(), page_size=1000, page_token=request.query.get("page", "")
        )
        departments = [d for d in await self._departments.list() if d.status.value == "active"]
        return self._page(
            request,
            "subject.html",
            subject_id=session.principal,
            accesses=accesses,
            withheld=withheld,
            next_token=token,
            authorisations=await self._licensing.authorisations.of_holder(session.principal),
            departments=departments,
            licence_types=list(self._licensing.registry),
            made=made,
            now=self._clock.now(),
            cases=await self._applicant_cases(session.principal),
            **await self._applicant_packages(session.principal),
            ratings=await self._ratings.of_applicant(session.principal) if self._ratings else {},
            rated=rated,
            rating_enabled=self._ratings is not None,
        )

    async def _applicant_cases(self, applicant: str) -> list[dict[str, Any]]:
        """The applicant's cases with their due dates as they stand and how overdue they
        are (进度查询)."""
        if self._cases is None:
            return []
        now = self._clock.now()
        clock = self._cases.clock
        shown = []
        for case in await self._cases.of_applicant(applicant):
            promised, legal, _ = clock.current_due(case, now)
            shown.append(
                {
                    "case": case,
                    "promised": promised,
                    "legal": legal,
                    "overdue": clock.overdue(case, now).name.lower(),
                }
            )
        return shown

    async def _applicant_packages(self, applicant: str) -> dict[str, Any]:
        """The packages (一件事) opened for the applicant, newest first, with each step's
        item name (进度查询): ``packages`` (package, steps in order) and ``item_names``."""
        if self._packages is None:
            return {"packages": [], "item_names": {}}
        opened = await self._packages.of_applicant(applicant)
        names = await self._item_names({s.item for p in opened for s in p.steps})
        shown: list[tuple[OpenedPackage, list[Step]]] = [(p, _in_order(p.steps)) for p in opened]
        return {"packages": shown, "item_names": names}

    async def _item_names(self, codes: set[str]) -> dict[str, str]:
        """Item code to its current name, for the codes still in the catalogue."""
        names: dict[str, str] = {}
        if self._items is None:
            return names
        for code in sorted(codes):
            try:
                names[code] = (await self._items.get(code)).spec.name
            except ServiceItemUnknown:
                continue  # the code alone is shown
        return names

    async def _subject_authorise(self, request: web.Request) -> web.Response:
        """The holder makes a one-time authorisation code (授权用证) for one department,
        purpose and case; the page shows it once."""
        t = translator(self._lang(request))
        session = self._session(request)
        if session is None or session.kind != "subject":
            return self._message(request, 401, t("login.required"), reason="LINK_REQUIRED")
        form = await _form(request)
        hours = str(form.get("hours", "24")).strip()
        licence_type = str(form.get("licence_type", "")).strip() or None
        if licence_type is not None:
            self._licensing.registry.get(licence_type)  # LicenceTypeUnknown: a 400 page
        if not hours.isdigit() or not 1 <= int(hours) <= 720:
            raise InvalidArgument(
                "Give how long the code stays valid: 1 to 720 hours.", metadata={"field": "hours"}
            )
        made = await authorise(
            self._pool, self._log, self._hasher, node=self._node, by="subject",
            holder_id=session.principal, department=str(form.get("department", "")),
            purpose=str(form.get("purpose", "")), case_id=str(form.get("case_id", "")),
            licence_type=licence_type, valid_for=timedelta(hours=int(hours)),
            now=self._clock.now(),
        )  # fmt: skip
        return await self._subject_page(request, made=made)

    async def _subject_rate(self, request: web.Request) -> web.Response:
        """The signed-in applicant rates a decided case of theirs (好差评), or rates it again
        after the department answered its rectification."""
        t = translator(self._lang(request))
        session = self._session(request)
        if session is None or session.kind != "subject":
            return self._message(request, 401, t("login.required"), reason="LINK_REQUIRED")
        if self._ratings is None:
            raise web.HTTPNotFound
        form = await _form(request)
        rating = await self._ratings.rate(
            session.principal,
            str(form.get("case", "")),
            str(form.get("score", "")),
            str(form.get("comment", "")),
            self._clock.now(),
        )
        return await self._subject_page(request, rated=rating)

    async def _rate_page(self, request: web.Request) -> web.Response:
        """A decision's one-time rating link: GET shows the case and the form, POST rates
        (spending the link)."""
        if self._ratings is None:
            raise web.HTTPNotFound
        token = request.match_info["token"]
        now = self._clock.now()
        if request.method == "POST":
            form = await _form(request)
            rating = await self._ratings.rate_by_link(
                token, str(form.get("score", "")), str(form.get("comment", "")), now
            )
            return self._page(request, "rate.html", case=None, rating=rating, token="")
        case = await self._ratings.link_case(token, now)
        names = await self._item_names({case.item})
        return self._page(
            request, "rate.html", case=case, rating=None, token=token, item_name=names
        )
