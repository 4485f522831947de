"""Errors that carry a message meant for people, not a traceback.

Every layer (CLI, API, worker) turns a `KdauditError` into a one-line message
(`kdaudit: <context>: <message>`) or an RFC 9457 problem document; anything else is a bug.
"""


class KdauditError(Exception):
    """Base class for failures whose message is safe and useful to show a user."""

    context = "error"


class InputError(KdauditError):
    """The user asked for something that cannot work (bad option, unknown dataset...)."""

    context = "invalid input"


class CheckpointError(KdauditError):
    """A teacher file could not be loaded or does not match its declared architecture."""

    context = "cannot load teacher"


class DataError(KdauditError):
    """A dataset is missing or malformed."""

    context = "cannot load data"


class CancelledError(KdauditError):
    """The audit was cancelled by its owner; raised between epochs."""

    context = "cancelled"


class RemoteTeacherError(InputError):
    """A remote teacher refused a request (HTTP 4xx other than 429) or answered something that
    is not a valid response. Not retried: asking again would get the same answer."""

    context = "remote teacher"


class TeacherUnavailableError(KdauditError):
    """A remote teacher kept failing (connection errors, timeouts, 5xx, 429) after every retry."""

    context = "remote teacher"
