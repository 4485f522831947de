"""The threat model an audit of a *remote* teacher implies, checked when the audit is submitted.

A remote teacher (registered by URL, no file) reveals only what its endpoint answers: logits,
probabilities or labels. An audit of it attacks through that output by default, and an attack
or output policy the endpoint cannot serve is refused with 422 now, rather than by the worker
after it has started querying the tenant's endpoint.

The rules themselves are the engine's, written once: which output policies an endpoint can
serve (distill/access.py `check_against_response`, as the runner's pre-flight check) and which
attacks a remote teacher can face (distill/planning/threat.py `check_threat`, as the config's
validation and the runner). This module only turns their refusals into problem answers.
"""

from __future__ import annotations

from typing import Any

from kdaudit.core.errors import KdauditError
from kdaudit.service.problems import Problem
from kdaudit.store import remote_teachers as rt
from kdaudit.store.files import FileStore
from kdaudit.store.models import Teacher

#: the output policy an audit of a remote teacher takes by default: what its endpoint reveals
_REMOTE_OUTPUT = {"logits": "logits", "probabilities": "probs", "labels": "label"}


def apply_remote_threat(kwargs: dict[str, Any], teacher: Teacher, files: FileStore) -> None:
    """For a remote teacher's audit request (`kwargs`: the AuditConfig fields so far): default
    `threat.output` to what the endpoint reveals, and refuse (422) output policies and attacks
    that its answers cannot serve."""
    doc = rt.load_spec_doc(files, teacher.id)
    if doc is None:
        raise Problem(422, f"teacher {teacher.id}'s remote settings are missing from the file store; register it again",
                      slug="invalid-remote-teacher")  # fmt: skip
    response = str(doc.get("response", "logits"))
    kwargs.setdefault("threat", {}).setdefault("output", _REMOTE_OUTPUT.get(response, "logits"))
    from kdaudit.distill.access import OutputPolicy, check_against_response
    from kdaudit.distill.planning import check_threat

    try:  # refused now, before the worker sends the endpoint a single query
        for spec in [kwargs["threat"]["output"], *((kwargs.get("sweep") or {}).get("outputs") or [])]:
            check_against_response(OutputPolicy.parse(str(spec)), response)
        check_threat(kwargs, response=response, remote=True)  # grey-box attacks; score-hungry ones on labels
    except KdauditError as e:
        raise Problem(422, str(e), slug="validation-error") from None
