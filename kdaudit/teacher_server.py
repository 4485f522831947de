"""Serve a PyTorch teacher over HTTP with the remote-teacher wire protocol (models/remote_teacher.py).

Why it exists: so that an owner can audit "a thief who only has my prediction API" end to end
(`kdaudit serve-teacher nasty.safetensors --arch ... --teacher-response probabilities`, then point a
remote teacher at ``http://127.0.0.1:8700/``), and so that the tests have a real, misbehaving
endpoint. It is a stdlib `ThreadingHTTPServer` with no authentication of its own, meant for
loopback and trusted networks, not a production inference server.

``POST`` (any path) ``{"inputs": N x C x H x W floats, "shape": [N, C, H, W]}`` answers
``{"outputs": ...}`` (logits, or softmax probabilities) or ``{"labels": [...]}`` (argmax);
``GET`` answers a small JSON description. Test knobs: `fail_every` (every k-th request gets a
503, with `retry_after` as its Retry-After header if set), `slow_every` / `slow_seconds`
(every k-th request sleeps first), `max_images` (413 above it), `require_headers` (401 unless
every listed header has the listed value).

`images_served_ok` counts images in 200 responses that reached a client still listening: a
slow answer whose client already timed out and hung up is dropped, not counted, so that the
server's count and a `RemoteTeacher`'s `images_answered` agree exactly.

torch is imported lazily so that `register()` (used to build the CLI parser) stays cheap.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdaudit.remote_teacher_args import RESPONSES, add_teacher_response_option

if TYPE_CHECKING:
    from torch import nn

PROTOCOL = "kdaudit-remote-teacher/1"


class TeacherServer(ThreadingHTTPServer):
    """A threading HTTP server holding the model, the knobs and the counters."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        model: nn.Module,
        response: str = "logits",
        *,
        fail_every: int | None = None,
        retry_after: float | None = None,
        slow_every: int | None = None,
        slow_seconds: float = 0.0,
        max_images: int = 4096,
        max_body_bytes: int = 256 << 20,
        require_headers: dict[str, str] | None = None,
        quiet: bool = True,
    ):
        if response not in RESPONSES:
            raise ValueError(f"response must be one of {RESPONSES}, not {response!r}")
        for name, k in (("fail_every", fail_every), ("slow_every", slow_every)):
            if k is not None and k < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        super().__init__(address, _Handler)
        self.model = model.eval()
        self.response = response
        self.fail_every, self.retry_after = fail_every, retry_after
        self.slow_every, self.slow_seconds = slow_every, slow_seconds
        self.max_images, self.max_body_bytes = max_images, max_body_bytes
        self.require_headers = dict(require_headers or {})
        self.quiet = quiet
        self.requests_seen = 0
        self.images_served_ok = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward at a time: bounded memory, no races
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()  # keep-alive connections whose handler threads still run
        self._closed = threading.Condition(self._lock)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        """Stop serving: wake sleeping slow requests, close the listening socket, and end every
        keep-alive connection so no handler thread outlives the server.

        A handler thread left blocked on an idle keep-alive socket (a client that never closed
        its pool) is still running when the interpreter exits, and was seen to abort the process
        ("terminate called without an active exception") during torch's shutdown.
        """
        self._stopping.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()
        with self._lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._closed.wait_for(lambda: not self._open, timeout=5)

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._open.add(conn)
            else:
                self._open.discard(conn)
                self._closed.notify_all()

    def _next_request(self) -> int:
        with self._lock:
            self.requests_seen += 1
            return self.requests_seen

    def _predict(self, x: Any) -> dict[str, Any]:
        import torch

        with self._model_lock, torch.inference_mode():
            logits = self.model(x).float()
        if self.response == "labels":
            return {"labels": logits.argmax(dim=1).tolist()}
        out = logits.softmax(dim=1) if self.response == "probabilities" else logits
        return {"outputs": out.tolist()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections
    server: TeacherServer

    def setup(self) -> None:
        super().setup()
        self.server._track(self.connection, True)
        # without this, headers and body leave as two segments and Nagle + delayed ACK add ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": message}, headers)

    def _client_gone(self) -> bool:
        """True if the client closed the connection (e.g. it timed out while we slept)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_GET(self) -> None:
        self._send(200, {"protocol": PROTOCOL, "response": self.server.response, "max_images": self.server.max_images})

    def do_POST(self) -> None:
        srv = self.server
        n_req = srv._next_request()
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return self._error(411, "a Content-Length header is required")
        if length < 0 or length > srv.max_body_bytes:
            self.close_connection = True
            return self._error(413, f"request body over {srv.max_body_bytes:,} bytes")
        raw = self.rfile.read(length)  # read first, so keep-alive stays in sync on every answer
        for k, v in srv.require_headers.items():
            if self.headers.get(k) != v:
                return self._error(401, f"missing or wrong {k} header")
        if srv.fail_every and n_req % srv.fail_every == 0:
            extra = {"Retry-After": f"{srv.retry_after:g}"} if srv.retry_after is not None else None
            return self._error(503, "injected failure (fail_every)", extra)
        if srv.slow_every and n_req % srv.slow_every == 0:
            srv._stopping.wait(srv.slow_seconds)
            if self._client_gone():
                self.close_connection = True
                return
        x = self._parse(raw)
        if x is None:
            return
        try:
            doc = srv._predict(x)
        except Exception as e:  # wrong channels / image size for this model
            return self._error(400, f"the model cannot run on inputs of shape {list(x.shape)}: {type(e).__name__}")
        try:
            self._send(200, doc)
        except OSError:
            self.close_connection = True
            return
        with srv._lock:
            srv.images_served_ok += int(x.shape[0])

    def _parse(self, raw: bytes) -> Any:
        """The request's input tensor, or None after answering 400/413."""
        import numpy as np
        import torch

        try:
            doc = json.loads(raw)
            shape = doc["shape"]
            inputs = doc["inputs"]
        except (ValueError, TypeError, KeyError):
            self._error(400, 'expected a JSON object {"inputs": N x C x H x W numbers, "shape": [N, C, H, W]}')
            return None
        if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d >= 1 for d in shape)):
            self._error(400, "shape must be a list of 4 positive integers [N, C, H, W]")
            return None
        if shape[0] > self.server.max_images:
            self._error(413, f"{shape[0]} images in one request; at most {self.server.max_images}")
            return None
        try:
            arr = np.asarray(inputs, dtype=np.float32)
        except (ValueError, TypeError):
            arr = None
        if arr is None or list(arr.shape) != shape or not np.isfinite(arr).all():
            self._error(400, f"inputs must be a finite {shape} nested list of numbers")
            return None
        return torch.from_numpy(arr)


def start_teacher_server(
    model: nn.Module, response: str = "logits", host: str = "127.0.0.1", port: int = 0, **knobs: Any
) -> tuple[TeacherServer, str]:
    """Serve `model` from a daemon thread; returns (server, url). Call `server.stop()` when done.
    `port=0` picks a free port. `knobs` are TeacherServer's keyword arguments."""
    server = TeacherServer((host, port), model, response, **knobs)
    server._thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="teacher-server", daemon=True
    )
    server._thread.start()
    return server, server.url


def pixel_endpoint(model: Any, contract: Any, channels: int, dataset: str, dataset_path: str | Path | None = None) -> Any:
    """The model behind an endpoint that takes pixels in [0, 1] (a product API) and applies the
    model's own preprocessing `contract` itself; clients then declare `--preprocess none`."""
    from kdaudit.distill.teacher_input import apply_contract

    mean, std = (0.0,) * channels, (1.0,) * channels
    if contract.is_default:  # the dataset's statistics: the server needs them to standardise
        from kdaudit.distill.data import load_splits

        splits = load_splits(dataset, dataset_path=dataset_path)
        return apply_contract(model, contract.model_copy(update={"preset": "custom", "pixel_scale": 1.0,
                                                                 "mean": list(splits.mean), "std": list(splits.std)}),
                              channels, mean, std)
    return apply_contract(model, contract, channels, mean, std)


def serve_teacher_main(
    teacher_path: str | Path,
    arch: str | None,
    dataset: str = "digits",
    response: str = "logits",
    host: str = "127.0.0.1",
    port: int = 8700,
    dataset_path: str | Path | None = None,
    preprocess: Any = None,
) -> int:
    """Load a teacher file (untrusted-input rules of `load_teacher`) and serve it until Ctrl-C.

    With `preprocess` (a TeacherInput), the endpoint takes pixels in [0, 1] and applies that
    contract itself; without it, it takes the inputs the model expects as they are.
    """
    from kdaudit.distill.data import dataset_spec
    from kdaudit.models.checkpoints import load_teacher

    spec = dataset_spec(dataset, dataset_path)
    model = load_teacher(teacher_path, arch, spec.num_classes, spec.in_channels, image_size=spec.image_size)
    wire = "the model's own inputs (clients declare its preprocessing)"
    if preprocess is not None:
        model = pixel_endpoint(model, preprocess, spec.in_channels, dataset, dataset_path)
        wire = f"pixels in [0, 1], preprocessed here as {preprocess.preset} (clients declare --preprocess none)"
    server = TeacherServer((host, port), model, response, quiet=False)
    print(
        f"serving {teacher_path} ({arch or 'black box'}, {dataset}: {spec.num_classes} classes, "
        f"{spec.in_channels}x{spec.image_size}x{spec.image_size} inputs: {wire}) as {response} at {server.url}",
        flush=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: this server has no authentication; anyone who can reach it can query the teacher",
              file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"stopped after {server.requests_seen} requests, {server.images_served_ok} images answered")
    return 0


def cmd_serve_teacher(args: argparse.Namespace) -> int:
    from kdaudit.preprocess_args import contract_from_args

    given = args.preprocess is not None or args.mean is not None or args.std is not None or args.pixel_scale is not None
    return serve_teacher_main(
        args.teacher, args.arch, args.dataset, args.teacher_response, args.host, args.port, args.dataset_path,
        preprocess=contract_from_args(args) if given else None,
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve-teacher` subcommand to the `kdaudit` parser's subparsers."""
    p = sub.add_parser(
        "serve-teacher",
        help="serve a teacher checkpoint over HTTP (the remote-teacher protocol) to audit API-only thieves",
    )
    p.add_argument("teacher", type=Path, help="teacher file: .safetensors, .onnx or a PyTorch state_dict")
    p.add_argument("--arch", help="architecture of a weights file, e.g. cnn-16-32-32-64 (not needed for ONNX)")
    p.add_argument("--dataset", default="digits", help="digits | mnist | fashion-mnist | cifar10 | npz (default digits)")
    p.add_argument("--dataset-path", help="for --dataset npz: the .npz (for its class and channel counts)")
    add_teacher_response_option(p, required=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8700, help="port (default 8700; 0 picks a free one)")
    from kdaudit.preprocess_args import add_preprocess_args

    add_preprocess_args(p, expected=False)
    p.description = ("With --preprocess (or --mean/--std/--pixel-scale) the endpoint takes pixels in [0, 1] and applies "
                     "the model's own preprocessing itself, as a product API does; audit it with --preprocess none.")
    p.set_defaults(func=cmd_serve_teacher)
