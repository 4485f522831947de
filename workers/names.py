"""Task names, shared by the API (which enqueues by name), the sweep and the workers.

Importing this module has no side effects (`kdaudit.workers.app` builds a Celery app on import).
"""

TASK_RUN_AUDIT = "kdaudit.run_audit"
#: one part of an audit split across workers (args: audit id, part number); see store/repo.py
TASK_RUN_PART = "kdaudit.run_audit_part"
#: assemble a split audit's report once its parts all succeeded (sent by the orphan sweep only:
#: normally the last part to finish assembles in place)
TASK_ASSEMBLE = "kdaudit.assemble_audit"
#: the operator self-test (args: run id): trains a tiny digits audit on a worker, never in the API
TASK_SELFTEST = "kdaudit.selftest"
TASKS = (TASK_RUN_AUDIT, TASK_RUN_PART, TASK_ASSEMBLE, TASK_SELFTEST)
