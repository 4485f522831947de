"""A teacher behind an HTTP prediction API: the threat model of a thief who never sees weights.

`RemoteTeacher` is an `nn.Module` whose forward sends the images to a URL and turns the answers
into a tensor the KD losses consume as logits. It has no parameters, no features and no
gradient (`is_remote = True`, `has_features = False`), so only black-box attacks run on it.

Wire protocol (version 1; `kdaudit serve-teacher` speaks it, see kdaudit/teacher_server.py):

* Request: ``POST <url>`` with ``Content-Type: application/json`` and the body
  ``{"inputs": [[[[x, ...]]]], "shape": [N, C, H, W]}``: a nested N x C x H x W list of the
  teacher's float32 inputs under its declared preprocessing contract (distill/preprocess.py;
  by default pixels in [0, 1] standardised with the dataset's statistics), at most `max_batch`
  images per request.
* Response (HTTP 200, JSON), by `response` kind:

  - ``logits``: ``{"outputs": N x num_classes numbers}``, returned as they are;
  - ``probabilities``: ``{"outputs": N x num_classes numbers}`` in [0, 1], each row summing to
    at most 1 (+1e-3; partial top-k rows are fine) and more than 0; returned as log(p), with
    -inf where p == 0: softmax(log p) = p renormalised, so the KD losses see the API's scores;
  - ``labels``: ``{"labels": [N ints]}``; returned as 0 at the label and -inf elsewhere
    (softmax is the one-hot vector, the hardest thief setting).

  -inf entries are fine for the KL-based losses (zero-probability targets contribute 0); a
  loss on raw logit differences (DFAD's L1) needs ``logits``.

A teacher behind HTTP is a teacher like an ONNX file (models/checkpoints/onnx_teacher.py): it lives with the
models, below the engine, and imports nothing of it.

Failures: connection errors, timeouts, HTTP 5xx and 429 are retried with exponential backoff
(``backoff_s * 2**attempt``, capped at 30 s; a numeric ``Retry-After`` is honoured, same cap),
and after ``max_retries`` retries raise `TeacherUnavailableError`. Any other non-2xx status and
any malformed answer (not JSON, wrong key or shape, non-finite values, labels out of range)
raise `RemoteTeacherError` (an `InputError`) at once: asking again would get the same answer.

Counting: `images_answered` grows only when a response is accepted, so a chunk that needed
three attempts counts once; `requests_sent` and `requests_failed` count every attempt. The
headers (API keys) never appear in messages, reprs or `public_dict()`; neither does a query
string. Responses are parsed as JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from kdaudit import __version__
from kdaudit.core.errors import RemoteTeacherError, TeacherUnavailableError

RemoteResponse = Literal["logits", "probabilities", "labels"]

#: longest wait between two attempts, whatever the backoff or Retry-After says
MAX_BACKOFF_S = 30.0
#: slack on a probability row's sum (float32 rounding in the API's softmax)
PROB_SUM_TOL = 1e-3


class RemoteTeacherSpec(BaseModel):
    """Where the teacher lives and how patiently to ask it. Safe to store without `headers`."""

    model_config = ConfigDict(extra="forbid")

    url: str
    response: RemoteResponse = "logits"
    timeout_s: float = Field(10.0, gt=0, le=600)
    max_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(0.5, ge=0, le=MAX_BACKOFF_S)
    #: most requests in flight at once
    concurrency: int = Field(4, ge=1, le=64)
    #: most images in one request
    max_batch: int = Field(256, ge=1, le=65536)
    #: sent with every request (e.g. an API key); never logged, shown or stored in reports
    headers: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain credentials (user:password@); send them in headers")
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        try:
            _ = parts.port  # raises on a non-numeric or out-of-range port
        except ValueError as e:
            raise ValueError(f"has an invalid port ({e})") from None
        return v.strip()

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not k or any(c in k for c in "\r\n: ") or any(c in val for c in "\r\n"):
                raise ValueError("header names must be non-empty tokens and no name or value may contain a line break")
        return v

    def __repr_args__(self) -> Any:
        # repr/str (logs, tracebacks) show the public URL; headers are repr=False
        for k, v in super().__repr_args__():
            yield k, (self.public_url() if k == "url" else v)

    def public_url(self) -> str:
        """The URL without its query string, which may carry a key (``?key=...``)."""
        parts = urlsplit(self.url)
        base = f"{parts.scheme}://{parts.netloc}{parts.path}"
        return base + ("?<redacted>" if parts.query else "")

    def public_dict(self) -> dict[str, Any]:
        """What a report may show: everything but the headers, and the URL without its query."""
        d = self.model_dump(exclude={"headers"})
        d["url"] = self.public_url()
        return d


class _Exhausted(Exception):
    """Internal: one chunk used up its retries; `reason` is the last failure, e.g. 'HTTP 503'."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Stopped(Exception):
    """Internal: another chunk failed, so this one gave up without asking again."""


@dataclass
class _Call:
    """State shared by the chunks of one forward call."""

    total: int
    answered: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def _excerpt(text: str, n: int = 200) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1] + "…"


class RemoteTeacher(nn.Module):
    """A black-box teacher answered by an HTTP endpoint (protocol in the module docstring)."""

    is_remote = True
    has_features = False

    def __init__(self, spec: RemoteTeacherSpec, num_classes: int):
        super().__init__()
        if not isinstance(num_classes, int) or not 1 <= num_classes <= 100_000:
            raise RemoteTeacherError(f"num_classes must be an integer between 1 and 100000, not {num_classes!r}")
        self.spec = spec
        self.num_classes = num_classes
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._requests_sent = 0
        self._requests_failed = 0
        self._images_answered = 0

    # -- counters (read under the lock: workers update them concurrently) --------------------
    @property
    def requests_sent(self) -> int:
        with self._lock:
            return self._requests_sent

    @property
    def requests_failed(self) -> int:
        with self._lock:
            return self._requests_failed

    @property
    def images_answered(self) -> int:
        with self._lock:
            return self._images_answered

    def extra_repr(self) -> str:
        return f"url={self.spec.public_url()!r}, response={self.spec.response!r}, num_classes={self.num_classes}"

    def close(self) -> None:
        """Close the pooled connections (a later forward opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _http(self) -> httpx.Client:
        # Created lazily so that constructing a teacher opens nothing; one pool, reused by
        # every forward call (keep-alive matters: DFAD asks hundreds of times).
        with self._lock:
            if self._client is None:
                s = self.spec
                self._client = httpx.Client(
                    timeout=httpx.Timeout(s.timeout_s),
                    limits=httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency),
                    follow_redirects=False,
                    headers={"User-Agent": f"kdaudit/{__version__}", **s.headers},
                )
            return self._client

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise RemoteTeacherError(f"remote teacher expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        n = arr.shape[0]
        if n == 0:
            return torch.zeros(0, self.num_classes, device=x.device)
        if not np.isfinite(arr).all():
            raise RemoteTeacherError("inputs contain NaN or infinite values, which JSON cannot carry")
        b = self.spec.max_batch
        chunks = [arr[i : i + b] for i in range(0, n, b)]
        call = _Call(total=n)
        results: list[np.ndarray | None] = [None] * len(chunks)

        def job(i: int) -> None:
            try:
                results[i] = self._ask(chunks[i], call)
            except BaseException:
                call.stop.set()  # at once, so that no other worker starts its next chunk
                raise

        workers = min(self.spec.concurrency, len(chunks))
        if workers == 1:
            try:
                for i in range(len(chunks)):
                    job(i)
            except _Exhausted as e:
                raise self._unavailable(e.reason, call) from None
        else:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-teacher")
            futures = []
            try:
                futures = [pool.submit(job, i) for i in range(len(chunks))]
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                # after the first failure (or Ctrl-C) no chunk starts or retries; requests
                # already in flight finish, and count if they were answered
                call.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
            real = [e for e in errors if not isinstance(e, _Stopped)]
            if real:
                first = real[0]
                if isinstance(first, _Exhausted):
                    raise self._unavailable(first.reason, call) from None
                raise first
        out = np.concatenate(results)  # type: ignore[arg-type]
        return torch.from_numpy(self._to_log_view(out)).to(x.device)

    def _unavailable(self, reason: str, call: _Call) -> TeacherUnavailableError:
        attempts = self.spec.max_retries + 1
        return TeacherUnavailableError(
            f"{self.spec.public_url()} failed {attempts} time{'s' if attempts != 1 else ''} (last: {reason}); "
            f"{call.answered:,} of {call.total:,} images answered before it gave up"
        )

    def _ask(self, chunk: np.ndarray, call: _Call) -> np.ndarray:
        """One chunk, with retries. Returns the parsed (k, num_classes) float64 or (k,) int64 answer."""
        s = self.spec
        body = json.dumps({"inputs": chunk.tolist(), "shape": list(chunk.shape)}).encode()
        client = self._http()
        reason = "no attempt"
        for attempt in range(s.max_retries + 1):
            if call.stop.is_set():
                raise _Stopped()
            with self._lock:
                self._requests_sent += 1
            delay = min(MAX_BACKOFF_S, s.backoff_s * 2**attempt)
            try:
                status, text, retry_after = self._post(client, body, chunk.shape[0])
                if 200 <= status < 300:
                    parsed = self._parse(text, chunk.shape[0])
                    with self._lock:
                        self._images_answered += chunk.shape[0]
                        call.answered += chunk.shape[0]
                    return parsed
                if status != 429 and not 500 <= status < 600:
                    hint = " (redirects are not followed: give the final URL)" if 300 <= status < 400 else ""
                    raise RemoteTeacherError(
                        f"{s.public_url()} answered HTTP {status}{hint}: {_excerpt(text) or '(empty body)'}"
                    )
                reason = f"HTTP {status}"
                if retry_after is not None:
                    delay = min(MAX_BACKOFF_S, retry_after)
            except httpx.TimeoutException:
                reason = f"timed out after {s.timeout_s:g} s"
            except httpx.TransportError as e:
                reason = f"{type(e).__name__}: {_excerpt(str(e), 120)}"
            except RemoteTeacherError:  # refused or malformed: asking again gets the same answer
                with self._lock:
                    self._requests_failed += 1
                raise
            with self._lock:
                self._requests_failed += 1
            if attempt < s.max_retries and call.stop.wait(delay):
                raise _Stopped()
        raise _Exhausted(reason)

    def _post(self, client: httpx.Client, body: bytes, k: int) -> tuple[int, str, float | None]:
        """POST one body; returns (status, text, Retry-After seconds). The body read is capped
        so a misbehaving endpoint cannot fill memory."""
        cap = 1 << 20 if k == 0 else (1 << 20) + 64 * k * self.num_classes
        with client.stream("POST", self.spec.url, content=body, headers={"Content-Type": "application/json"}) as r:
            buf = bytearray()
            for part in r.iter_bytes():
                buf += part
                if len(buf) > cap:
                    raise RemoteTeacherError(
                        f"{self.spec.public_url()} sent more than {cap:,} bytes for {k} images; not a valid response"
                    )
            retry_after = None
            ra = r.headers.get("Retry-After")
            if ra is not None:
                try:
                    retry_after = float(ra)
                except ValueError:
                    retry_after = None  # an HTTP date: fall back to our own backoff
                if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
                    retry_after = None
            return r.status_code, buf.decode("utf-8", errors="replace"), retry_after

    def _parse(self, text: str, k: int) -> np.ndarray:
        """Validate one answer for k images (see the module docstring); RemoteTeacherError if bad."""
        where = self.spec.public_url()
        kind = self.spec.response
        key = "labels" if kind == "labels" else "outputs"

        def bad(why: str) -> RemoteTeacherError:
            return RemoteTeacherError(f"{where} sent an invalid {kind} response: {why}")

        try:
            doc = json.loads(text)
        except ValueError:
            raise bad(f"not JSON ({_excerpt(text, 120) or 'empty body'})") from None
        if not isinstance(doc, dict) or key not in doc:
            got = sorted(doc)[:5] if isinstance(doc, dict) else type(doc).__name__
            raise bad(f"expected a JSON object with key {key!r}, got {got}")
        val = doc[key]
        if kind == "labels":
            if not isinstance(val, list) or len(val) != k:
                raise bad(f"expected a list of {k} integer labels")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
                raise bad("labels must be integers")
            if any(not 0 <= v < self.num_classes for v in val):
                raise bad(f"labels must be in [0, {self.num_classes - 1}]")
            return np.asarray(val, dtype=np.int64).reshape(k)
        try:
            out = np.asarray(val, dtype=np.float64)
        except (ValueError, TypeError):
            raise bad(f"expected a {k} x {self.num_classes} array of numbers") from None
        if out.shape != (k, self.num_classes):
            raise bad(f"expected shape ({k}, {self.num_classes}), got {out.shape}")
        if not np.isfinite(out).all():
            raise bad("contains NaN or infinite values")
        if kind == "probabilities":
            if (out < 0).any() or (out > 1).any():
                raise bad("probabilities must lie in [0, 1]")
            sums = out.sum(axis=1)
            if (sums <= 0).any() or (sums > 1 + PROB_SUM_TOL).any():
                raise bad(f"each row must sum to more than 0 and at most 1 (+{PROB_SUM_TOL:g})")
        return out

    def _to_log_view(self, out: np.ndarray) -> np.ndarray:
        """Logits as they are; probabilities as log p; labels as a 0 / -inf one-hot (float32)."""
        kind = self.spec.response
        if kind == "logits":
            return out.astype(np.float32)
        if kind == "probabilities":
            with np.errstate(divide="ignore"):
                return np.log(out).astype(np.float32)
        view = np.full((out.shape[0], self.num_classes), -np.inf, dtype=np.float32)
        view[np.arange(out.shape[0]), out] = 0.0
        return view
