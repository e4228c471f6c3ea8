"""Settings from command-line flags, ``NUMBERS_ETL_*`` environment variables, a TOML file and
defaults, in that order of precedence. Validated once; every problem is reported together."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit

import pycountry

from etl.errors import ConfigError
from etl.records import NUMBER_TYPES

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

ENV_PREFIX = "NUMBERS_ETL_"
CONFIG_ENV = "NUMBERS_ETL_CONFIG"
ACCESS_KEY_FILE_ENV = "NUMBERS_ETL_ACCESS_KEY_FILE"
DEFAULT_DATABASE_URL = "sqlite:///numbers_stock.sqlite"


class Secret:
    """A value that never shows itself in a repr, a log line or an error."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """The effective, validated configuration. Read-only."""

    database_url: str = DEFAULT_DATABASE_URL
    api_url: str = "https://api.bird.com"
    access_key: Secret | None = None
    organization_id: str | None = None
    countries: tuple[str, ...] = ()
    prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    types: tuple[str, ...] = ()
    page_size: int = 99
    max_requests_per_second: float = 20.0
    concurrency: int = 4
    schedule: str = "0 */6 * * *"
    removal_confirmations: int = 1
    max_removal_fraction: Decimal = Decimal("0.5")
    max_pages: int = 100000
    lock_ttl_seconds: int = 300
    # key -> where its value came from ("default", "file PATH", "env NAME", "flag --x")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def require(self, *keys: str) -> None:
        """Raise ConfigError naming every key in ``keys`` that has no value."""
        missing = [k for k in keys if getattr(self, k) in (None, (), "")]
        if missing:
            raise ConfigError([required_problem(k) for k in missing])

    @property
    def uses_default_database(self) -> bool:
        return self.database_url == DEFAULT_DATABASE_URL

    def redacted(self) -> dict[str, Any]:
        """Every key with its effective value, secrets and database passwords hidden."""
        out: dict[str, Any] = {}
        for key in KEYS:
            value = getattr(self, key)
            if key == "access_key":
                value = None if value is None else "***"
            elif key == "database_url":
                value = redact_url(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {k: list(v) for k, v in value.items()}
            elif isinstance(value, Decimal):
                value = str(value)
            out[key] = value
        return out


def required_problem(key: str) -> str:
    """The message for a required ``key`` that has no value."""
    return f"{key} is required: set it in the config file or with {ENV_PREFIX}{key.upper()}" + (
        f" or {ACCESS_KEY_FILE_ENV} (there is no flag for it: a command line"
        " is visible to every user of the host)"
        if key == "access_key"
        else f" or with --{key.replace('_', '-')}"
    )


# Connection options in a URL's query string whose values are secrets: libpq's `password`
# and `sslpassword`, PyMySQL's `password`, `passwd` and `ssl_key_password`, and anything
# else named like one, misspelt ones included (`pasword`, `paswd`, `pw`): an option the
# driver does not know is a configuration error that shows the URL.
_SECRET_OPTION = re.compile(r"pa?s|pw|secret|token|key|cred|auth", re.IGNORECASE)
_QUERY_OPTION = re.compile(r"([?&]([^=&]*)=)([^&]*)")


def _is_secret_option(name: str) -> bool:
    return bool(_SECRET_OPTION.search(unquote_plus(name)))


def _stray_at(url: URL) -> bool:
    """Whether an '@' is left in the host, or in the database name of a URL with a host: a
    password holding an '@' that was not percent-encoded (``u:Xy@Zq/w9@h/db`` parses as
    password 'Xy', host 'Zq', database 'w9@h/db': part of the password shows as a host)."""
    return url.host is not None and ("@" in url.host or "@" in (url.database or ""))


def _parsed_url(url: str) -> URL | None:
    """``url`` parsed, or None when it cannot be, or when an '@' is left where a password
    holding one that was not percent-encoded would put the password's end (``_stray_at``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)  # ValueError for a port that is not a number
    except (ArgumentError, ValueError):
        return None
    return None if _stray_at(parsed) else parsed


def _mask_query(text: str) -> str:
    return _QUERY_OPTION.sub(
        lambda m: m.group(1) + "***" if _is_secret_option(m.group(2)) else m.group(0), text
    )


def redact_url(url: str) -> str:
    """The database URL with its password, and the values of password-like options in its
    query string, replaced by ``***``. A URL that cannot be parsed keeps its user name at
    most: everything from the first ':' after the scheme up to the last '@' is hidden."""
    parsed = _parsed_url(url)
    if parsed is not None:
        return _mask_query(parsed.render_as_string(hide_password=True))
    text = _mask_query(url)
    at = text.rfind("@")
    if at < 0:
        return text
    slashes = text.find("//")
    start = slashes + 2 if 0 <= slashes < at else text.find(":") + 1
    user, colon, _ = text[start:at].partition(":")
    return text[:start] + (f"{user}:***" if colon else "***") + text[at:]


def url_secrets(url: str) -> list[str]:
    """The secrets a database URL holds (its password and the values of password-like
    query options), each also as it appears percent-encoded, for the log scrubber."""
    parsed = _parsed_url(url)
    if parsed is None:
        return []
    values = [parsed.password] if parsed.password else []
    for name, value in parsed.query.items():
        if _is_secret_option(name):
            values.extend([value] if isinstance(value, str) else value)
    out: list[str] = []
    for value in values:
        for form in (value, quote(value, safe=""), quote_plus(value)):
            if form and form not in out:
                out.append(form)
    return out


# --- parsing and validation of each key ---------------------------------------------------


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value]
    raise ValueError("expected a list (or a comma-separated string)")


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not lo <= number <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return number

    return parse


def _parse_rate(value: Any) -> float:
    try:
        rate = float(str(value).strip())
    except ValueError:
        raise ValueError("expected a number of requests per second") from None
    if not 0 < rate <= 10000:
        raise ValueError("must be greater than 0 and at most 10000")
    return rate


def _parse_fraction(value: Any) -> Decimal:
    try:
        fraction = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("expected a fraction such as 0.5") from None
    if not (fraction.is_finite() and 0 < fraction <= 1):
        raise ValueError("must be greater than 0 and at most 1")
    return fraction


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_api_url(value: Any) -> str:
    url = str(value).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an https:// URL such as https://api.bird.com")
    try:
        port = parts.port  # urlsplit checks the port only when asked for it
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(
            "has a malformed port: expected a number from 1 to 65535 after the host's ':'"
        )
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; use access_key")
    if "?" in url or "#" in url:  # the listing's path and query are appended to it
        raise ValueError(
            "must not carry a query (?...) or a fragment (#...): give the API's address, "
            "e.g. https://api.bird.com, or a proxy's address with its path prefix"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            "plain http:// is refused for a host that is not loopback "
            "(the access key would travel unencrypted); use https://"
        )
    return url


def _parse_database_url(value: Any) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    url_text = str(value).strip()
    try:
        url = make_url(url_text)
    except ArgumentError:
        raise ValueError(
            "is not a database URL; expected e.g. sqlite:///numbers_stock.sqlite, "
            "postgresql+psycopg://user@host/db or mysql+pymysql://user@host/db"
        ) from None
    except ValueError:  # SQLAlchemy's int() of the port
        raise ValueError(
            "has a malformed host or port: the port must be a number and an IPv6 address "
            "goes in brackets, e.g. postgresql+psycopg://user@host:5432/db or "
            "postgresql+psycopg://user@[::1]:5432/db"
        ) from None
    if _stray_at(url):
        raise ValueError(
            "has more than one '@' before its host: percent-encode an '@' in the user name "
            "or password as %40 (and ':' as %3A, '/' as %2F)"
        )
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError("has a port outside 1..65535")
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(
            f"names an unknown database dialect or driver {url.drivername!r}; "
            "supported: sqlite, postgresql+psycopg, mysql+pymysql"
        ) from None
    if dialect.name not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise ValueError(
            f"names the {dialect.name!r} database, which numbers-etl does not support; "
            "use SQLite, PostgreSQL or MySQL/MariaDB"
        )
    if dialect.name in ("mysql", "mariadb") and not url.database:
        raise ValueError(
            "names no database, which MySQL/MariaDB needs: add it after the host, e.g. "
            "mysql+pymysql://user@host:3306/numbers (create it first with "
            "CREATE DATABASE numbers CHARACTER SET utf8mb4)"
        )
    try:
        dialect.import_dbapi()
    except ImportError:
        raise ValueError(_missing_driver(url, dialect.name)) from None
    problems = []  # every one at once
    unknown = _unknown_connect_options(url, dialect)
    if unknown:
        problems.append(
            f"has the connection option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(o) for o in unknown)}, which the {url.get_driver_name()} driver "
            "does not know; check the spelling or remove "
            f"{'them' if len(unknown) > 1 else 'it'} from the query string"
        )
    problems.extend(_bad_option_values(url))
    if problems:
        raise ValueError("; ".join(problems))
    return url_text


# The driver each database's extra installs (pip install 'numbers-etl[postgresql]').
_SHIPPED_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}


def _missing_driver(url: URL, database: str) -> str:
    """What to do when the URL's driver is not installed: install the extra that has it,
    or, for a driver the extras do not install (``mysql://`` means mysqlclient), name
    the URL that uses the one they do."""
    driver = url.get_driver_name()
    missing = f"needs the {driver!r} driver, which is not installed"
    shipped = _SHIPPED_DRIVERS.get(database)
    if shipped is None:
        return f"{missing}; use sqlite:///path/to/file.sqlite (Python's own sqlite3)"
    extra = "postgresql" if database == "postgresql" else "mysql"
    install = f"pip install 'numbers-etl[{extra}]'"
    if driver == shipped:
        return f"{missing}; install it with: {install}"
    return (
        f"{missing}; use the {shipped!r} driver that {install} installs: "
        f"start the URL with {database}+{shipped}:// (or install {driver!r} yourself)"
    )


# libpq's connection options that take one of a few words, or a whole number (libpq checks
# them only when it connects, where a typo would read as a database that is down).
_LIBPQ_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
    "sslcertmode": ("disable", "allow", "require"),
    "sslnegotiation": ("postgres", "direct"),
}
_LIBPQ_NUMBERS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
# Options that name a file the driver must open when it connects: a file that is not there
# is a mistake in the URL (PyMySQL failed with a traceback). libpq needs its root
# certificate only to verify the server (sslmode=verify-*), and skips a missing client
# certificate, key or CRL; "system" is its own word. Neither driver expands "~".
_FILE_OPTIONS = {
    "psycopg": ("sslrootcert",),
    "pymysql": ("ssl_ca", "ssl_cert", "ssl_key"),
}


def _verifies(url: URL) -> bool:
    """Whether libpq verifies the server's certificate (and so reads sslrootcert)."""
    mode = url.query.get("sslmode", "prefer")
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    return any(m.startswith("verify") for m in modes)


def _bad_option_values(url: URL) -> list[str]:
    """What is wrong with the values of ``url``'s connection options that its driver would
    only find when it connects."""
    driver = url.get_driver_name()
    problems = []
    for option, value in sorted(url.query.items()):
        values = (value,) if isinstance(value, str) else tuple(value)
        for one in values:
            if driver == "psycopg" and option in _LIBPQ_CHOICES:
                choices = _LIBPQ_CHOICES[option]
                if one not in choices:
                    problems.append(
                        f"has {option}={one!r}, which libpq does not know; use one of "
                        f"{', '.join(choices)}"
                    )
            elif driver == "psycopg" and option in _LIBPQ_NUMBERS:
                if not re.fullmatch(r"\s*-?[0-9]+\s*", one):
                    problems.append(f"has {option}={one!r}, which is not a whole number")
            elif (
                option in _FILE_OPTIONS.get(driver or "", ())
                and not (driver == "psycopg" and (one == "system" or not _verifies(url)))
                and not Path(one).is_file()
            ):
                problems.append(
                    f"has {option}={one!r}, a file that does not exist (or is not a file); "
                    "give the path of the file"
                    + (" (the driver does not expand '~')" if one.startswith("~") else "")
                )
    return problems


# sqlite3.connect()'s arguments SQLAlchemy takes from the query string, and, with uri=true,
# the parameters of SQLite's own URI filenames (https://www.sqlite.org/uri.html)
_PYSQLITE_OPTIONS = frozenset(
    ("uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements")
)
_SQLITE_URI_PARAMETERS = frozenset(
    ("vfs", "mode", "cache", "psow", "nolock", "immutable", "modeof")
)


def _unknown_connect_options(url: URL, dialect_cls: Any) -> list[str]:
    """The options of ``url``'s query string that its driver would refuse when it connects
    (psycopg: libpq's keywords; PyMySQL: its connect() arguments) or, on SQLite, ignore
    (SQLAlchemy only warns, and ``?mode=ro`` without ``uri=true`` wrote to the file)."""
    if not url.query:
        return []
    driver = url.get_driver_name()
    if driver not in ("psycopg", "pymysql", "pysqlite"):
        return []
    import warnings

    from sqlalchemy.exc import ArgumentError

    dialect = dialect_cls(dbapi=dialect_cls.import_dbapi())
    given = set(url.query)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLite's ignored options: named below instead
        try:  # the whole URL first: host and port lists must match (?host=h1,h2&port=p1,p2)
            dialect.create_connect_args(url)
        except ArgumentError as exc:
            raise ValueError(f"has connection options that do not fit together: {exc}") from None
        except (TypeError, ValueError):
            pass  # the option at fault is named below
        bad = []
        for option in sorted(given - {"host", "port"}):  # those two only make sense together
            try:
                dialect.create_connect_args(url.set(query={option: url.query[option]}))
            except (TypeError, ValueError, ArgumentError):  # a number or a boolean expected
                bad.append(option)
        _args, params = dialect.create_connect_args(url) if not bad else ((), {})
    if bad:
        raise ValueError(
            f"has a value the {driver} driver cannot use for the connection option"
            f"{'s' if len(bad) > 1 else ''} {', '.join(repr(o) for o in bad)}: "
            "a number or true/false is expected"
        )
    if driver == "pysqlite":
        uri = bool(params.get("uri", False))
        uri_options = sorted(given & _SQLITE_URI_PARAMETERS)
        # SQLite reads them only from a URI filename: uri=true and a name starting file:
        if uri_options and not (uri and (url.database or "").startswith("file:")):
            raise ValueError(
                f"has {', '.join(repr(o) for o in uri_options)}, which SQLite takes only "
                "from a URI filename: the path starting with file: and uri=true in the "
                "query string, as in sqlite:///file:numbers_stock.sqlite?mode=ro&uri=true "
                "(otherwise it is ignored, or becomes part of the file's name)"
            )
        sqlite_known = _PYSQLITE_OPTIONS | (_SQLITE_URI_PARAMETERS if uri else frozenset())
        return sorted(given - sqlite_known)
    if driver == "pymysql":
        import inspect

        import pymysql

        known = set(inspect.signature(pymysql.connections.Connection.__init__).parameters)
        return sorted(o for o in given if o not in known and o in params)
    from psycopg import Error as PsycopgError
    from psycopg.conninfo import make_conninfo

    unknown = []
    for option in sorted(given - {"autocommit", "prepare_threshold"}):
        try:
            make_conninfo("", **{option: "x"})
        except PsycopgError:
            unknown.append(option)
    return unknown


def _parse_countries(value: Any) -> tuple[str, ...]:
    codes = [c.upper() for c in _as_list(value)]
    bad = [c for c in codes if len(c) != 2 or pycountry.countries.get(alpha_2=c) is None]
    if bad:
        raise ValueError(
            f"{', '.join(bad)} "
            f"{'is not an' if len(bad) == 1 else 'are not'} ISO 3166-1 alpha-2 "
            f"country code{'' if len(bad) == 1 else 's'} (e.g. US, NL, GB)"
        )
    return tuple(dict.fromkeys(codes))


_PREFIX_RE = re.compile(r"^\+[1-9][0-9]{0,7}$")


def _parse_prefixes(value: Any) -> dict[str, tuple[str, ...]]:
    pairs: list[tuple[Any, Any]]
    if isinstance(value, str):  # environment form: US=+1212|+1646;NL=+3120
        pairs = []
        for part in filter(None, (p.strip() for p in value.split(";"))):
            country, sep, rest = part.partition("=")
            if not sep:
                raise ValueError("expected the form US=+1212|+1646;NL=+3120")
            pairs.append((country.strip(), [p for p in rest.split("|") if p.strip()]))
        example = "US=+1212|+1646"
    elif isinstance(value, Mapping):
        pairs = list(value.items())
        example = 'US = ["+1212", "+1646"]'
    else:
        raise ValueError('expected a table such as US = ["+1212", "+1646"]')
    # a later entry would replace an earlier one's areas (us and US in TOML, or US twice)
    codes = [str(c).upper() for c, _ in pairs]
    twice = sorted({cc for cc in codes if codes.count(cc) > 1})
    if twice:
        raise ValueError(
            f"{', '.join(twice)} {'is' if len(twice) == 1 else 'are'} given twice; "
            f"list all of a country's prefixes once, as in {example}"
        )
    out: dict[str, tuple[str, ...]] = {}
    for country, prefixes in pairs:
        cc = str(country).upper()
        items = [p.strip() for p in _as_list(prefixes)]
        bad = [p for p in items if not _PREFIX_RE.match(p)]
        if bad:
            raise ValueError(
                f"{cc}: {', '.join(repr(p) for p in bad)} is not an area code in "
                "international form such as '+1212'"
            )
        overlapping = sorted(
            f"{a} and {b}" for a in items for b in items if a != b and b.startswith(a)
        )
        if overlapping:
            raise ValueError(
                f"{cc}: prefixes {', '.join(overlapping)} overlap; each number must belong to "
                "one scope, so keep only the shorter prefix"
            )
        out[cc] = tuple(dict.fromkeys(items))
    return out


def _foreign_prefixes(country: str, prefixes: Sequence[str]) -> str | None:
    """The problem with the ``prefixes`` of ``country`` that no number of it can start with
    (outside its country calling code, e.g. NL = ["+1212"]), or None. Such a scope would
    always be empty: complete, and never a sign of anything wrong."""
    import phonenumbers

    calling_code = str(phonenumbers.country_code_for_region(country))
    if calling_code == "0":  # a region without a calling code of its own: nothing to check
        return None
    foreign = [
        p
        for p in prefixes
        if not (p[1:].startswith(calling_code) or calling_code.startswith(p[1:]))
    ]
    if not foreign:
        return None
    return (
        f"prefixes {country}: {', '.join(repr(p) for p in foreign)} cannot hold {country} "
        f"numbers, which start with +{calling_code}; give {country}'s area codes in "
        f"international form, e.g. '+{calling_code}...'"
    )


def _parse_types(value: Any) -> tuple[str, ...]:
    types = [t.lower() for t in _as_list(value)]
    bad = [t for t in types if t not in NUMBER_TYPES]
    if bad:
        raise ValueError(f"{', '.join(bad)}: expected any of {', '.join(NUMBER_TYPES)}")
    return tuple(dict.fromkeys(types))


MAX_INTERVAL_DAYS = 3650
_INTERVAL_RE = re.compile(r"^([1-9][0-9]*)\s*([smhd])$")


def _parse_schedule(value: Any) -> str:
    text = str(value).strip()
    if _INTERVAL_RE.match(text):
        parse_interval(text)  # within its bound
        return text
    try:
        crontab_trigger(text)
    except ValueError as exc:
        raise ValueError(
            f"is neither a cron expression ({exc}) nor an interval such as 30m or 6h"
        ) from None
    return text


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab's 0-6 (7 is sun too)


def _crontab_day(text: str) -> int:
    """A day of the week as cron reads it: 0-7 (0 and 7 are Sunday) or a name (sun is 0)."""
    name = text.lower()
    if name in _WEEKDAYS:
        return _WEEKDAYS.index(name)
    if name.isdigit() and int(name) <= 7:
        return int(name)
    raise ValueError(f"{text!r} is not a day of the week (0-7 or sun-sat)")


def _crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 is Sunday, 1 Monday) as APScheduler's names:
    its own numbers start at Monday, so `1-5` would run Tuesday to Saturday. Ranges are
    expanded as cron expands them (5-7 is Friday to Sunday), then 7 is Sunday."""
    if field.startswith("*") and "/" not in field:
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"{part!r}: the step must be a positive whole number")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            start, _, end = span.partition("-")
            first, last = _crontab_day(start), _crontab_day(end)
        else:
            first = _crontab_day(span)
            last = 6 if step else first
        if last < first:
            raise ValueError(f"{part!r}: a range must go forwards")
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


def crontab_trigger(text: str) -> Any:
    """An APScheduler CronTrigger in UTC that fires when ``crontab(5)`` would for the same
    five fields. Days of the week are counted as cron counts them; day of month and day of
    week may not both be restricted (cron fires on either, APScheduler on both)."""
    from apscheduler.triggers.cron import CronTrigger

    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, weekday = fields
    if not day.startswith("*") and not weekday.startswith("*"):
        raise ValueError(
            "day of month and day of week are both set; cron would run on either, which "
            "numbers-etl does not do: keep one of them '*'"
        )
    trigger = CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_crontab_weekdays(weekday),
        timezone="UTC",
    )
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError("it never fires: none of its months has that day, as with 31 February")
    return trigger


def _parse_str(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _parse_secret(value: Any) -> Secret:
    """The access key: printable ASCII without whitespace, as an HTTP header can carry it
    (a key with a line break inside once reached http.client, whose error showed it whole).
    The problem is named, never the key or where in it the character is."""
    text = _parse_str(value)
    if all("!" <= c <= "~" for c in text):
        return Secret(text)
    if any(c in "\r\n" for c in text):
        problem = "holds a line break (was a second line copied with it?)"
    elif any(c.isspace() for c in text):
        problem = "holds a space or another blank"
    elif not text.isascii():
        problem = "holds a character that is not ASCII (a copy from a web page or a document?)"
    else:
        problem = "holds a control character"
    raise ValueError(
        f"{problem}; an access key is printable ASCII without spaces or line breaks: copy "
        "the key again from Bird, alone and whole"
    )


PARSERS: dict[str, Callable[[Any], Any]] = {
    "database_url": _parse_database_url,
    "api_url": _parse_api_url,
    "access_key": _parse_secret,
    "organization_id": _parse_str,
    "countries": _parse_countries,
    "prefixes": _parse_prefixes,
    "types": _parse_types,
    "page_size": _int_in(1, 99),
    "max_requests_per_second": _parse_rate,
    "concurrency": _int_in(1, 64),
    "schedule": _parse_schedule,
    "removal_confirmations": _int_in(1, 1000),
    "max_removal_fraction": _parse_fraction,
    "max_pages": _int_in(1, 10_000_000),
    "lock_ttl_seconds": _int_in(10, 86400),
}
KEYS = tuple(PARSERS)


def parse_interval(text: str) -> int | None:
    """Seconds of an interval schedule such as ``30m``; None for a cron expression."""
    match = _INTERVAL_RE.match(text.strip())
    if not match:
        return None
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds > MAX_INTERVAL_DAYS * 86400:
        raise ValueError(f"{text!r} is longer than {MAX_INTERVAL_DAYS} days")
    return seconds


def _describe(key: str, value: Any) -> str:
    if key == "access_key":
        return "(hidden)"
    if key == "database_url":
        return repr(redact_url(str(value)))
    if key == "api_url":
        return repr(_hide_userinfo(str(value)))
    return repr(value)


def _hide_userinfo(url: str) -> str:
    """``url`` with whatever comes between its ``//`` and its last ``@`` hidden: an api_url
    is refused for carrying credentials, and its message must not show them (nor an access
    key pasted there)."""
    start = url.find("//") + 2 if "//" in url else 0
    at = url.rfind("@")
    return url if at < start else url[:start] + "***" + url[at:]


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        # utf-8-sig: a byte order mark, as some Windows editors write, is not an error
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        problems.append(f"config file {str(path)!r} does not exist; check --config / {CONFIG_ENV}")
        return {}
    except UnicodeDecodeError:
        problems.append(
            f"config file {str(path)!r} is not UTF-8 text; save it as UTF-8 (TOML files "
            "must be UTF-8)"
        )
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"config file {str(path)!r} cannot be read: {exc}")
        return {}
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        problems.append(
            f"config file {str(path)!r} has unknown keys {', '.join(unknown)}; "
            f"known keys: {', '.join(KEYS)}"
        )
    return {k: v for k, v in data.items() if k in KEYS}


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | Path | None = None,
    *,
    required: Sequence[str] = (),
) -> Settings:
    """Build Settings from flags > environment > TOML file > defaults.

    ``flags`` holds only the options given on the command line (None values are ignored).
    Raises ConfigError listing every invalid key and value, and every key of ``required``
    that has no value."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    problems: list[str] = []
    layers: list[tuple[str, dict[str, Any]]] = []

    path = config_path or env.get(CONFIG_ENV)
    if path:
        layers.append((f"file {path}", _read_file(Path(path), problems)))

    env_values: dict[str, Any] = {}
    for key in KEYS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            env_values[key] = env[name]
    key_file = env.get(ACCESS_KEY_FILE_ENV)
    if key_file and "access_key" not in env_values:
        try:
            env_values["access_key"] = Path(key_file).read_text(encoding="utf-8-sig").strip()
        except OSError as exc:
            problems.append(
                f"{ACCESS_KEY_FILE_ENV}={key_file!r} cannot be read ({exc.strerror}); "
                "point it at a file holding the access key"
            )
        except UnicodeDecodeError:
            problems.append(
                f"{ACCESS_KEY_FILE_ENV}={key_file!r} is not UTF-8 text (saved as UTF-16 by "
                "an editor?); write the access key to it as plain UTF-8 text"
            )
    layers.append(("env", env_values))
    layers.append(("flag", dict(flags)))

    # Each key's value from the highest layer that has it; only that one is checked (a bad
    # value in a shared file, overridden by this host's environment, is never used).
    chosen: dict[str, tuple[str, Any]] = {}
    for origin, layer in layers:
        for key, raw in layer.items():
            if origin == "env":
                where = f"env {ENV_PREFIX}{key.upper()}"
                if key == "access_key" and f"{ENV_PREFIX}ACCESS_KEY" not in env:
                    where = f"env {ACCESS_KEY_FILE_ENV}"
            elif origin == "flag":
                where = f"flag --{key.replace('_', '-')}"
            else:
                where = origin
            chosen[key] = (where, raw)

    values: dict[str, Any] = {}
    sources: dict[str, str] = dict.fromkeys(KEYS, "default")
    for key, (where, raw) in chosen.items():
        try:
            values[key] = PARSERS[key](raw)
        except ValueError as exc:
            problems.append(f"{key} = {_describe(key, raw)} ({where}): {exc}")
        sources[key] = where

    countries = values.get("countries", ())
    for country, prefixes in values.get("prefixes", {}).items():
        # (countries given but invalid is named above)
        if country not in countries and ("countries" in values or "countries" not in chosen):
            problems.append(
                f"prefixes names {country}, which is not in countries; add it to countries "
                "or remove its prefixes"
            )
        foreign = _foreign_prefixes(country, prefixes)
        if foreign:
            problems.append(foreign)
    for key in required:
        if key in values:
            value = values[key]
        elif key in chosen:
            continue  # given, but invalid: named above
        else:
            value = getattr(Settings, key, None)
        if value in (None, (), "") and key in chosen:  # an empty NUMBERS_ETL_COUNTRIES= ...
            where, raw = chosen[key]
            problems.append(
                f"{key} = {_describe(key, raw)} ({where}): is empty, and a value is required; "
                "give one there, or remove it (an empty value overrides the layers below it, "
                "such as the config file)"
            )
        elif value in (None, (), ""):
            problems.append(required_problem(key))
    if problems:
        raise ConfigError(problems)
    return Settings(**values, sources=sources)
