"""A legacy SOAP service for the adapter tests (spyne, served by wsgiref).

Run as a subprocess: ``python -m tests.adapters.soap_service``; it prints its port on
the first line of stdout and serves until killed. It runs apart from the test process
because importing spyne installs six's import hook, which makes later failing imports
warn (an error under the tests' ``-W error``).

``ListPermits(page, size)`` pages through 25 permits plus those saved; ``ListBroken``
always answers with a fault; ``SavePermit(number, holder, op)`` stores or deletes a
permit and answers a fault for the holder ``注销企业`` (the legacy system's own rule).
"""

from __future__ import annotations

import warnings
from wsgiref.simple_server import WSGIRequestHandler, make_server

with warnings.catch_warnings():
    # spyne imports six, whose import hook lacks find_spec on Python 3.11.
    warnings.simplefilter("ignore")
    from spyne import Application, Array, ComplexModel, Fault, Integer, ServiceBase, Unicode, rpc
    from spyne.protocol.soap import Soap11
    from spyne.server.wsgi import WsgiApplication

PERMITS: dict[str, dict[str, str]] = {
    f"JY{n:05d}": {"number": f"JY{n:05d}", "holder": f"餐饮店{n}", "issued": "2026-01-05"}
    for n in range(1, 26)
}


class Permit(ComplexModel):  # type: ignore[misc]
    __namespace__ = "urn:legacy:permits"
    number = Unicode
    holder = Unicode
    issued = Unicode


class PermitService(ServiceBase):  # type: ignore[misc]
    @rpc(Integer, Integer, _returns=Array(Permit))
    def ListPermits(ctx, page, size):  # type: ignore[no-untyped-def]
        ordered = [PERMITS[k] for k in sorted(PERMITS)]
        start = (page - 1) * size
        return [Permit(**p) for p in ordered[start : start + size]]

    @rpc(Integer, Integer, _returns=Array(Permit))
    def ListBroken(ctx, page, size):  # type: ignore[no-untyped-def]
        raise Fault(faultcode="Server.Database", faultstring="数据库维护中")

    @rpc(Unicode, Unicode, Unicode, _returns=Unicode)
    def SavePermit(ctx, number, holder, op):  # type: ignore[no-untyped-def]
        if holder == "注销企业":
            raise Fault(faultcode="Client.Refused", faultstring="该企业已注销，不予登记")
        if op == "delete":
            PERMITS.pop(number, None)
        else:
            PERMITS[number] = {"number": number, "holder": holder, "issued": "2026-11-02"}
        return "ok"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    app = Application(
        [PermitService], "urn:legacy:permits", in_protocol=Soap11(), out_protocol=Soap11()
    )
    server = make_server("127.0.0.1", 0, WsgiApplication(app), handler_class=_Quiet)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
