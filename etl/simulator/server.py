"""A local HTTP server that behaves like Bird's stock listing, with faults on demand.

``GET /organizations/{organizationId}/numbers-stock-items`` over HTTP/1.1 keep-alive, with
Bird's query parameters, opaque keyset page tokens and JSON errors. Loopback-only control
endpoints under ``/_simulator/`` let another process evolve the stock and arm faults."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import math
import re
import socket
import ssl
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from etl.records import NUMBER_TYPES
from etl.simulator.faults import Fault, Faults
from etl.simulator.stock import SyntheticStock

LISTING_RE = re.compile(r"/organizations/([^/]+)/numbers-stock-items/?")
COUNTRY_RE = re.compile(r"[A-Z]{2}")
PREFIX_RE = re.compile(r"\+[1-9][0-9]{0,14}")
MAX_TOKEN = 8000
MAX_LIMIT = 99
DEFAULT_LIMIT = 10
CONTROL_BODY_LIMIT = 1 << 16

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1><p>The upstream server returned an invalid response.</p>"
    b"<hr><address>simulated proxy</address></body></html>\n"
)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request served on the listing endpoint.

    ``time`` is ``time.monotonic()`` when it arrived, ``query`` the raw query string (as
    sent, e.g. ``limit=5&countryCodes=US&countryCodes=NL``) and ``params`` its parsed form."""

    time: float
    path: str
    query: str
    params: dict[str, list[str]]
    status: int


@dataclass(frozen=True, slots=True)
class _Filters:
    countries: tuple[str, ...]
    prefix: str | None
    types: tuple[str, ...]


@dataclass(slots=True)
class _Listing:
    filters: _Filters
    limit: int
    token: str | None
    after: str | None
    page: int
    params: dict[str, list[str]] = field(default_factory=dict)


class BadRequest(Exception):
    pass


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _code(status: int) -> str:
    return _phrase(status).lower().replace(" ", "_").replace("-", "_").replace("'", "")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


READABLE_DEFECTS = (
    "no price",
    "amount as a string",
    "exponent 99",
    "capabilities not an object",
    "huge type",
    "bad country",
    "bad currency",
)
UNREADABLE_DEFECTS = ("numberString missing", "not E.164")


def _corrupt(item: dict[str, Any], defect: str) -> None:
    price = item.get("monthlyPrice")
    price = price if isinstance(price, dict) else {}
    if defect == "no price":
        item.pop("monthlyPrice", None)
    elif defect == "amount as a string":
        item["monthlyPrice"] = {**price, "amount": "3.50"}
    elif defect == "exponent 99":
        item["monthlyPrice"] = {**price, "exponent": 99}
    elif defect == "capabilities not an object":
        item["capabilities"] = "voice,sms"
    elif defect == "huge type":
        item["type"] = "local" * 2000
    elif defect == "bad country":
        item["countryCode"] = "Netherlands"
    elif defect == "bad currency":
        item["monthlyPrice"] = {**price, "currencyCode": "EURO"}
    elif defect == "numberString missing":
        item.pop("numberString", None)
    else:  # not E.164
        item["numberString"] = "00-" + str(item.get("numberString", ""))


def corrupt_items(chunks: list[bytes], count: int, unreadable: bool) -> list[bytes]:
    """``chunks`` with the first ``count`` items corrupted in varied ways. Every defect keeps
    numberString readable except, with ``unreadable``, the first item's (and the second's when
    ``count`` is 4 or more)."""
    defects: list[str] = []
    if unreadable:
        defects.extend(UNREADABLE_DEFECTS[: 2 if count >= 4 else 1])
    while len(defects) < count:
        defects.append(READABLE_DEFECTS[(len(defects)) % len(READABLE_DEFECTS)])
    out = list(chunks)
    for index, defect in enumerate(defects[: len(out)]):
        item = json.loads(out[index])
        if isinstance(item, dict):
            _corrupt(item, defect)
        out[index] = _json(item)
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.sim.ssl_context is not None:  # the handshake happens in the handler's thread
            sock = self.sim.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._live_lock:
            self._live.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._live_lock:
            self._live.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake every handler waiting on a keep-alive connection so that it ends."""
        with self._live_lock:
            live = list(self._live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-response is normal here; nothing to report


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "numbers-etl-simulator"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no per-request logging: it would cost more than serving the page

    # --- writing -----------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        headers: bytes = b"",
        cut: bool = False,
    ) -> None:
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            _phrase(status).encode(),
            content_type,
            len(body),
            headers,
        )
        try:
            if cut:
                self.wfile.write(head + body[: len(body) // 2])
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.wfile.write(head + body)
        except OSError:
            self.close_connection = True

    def _error(self, status: int, message: str, headers: bytes = b"") -> None:
        self._send(status, _json({"code": _code(status), "message": message}), headers=headers)

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= CONTROL_BODY_LIMIT:
            self.close_connection = True
            raise BadRequest("Content-Length is missing, invalid or too large")
        return self.rfile.read(length) if length else b""

    # --- routing -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith("/_simulator/"):
            self._control("GET", path)
            return
        match = LISTING_RE.fullmatch(path)
        if match is None:
            self._error(404, f"no route for GET {path}")
            return
        self.server.sim._serve_listing(self, unquote(match[1]), path, query)

    def do_POST(self) -> None:
        self._control("POST", self.path.partition("?")[0])

    def do_DELETE(self) -> None:
        self._control("DELETE", self.path.partition("?")[0])

    def _control(self, method: str, path: str) -> None:
        try:
            loopback = ipaddress.ip_address(self.client_address[0]).is_loopback
        except ValueError:
            loopback = False
        try:
            body = self._read_body() if method != "GET" else b""
        except BadRequest as exc:
            self._error(400, str(exc))
            return
        if not loopback:
            self._error(403, "the control endpoints answer on loopback only")
            return
        sim = self.server.sim
        try:
            payload = json.loads(body) if body.strip() else {}
            if not isinstance(payload, dict):
                raise BadRequest("the body must be a JSON object")
            if (method, path) == ("GET", "/_simulator/stats"):
                self._send(200, _json(sim.stats()))
            elif (method, path) == ("POST", "/_simulator/evolve"):
                self._send(200, _json(sim.stock.evolve(**payload)))
            elif (method, path) == ("POST", "/_simulator/faults"):
                kind = payload.pop("kind", None)
                if isinstance(kind, bool) or not isinstance(kind, str | int):
                    raise BadRequest(
                        'the body needs "kind", e.g. {"kind": "status", "status": 503} '
                        'or {"kind": "429", "retry_after": 2}'
                    )
                sim.faults.add(kind, **payload)
                self._send(200, _json({"faults": len(sim.faults.pending())}))
            elif (method, path) == ("DELETE", "/_simulator/faults"):
                sim.faults.clear()
                self._send(200, _json({"faults": 0}))
            else:
                self._error(404, f"no control endpoint {method} {path}")
        except (BadRequest, ValueError, TypeError) as exc:
            self._error(400, str(exc))


class Simulator:
    """A Bird-compatible stock listing on ``host``:``port`` (0: a free port), serving
    ``stock`` with ``faults``. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        stock: SyntheticStock | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_key: str = "sim-access-key",
        organization_id: str = "sim-org",
        keep_requests: int = 200_000,
        ssl_context: ssl.SSLContext | None = None,
        rate_limit: float | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise ValueError(f"rate_limit {rate_limit!r}: at least 1 request a second, or None")
        self.stock = stock if stock is not None else SyntheticStock()
        # Bird's limit (about 50 GET requests a second per workspace), when set: a listing
        # request that would be more than int(rate_limit) in a second gets a 429
        self.rate_limit = rate_limit
        self._admitted: deque[float] = deque()  # arrival times of the last second's requests
        self.ssl_context = ssl_context  # HTTPS with it (tests of the client's TLS)
        self.faults = Faults()
        self.host = host
        self.port = port
        self.organization_id = organization_id
        # every listing request, the oldest dropped beyond keep_requests (a long-running
        # simulator must not grow without bound); stats() counts all of them
        self.requests: list[RequestRecord] = []
        self._keep_requests = max(1, keep_requests)
        self._statuses: Counter[int] = Counter()
        self._auth = f"AccessKey {access_key}"
        self._token_key = hashlib.sha256(
            f"numbers-etl-simulator|{organization_id}".encode()
        ).digest()
        self._records_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        with self._records_lock:
            statuses = {str(k): v for k, v in sorted(self._statuses.items())}
        return {
            "requests": sum(statuses.values()),
            "statuses": statuses,
            "numbers": len(self.stock),
            "steps": self.stock.steps,
            "faults": len(self.faults.pending()),
            "latency": self.faults.latency,
            "rate_limit": self.rate_limit,
        }

    # --- tokens ------------------------------------------------------------------------------

    def _encode_token(self, filters: _Filters, after: str, page: int) -> str:
        payload = _json(
            {"c": filters.countries, "p": filters.prefix, "t": filters.types, "a": after, "i": page}
        )
        mac = hmac.new(self._token_key, payload, hashlib.sha256).digest()[:12]
        return base64.urlsafe_b64encode(mac + payload).rstrip(b"=").decode()

    def _decode_token(self, token: str, filters: _Filters) -> tuple[str, int]:
        if len(token) > MAX_TOKEN:
            raise BadRequest(f"pageToken is longer than {MAX_TOKEN} characters")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise BadRequest("pageToken is not a token this listing handed out") from None
        mac, payload = raw[:12], raw[12:]
        expected = hmac.new(self._token_key, payload, hashlib.sha256).digest()[:12]
        if not hmac.compare_digest(mac, expected):
            raise BadRequest("pageToken is not a token this listing handed out")
        data = json.loads(payload)
        if (tuple(data["c"]), data["p"], tuple(data["t"])) != (
            filters.countries,
            filters.prefix,
            filters.types,
        ):
            raise BadRequest("pageToken does not match the countryCodes, prefix and types")
        return str(data["a"]), int(data["i"])

    # --- the listing -------------------------------------------------------------------------

    def _parse(self, params: dict[str, list[str]]) -> _Listing:
        limit = DEFAULT_LIMIT
        if "limit" in params:
            text = params["limit"][-1]
            try:
                limit = int(text)
            except ValueError:
                limit = 0
            if not 1 <= limit <= MAX_LIMIT or not text.strip().isdigit():
                raise BadRequest(f"limit {text!r} is not a whole number from 1 to {MAX_LIMIT}")
        countries = _split(params.get("countryCodes", []))
        bad = [c for c in countries if not COUNTRY_RE.fullmatch(c)]
        if bad:
            raise BadRequest(f"countryCodes {', '.join(map(repr, bad))}: expected ISO alpha-2")
        prefixes = params.get("prefix", [])
        prefix = prefixes[-1].strip() if prefixes else None
        if prefix is not None:
            if not countries:
                raise BadRequest("prefix is only allowed together with countryCodes")
            if not PREFIX_RE.fullmatch(prefix):
                raise BadRequest(f"prefix {prefix!r} is not an area code such as +1212")
        types = _split(params.get("types", []))
        bad = [t for t in types if t not in NUMBER_TYPES]
        if bad:
            raise BadRequest(
                f"types {', '.join(map(repr, bad))}: expected any of {', '.join(NUMBER_TYPES)}"
            )
        filters = _Filters(tuple(sorted(set(countries))), prefix or None, tuple(sorted(set(types))))
        tokens = params.get("pageToken")
        after, page, token = None, 0, None
        if tokens:
            token = tokens[-1]
            after, page = self._decode_token(token, filters)
        return _Listing(filters, limit, token, after, page, params)

    def _record(self, arrived: float, path: str, query: str, params: Any, status: int) -> None:
        with self._records_lock:
            self._statuses[status] += 1
            self.requests.append(RequestRecord(arrived, path, query, params, status))
            if len(self.requests) > self._keep_requests:
                del self.requests[: len(self.requests) - self._keep_requests // 2]

    def _over_rate_limit(self, arrived: float) -> float | None:
        """None when a request arriving at ``arrived`` is within the rate limit (it then
        counts against it), else the seconds until it would be: no second (a sliding
        window) admits more than ``int(rate_limit)`` requests. A refused request does not
        count, so a client that waits as told gets in."""
        if self.rate_limit is None:
            return None
        with self._records_lock:
            admitted = self._admitted
            # in order: a thread that took its time before another can get the lock after it
            now = max(arrived, admitted[-1]) if admitted else arrived
            while admitted and admitted[0] <= now - 1.0:
                admitted.popleft()
            if len(admitted) >= int(self.rate_limit):
                return admitted[0] + 1.0 - now
            admitted.append(now)
            return None

    def _serve_listing(self, handler: _Handler, org: str, path: str, query: str) -> None:
        arrived = time.monotonic()
        params: dict[str, list[str]] = {}
        if handler.headers.get("Authorization") != self._auth:
            self._record(arrived, path, query, params, 401)
            handler._error(401, "the access key is missing or not valid (Authorization: AccessKey)")
            return
        if org != self.organization_id:
            self._record(arrived, path, query, params, 404)
            handler._error(404, f"organization {org!r} not found")
            return
        wait = self._over_rate_limit(arrived)
        if wait is not None:
            self._record(arrived, path, query, params, 429)
            handler._error(
                429,
                f"more than {self.rate_limit:g} requests in one second; slow down",
                headers=b"Retry-After: %d\r\n" % math.ceil(wait),
            )
            return
        try:
            params = parse_qs(query, keep_blank_values=True)
            listing = self._parse(params)
        except (BadRequest, ValueError, KeyError, TypeError) as exc:
            message = str(exc) if isinstance(exc, BadRequest) else "pageToken is not valid"
            self._record(arrived, path, query, params, 400)
            handler._error(400, message)
            return
        fault = self.faults.take(listing.filters.countries, listing.page)
        delay = self.faults.latency
        if fault is not None and fault.kind == "latency":
            delay += float(fault.params.get("seconds", 0.0))
        if delay > 0 and self._stopping.wait(delay):
            handler.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            self._fault_status(handler, fault, arrived, path, query, params)
            return
        if fault is not None and fault.kind == "html":
            self._record(arrived, path, query, params, 200)
            handler._send(200, HTML_PAGE, content_type=b"text/html; charset=utf-8")
            return
        filters = listing.filters
        chunks, last = self.stock.query(
            country_codes=filters.countries,
            prefix=filters.prefix,
            types=filters.types,
            after=listing.after,
            limit=listing.limit,
        )
        token: str | None = None
        if fault is not None and fault.kind == "repeat_token" and listing.token is not None:
            token = listing.token
        elif last is not None:
            token = self._encode_token(filters, last, listing.page + 1)
        if fault is not None and fault.kind == "invalid_items":
            chunks = corrupt_items(
                chunks, int(fault.params.get("count", 3)), bool(fault.params.get("unreadable"))
            )
        body = b'{"results":[' + b",".join(chunks)
        body += b"]}" if token is None else b'],"nextPageToken":"' + token.encode() + b'"}'
        self._record(arrived, path, query, params, 200)
        handler._send(200, body, cut=fault is not None and fault.kind == "disconnect")

    def _fault_status(
        self,
        handler: _Handler,
        fault: Fault,
        arrived: float,
        path: str,
        query: str,
        params: dict[str, list[str]],
    ) -> None:
        status = int(fault.params["status"])
        headers = b""
        retry_after = fault.params.get("retry_after")
        if retry_after is not None:
            headers = b"Retry-After: %s\r\n" % str(retry_after).encode()
        self._record(arrived, path, query, params, status)
        message = {
            429: "too many requests; slow down",
            500: "internal error (simulated)",
            502: "bad gateway (simulated)",
            503: "service unavailable (simulated)",
        }.get(status, f"simulated {status} {_phrase(status)}")
        handler._error(status, message, headers=headers)
