"""Faults the simulator injects into its listing responses, one matching request at a time."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

KINDS = ("status", "html", "repeat_token", "invalid_items", "disconnect", "latency")

# parameter name -> type, for add() validation and parse_cli()
_PARAMS: dict[str, type] = {
    "status": int,
    "retry_after": str,
    "count": int,
    "unreadable": bool,
    "seconds": float,
    "times": int,
    "page": int,
    "country": str,
}
_ALLOWED: dict[str, set[str]] = {
    "status": {"status", "retry_after"},
    "html": set(),
    "repeat_token": set(),
    "invalid_items": {"count", "unreadable"},
    "disconnect": set(),
    "latency": {"seconds"},
}


@dataclass
class Fault:
    """One armed fault. ``remaining`` 0 means every matching request until cleared."""

    kind: str
    remaining: int
    country: str | None = None
    page: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def matches(self, countries: tuple[str, ...], page: int | None) -> bool:
        if self.country is not None and self.country not in countries:
            return False
        return self.page is None or self.page == page


def _convert(name: str, value: Any) -> Any:
    kind = _PARAMS.get(name)
    if kind is bool and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{name}={value!r} is not true or false")
        return lowered in ("1", "true", "yes")
    if kind in (int, float) and isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a number")
    if kind is str:
        return str(value)
    if kind is not None:
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} is not a {kind.__name__}") from None
    return value


class Faults:
    """The faults armed on a simulator, and its persistent added latency. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._latency = 0.0

    def add(
        self,
        kind: str | int,
        *,
        times: int = 1,
        country: str | None = None,
        page: int | None = None,
        **params: Any,
    ) -> None:
        """Arm a fault that hits the next ``times`` matching listing requests (0: every one
        until cleared); ``country`` narrows it to requests whose countryCodes include it and
        ``page`` to that 0-based page index of a listing (0 is a request without a token).
        A status code as the kind (``429``, ``"503"``) is a ``status`` fault, as in ``--fault``."""
        kind, params = _status_alias(kind, params)
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        unknown = set(params) - _ALLOWED[kind]
        if unknown:
            raise ValueError(
                f"fault {kind!r} takes no parameter {', '.join(sorted(unknown))}; "
                f"it takes {', '.join(sorted(_ALLOWED[kind] | {'times', 'country', 'page'}))}"
            )
        params = {k: _convert(k, v) for k, v in params.items() if v is not None}
        times = _convert("times", times)
        if times < 0:
            raise ValueError(f"times={times} must be 0 (every request) or more")
        if kind == "status":
            status = params.get("status")
            if status is None or not 100 <= status <= 599:
                raise ValueError("fault 'status' needs status=<100..599>")
        if kind == "latency" and params.get("seconds", -1.0) < 0:
            raise ValueError("fault 'latency' needs seconds=<0 or more>")
        fault = Fault(
            kind=kind,
            remaining=times,
            country=country.upper() if country else None,
            page=None if page is None else _convert("page", page),
            params=params,
        )
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        """Remove every fault and the persistent latency."""
        with self._lock:
            self._faults.clear()
            self._latency = 0.0

    def set_latency(self, seconds: float) -> None:
        """Add ``seconds`` before every listing response (0 removes it)."""
        if seconds < 0:
            raise ValueError("latency must be 0 or more seconds")
        with self._lock:
            self._latency = float(seconds)

    @property
    def latency(self) -> float:
        return self._latency

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, countries: tuple[str, ...], page: int | None) -> Fault | None:
        """The first fault matching a request, counted as used (the server calls this)."""
        with self._lock:
            for fault in self._faults:
                if not fault.matches(countries, page):
                    continue
                if fault.kind == "repeat_token" and page == 0:
                    # page 0 has no token of its own to repeat: serve it normally and repeat
                    # the token it hands out on the next page instead
                    if fault.page == 0:
                        fault.page = 1
                    continue
                if fault.remaining == 1:
                    self._faults.remove(fault)
                elif fault.remaining > 1:
                    fault.remaining -= 1
                return fault
            return None

    @staticmethod
    def parse_cli(spec: str) -> tuple[str, dict[str, Any]]:
        """``KIND[:name=value,...]`` as given to ``--fault``: ``429:times=3,retry_after=2``
        (a bare status code is a ``status`` fault), ``status:status=503,times=2``,
        ``latency:seconds=0.05``, ``html``, ``disconnect:page=2``."""
        kind, _, rest = spec.strip().partition(":")
        given = kind.strip().lower().replace("-", "_")
        kind, params = _status_alias(given, {})
        if kind not in KINDS:
            raise ValueError(
                f"fault {spec!r}: unknown kind {kind!r}; expected a status code such as 429 or "
                f"one of {', '.join(KINDS)}"
            )
        for part in filter(None, (p.strip() for p in rest.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep:
                raise ValueError(f"fault {spec!r}: expected name=value, got {part!r}")
            if name not in _PARAMS or name not in _ALLOWED[kind] | {"times", "country", "page"}:
                raise ValueError(f"fault {spec!r}: {kind!r} takes no parameter {name!r}")
            try:
                params[name] = _convert(name, value.strip())
            except ValueError as exc:
                raise ValueError(f"fault {spec!r}: {exc}") from None
        if given != kind:  # 429:status=503 is not a 429
            try:
                _status_alias(given, params)
            except ValueError as exc:
                raise ValueError(f"fault {spec!r}: {exc}") from None
        return kind, params


def _status_alias(kind: str | int, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A status code given as the kind (429, "429") is a ``status`` fault with that status;
    a ``status`` given beside it as well must agree."""
    if isinstance(kind, bool) or not (isinstance(kind, int) or kind.isdigit()):
        return str(kind), params
    code = int(kind)
    if params.get("status") not in (None, code, str(code)):
        raise ValueError(f"fault {kind!r} is status {code}: drop status={params['status']!r}")
    return "status", {**params, "status": code}
