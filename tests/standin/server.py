"""An HTTP server on 127.0.0.1 that answers like a Google REST API: routing, errors, operations, a log.

It shares nothing with `edge.cloud`: only the wire contract (../shared/cloud/vertex-rest-contract.md
and google-clients-local.md), so the code under test is exercised through the real clients' own
request serialisation.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from tests.standin.access import Access

# google.rpc.Code names by HTTP status, as Google's REST gateways send them in error bodies.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
# gRPC codes, for errors inside long-running operations and jobs.
GRPC_CODES = {
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}
# What every gapic REST call appends; the real service then answers enums as integers.
ALT_JSON = "json;enum-encoding=int"


class ApiError(Exception):
    """Raise in a handler to answer with Google's error body: {"error": {code, message, status}}."""

    def __init__(self, http_status: int, message: str, status: str | None = None, details: Any = None):
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.status = status or STATUS_NAMES.get(http_status, "UNKNOWN")
        self.details = details or []

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.http_status, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


@dataclass
class Request:
    """One request as the stand-in saw it, after URL-decoding; what tests assert on."""

    service: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes = b""
    status: int = 0
    params: dict[str, str] = field(default_factory=dict)
    principal: str = ""  # who called, once the stand-in's Access has read the bearer token

    @property
    def mutating(self) -> bool:
        """Whether the request changes something: not a GET, nor a read that Google makes a POST."""
        return self.method != "GET" and not self.path.endswith((":getIamPolicy", ":testIamPermissions"))

    def __str__(self) -> str:
        return f"{self.service} {self.method} {self.path} -> {self.status}"


@dataclass
class Reply:
    """A handler's answer when it is not a plain 200 JSON body."""

    body: Any
    status: int = 200
    content_type: str = "application/json; charset=UTF-8"


class RequestLog:
    """Every request of every stand-in sharing this log, in order; thread-safe."""

    def __init__(self) -> None:
        self._entries: list[Request] = []
        self._lock = threading.Lock()

    def append(self, request: Request) -> None:
        with self._lock:
            self._entries.append(request)

    def __iter__(self) -> Iterator[Request]:
        with self._lock:
            return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def find(
        self, service: str | None = None, method: str | None = None, path: str | re.Pattern[str] | None = None
    ) -> list[Request]:
        """The requests matching each given criterion; `path` is a substring or a compiled regex."""
        found = []
        for entry in self:
            if service and entry.service != service:
                continue
            if method and entry.method != method:
                continue
            if isinstance(path, str) and path not in entry.path:
                continue
            if isinstance(path, re.Pattern) and not path.search(entry.path):
                continue
            found.append(entry)
        return found

    def mutations(self, service: str | None = None) -> list[Request]:
        """The requests that change something (not GET): what idempotence is judged by."""
        return [e for e in self.find(service=service) if e.mutating]

    def counts(self) -> Counter[str]:
        """How many requests each service received."""
        return Counter(e.service for e in self)

    def text(self) -> str:
        """Everything received (paths, queries, headers, bodies, base64 payloads decoded) as one
        string, to check that a secret value never crossed the wire where it should not."""
        parts = []
        for entry in self:
            parts.append(f"{entry.method} {entry.path} {entry.query} {entry.headers}")
            raw = entry.raw_body.decode("utf-8", "replace")
            parts.append(raw)
            for blob in re.findall(r'"data":\s*"([A-Za-z0-9+/=]+)"', raw):
                parts.append(base64.b64decode(blob).decode("utf-8", "replace"))
        return "\n".join(parts)


Handler = Callable[[Request], Any]
NO_ROUTE_PAGE = (
    "<!DOCTYPE html>\n<html lang=en><title>Error 404 (Not Found)!!1</title>"
    "<p><b>404.</b> <ins>That's an error.</ins><p>The requested URL <code>{path}</code> was not found "
    "on this server. <ins>That's all we know.</ins>"
)


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    permission: str | None = None
    resource: Callable[[Request], str] | None = None


_SEGMENT = r"[^/:]+"  # a custom verb (`:cancel`) is never part of a segment
_TYPES = {"": _SEGMENT, "path": r".+?", "ops": r"(?:[^/]+/)*?operations/[^/:]+"}


def new_id(taken: Any) -> str:
    """A resource id as Vertex AI makes them (19 digits), unique in the collection `taken`."""
    while True:
        candidate = str(secrets.randbelow(9 * 10**18) + 10**18)
        if candidate not in taken:
            return candidate


def compile_template(template: str) -> re.Pattern[str]:
    """`/v1/projects/{project}/secrets/{secret}:addVersion` -> a regex with named groups.

    `{name}` matches one path segment (no `/`), `{name:path}` any run of segments.
    """
    pattern = ""
    for literal, name, kind in re.findall(r"([^{]*)(?:\{(\w+)(?::(\w+))?\})?", template):
        pattern += re.escape(literal)
        if name:
            pattern += f"(?P<{name}>{_TYPES[kind]})"
    return re.compile(f"^{pattern}$")


class Operations:
    """Long-running operations: done inline, or pending until polled a number of times."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(secrets.randbelow(10**17) + 10**18)
        self._lock = threading.Lock()

    @staticmethod
    def done(type_url: str, response: dict[str, Any], name: str) -> dict[str, Any]:
        """A finished operation `name` carrying `response` typed as `type_url` (the exact message type).

        Every operation Google returns has a name, finished or not: the SDK prints it.
        """
        return {"name": name, "done": True, "response": {"@type": type_url, **response}}

    @staticmethod
    def failed(grpc_status: str, message: str, name: str) -> dict[str, Any]:
        return {"name": name, "done": True, "error": {"code": GRPC_CODES[grpc_status], "message": message}}

    def name(self, parent: str) -> str:
        """A new operation name under `parent` (`projects/P/locations/L[/...]`, or "" for `operations/N`)."""
        return f"{parent}/operations/{next(self._ids)}" if parent else f"operations/{next(self._ids)}"

    def finished(self, parent: str, type_url: str, response: dict[str, Any]) -> dict[str, Any]:
        """A finished operation with a new name under `parent`, answered inline."""
        return self.done(type_url, response, self.name(parent))

    def pending(self, parent: str, type_url: str, response: dict[str, Any], polls: int = 1) -> dict[str, Any]:
        """An operation `parent/operations/<id>` that reports done after `polls` polls."""
        name = self.name(parent)
        with self._lock:
            self._pending[name] = {"left": polls, "done": self.done(type_url, response, name)}
        return {"name": name, "done": False}

    def poll(self, name: str) -> dict[str, Any]:
        with self._lock:
            entry = self._pending.get(name)
            if entry is None:
                raise ApiError(404, f"Operation {name} not found.")
            entry["left"] -= 1
            if entry["left"] > 0:
                return {"name": name, "done": False}
            return dict(entry["done"])


class LocalHttpServer:
    """An HTTP server on a free port of 127.0.0.1, answered from daemon threads until `stop()`."""

    _server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def serve(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        """Start answering with `handler` (one thread a connection) in a thread called `name`."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name=name, daemon=True).start()

    @property
    def address(self) -> str:
        """`host:port`, once started."""
        assert self._server is not None, f"start() the {type(self).__name__} first"
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StandIn(LocalHttpServer):
    """One fake Google API host on 127.0.0.1:<free port>.

    Register routes with `route(method, template)(handler)`; a handler receives the Request (path
    parameters in `request.params`) and returns a JSON body (200), a `Reply`, or raises `ApiError`.

    With an `Access` attached (every `LocalCloud` attaches one), a route registered with the
    `permission` its method needs is guarded: caller, project, API state and permission are checked
    first (tests/standin/access.py), and `{project}` reaches the handler as the project number when
    `names_by_number` (Vertex AI names resources by number) or else as the project id.
    """

    def __init__(
        self,
        service: str,
        log: RequestLog | None = None,
        operations_prefix: str = "/v1",
        access: Access | None = None,
        names_by_number: bool = False,
    ) -> None:
        self.service = service
        self.log = log if log is not None else RequestLog()
        self.operations = Operations()
        self.access = access
        self.names_by_number = names_by_number
        self._routes: list[Route] = []
        self._faults: list[tuple[str, re.Pattern[str], ApiError]] = []
        # Vertex AI polls operations under /ui/, the other APIs under their version prefix.
        self.route("GET", f"{operations_prefix}/{{name:ops}}")(
            lambda r: self.operations.poll(r.params["name"])
        )

    def route(
        self,
        method: str,
        template: str,
        permission: str | None = None,
        resource: Callable[[Request], str] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: answer `method` requests whose decoded path matches `template`.

        `permission` is what Google's reference says the method needs; `resource(request)` names
        the resource whose own IAM policy may grant it too (a secret, a service account...).
        """

        def register(handler: Handler) -> Handler:
            # Later registrations win, so a test or an extension can override a default route.
            self._routes.insert(0, Route(method, compile_template(template), handler, permission, resource))
            return handler

        return register

    def fail_next(self, method: str, path: str, error: ApiError) -> None:
        """Answer the next `method` request whose path matches the regex `path` with `error` (once)."""
        self._faults.append((method, re.compile(path), error))

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> StandIn:
        handler = type("BoundHandler", (_HttpHandler,), {"standin": self})
        self.serve(handler, f"standin-{self.service}")
        return self

    def dispatch(self, request: Request) -> tuple[int, Any]:
        """Route a request; the status and JSON body to send back."""
        alt = request.query.get("$alt")
        if alt is not None and alt != ALT_JSON:
            return 400, ApiError(400, f"Unsupported $alt={alt!r}").body()
        for fault in list(self._faults):
            method, pattern, error = fault
            if method == request.method and pattern.search(request.path):
                self._faults.remove(fault)
                return error.http_status, error.body()
        matched_path = False
        for route in self._routes:
            match = route.pattern.match(request.path)
            if not match:
                continue
            matched_path = True
            if route.method != request.method:
                continue
            request.params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                if self.access is not None and route.permission:
                    resource = route.resource(request) if route.resource else None
                    project = self.access.guard(request, self.service, route.permission, resource)
                    if "project" in request.params:
                        by_number = self.names_by_number
                        request.params["project"] = project.number if by_number else project.project_id
                result = route.handler(request)
            except ApiError as exc:
                return exc.http_status, exc.body()
            if isinstance(result, Reply):
                json_body = result.content_type.startswith("application/json")
                return result.status, result.body if json_body else result
            return 200, result
        if matched_path:
            return 405, ApiError(
                405, f"Method {request.method} not allowed on {request.path}", "UNIMPLEMENTED"
            ).body()
        # Google's front end answers a path no API serves with an HTML page, not an API error: a
        # client must not read it as "this resource does not exist".
        return 404, Reply(NO_ROUTE_PAGE.format(path=request.path), 404, "text/html; charset=UTF-8")


class _HttpHandler(BaseHTTPRequestHandler):
    standin: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is the record."""

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        request = Request(
            service=self.standin.service,
            method=self.command,
            # Clients percent-encode paths (`models/1%402`); routes see them decoded.
            path=unquote(parts.path),
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_body=raw,
        )
        form = self.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        if raw and body is None and not form:  # OAuth endpoints (STS) take forms, the APIs JSON
            status, answer = 400, ApiError(400, "Invalid JSON payload received.").body()
        else:
            try:
                status, answer = self.standin.dispatch(request)
            except Exception as exc:  # a bug in a handler: answer 500 and say what it was
                status, answer = 500, ApiError(500, f"stand-in error: {exc!r}").body()
        request.status = status
        self.standin.log.append(request)
        content_type = "application/json; charset=UTF-8"
        if isinstance(answer, Reply):  # a page, not JSON
            content_type, answer = answer.content_type, answer.body
            data = str(answer).encode()
        else:
            data = json.dumps(answer).encode()
        self.send_response(
            status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else None
        )
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle  # noqa: N815 (http.server's names)
