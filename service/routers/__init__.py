"""The /v1 API, one router per resource (wired in service/app.py, in the order of `ROUTERS`).

    selftest.py   POST/GET /v1/selftest            operators: the bundled self-test on a worker
    compare.py    POST /v1/compare                 diff two reports
    teachers.py   /v1/teachers[/remote|/{id}]      upload, register remote, list, read, delete
    audits.py     /v1/audits[/{id}[/cancel]]       submit, list, poll, cancel, delete
    defences.py   POST /v1/defences                submit a defence comparison (an audit of kind 'defend')
    reports.py    GET /v1/audits/{id}/report       the stored report (JSON)
    events.py     GET /v1/events                   the tenant's access trail
    keys.py       /v1/keys[/{id}]                  list and revoke API keys

Shared by them: base.py (router factory, error docs, id types, the transaction rule),
ownership.py ("yours, or 404"; delete-or-409), pagination.py. Request handling too large for
a router lives beside it: teacher_upload.py, remote_registration.py, audit_request.py.
The web UI and the HTML report are service/web.py.
"""

from __future__ import annotations

from kdaudit.service.routers import audits, compare, defences, events, keys, reports, selftest, teachers

#: The order matters only where two routes share a path template (e.g. GET and DELETE
#: /v1/teachers/{id}): the first one found answers a 405 with its `Allow` header. It keeps the
#: order these routes had before the split into one router per resource.
ROUTERS = (
    selftest.router,
    compare.router,
    teachers.router,
    audits.router,
    defences.router,
    reports.router,
    events.router,
    keys.router,
)
