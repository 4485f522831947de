"""Repository functions: every read and write the service and the workers make.

Each mutating function commits its own transaction, and every state transition is a
compare-and-set UPDATE, so two processes can never both run the same audit. One module per
resource, one for the worker lease that audits and parts share:

* `tenants`, `keys`, `teachers`: accounts, API keys, uploaded teachers;
* `audits`: submit (idempotent, under the active-audit limit), read, list, cancel;
* `lease`: claim / heartbeat / release / reclaim of a running row, written once;
* `running`: a whole audit in a worker (the lease applied to the audit row), its report;
* `parts`: a split audit's parts (the lease applied per part, the audit following);
* `assembly`: the one process that assembles a split audit's report;
* `runs`: finished training runs, what a resumed audit skips;
* `sweep`: audits and parts nobody is working on, to dispatch again;
* `paging`: one page of a tenant's list with its total.

`plan_parts` (how an audit's seeds are split into parts) is the engine's planning rule
(kdaudit.distill.planning.parts); it is re-exported here for the callers that submit audits.

Callers import this package (`from kdaudit.store import repo`; `repo.claim_audit(...)`); the
names below are its whole public surface.
"""

from kdaudit.distill.planning.parts import plan_parts, split_seeds
from kdaudit.store.repo.assembly import claim_assembly
from kdaudit.store.repo.audits import (
    ActiveLimit,
    IdempotencyConflict,
    count_active,
    count_by_status,
    create_audit,
    delete_audit,
    get_audit,
    get_by_idempotency_key,
    get_report,
    is_finished,
    is_split,
    list_audits,
    poll_audit,
    request_cancel,
    request_fingerprint,
)
from kdaudit.store.repo.keys import KEY_PREFIX, create_api_key, hash_key, revoke_key, tenant_for_key
from kdaudit.store.repo.lease import Claim
from kdaudit.store.repo.parts import (
    claim_part,
    finish_part,
    get_part,
    list_parts,
    part_heartbeat,
    should_stop_part,
    update_part_progress,
)
from kdaudit.store.repo.running import (
    claim_audit,
    fail_unclaimed,
    finish_audit,
    heartbeat,
    should_stop,
    store_report,
    update_progress,
)
from kdaudit.store.repo.runs import done_runs, list_runs, record_run
from kdaudit.store.repo.sweep import Sweep, orphaned_audits, sweep_orphans
from kdaudit.store.repo.teachers import add_teacher, get_teacher, list_teachers
from kdaudit.store.repo.tenants import get_or_create_tenant

__all__ = [
    "KEY_PREFIX",
    "ActiveLimit",
    "Claim",
    "IdempotencyConflict",
    "Sweep",
    "add_teacher",
    "claim_assembly",
    "claim_audit",
    "claim_part",
    "count_active",
    "count_by_status",
    "create_api_key",
    "create_audit",
    "delete_audit",
    "done_runs",
    "fail_unclaimed",
    "finish_audit",
    "finish_part",
    "get_audit",
    "poll_audit",
    "get_by_idempotency_key",
    "get_or_create_tenant",
    "get_part",
    "get_report",
    "get_teacher",
    "hash_key",
    "heartbeat",
    "is_finished",
    "is_split",
    "list_audits",
    "list_parts",
    "list_runs",
    "list_teachers",
    "orphaned_audits",
    "part_heartbeat",
    "plan_parts",
    "record_run",
    "request_cancel",
    "request_fingerprint",
    "revoke_key",
    "should_stop",
    "should_stop_part",
    "split_seeds",
    "store_report",
    "sweep_orphans",
    "tenant_for_key",
    "update_part_progress",
    "update_progress",
]
