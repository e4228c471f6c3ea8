"""Configuration: precedence, validation with every problem reported together, secrets."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from etl.config import (
    DEFAULT_DATABASE_URL,
    Secret,
    load_settings,
    parse_interval,
    redact_url,
    url_secrets,
)
from etl.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "numbers-etl.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings(env={})
    assert s.database_url == DEFAULT_DATABASE_URL
    assert s.api_url == "https://api.bird.com"
    assert (s.page_size, s.concurrency, s.max_pages) == (99, 4, 100000)
    assert s.max_requests_per_second == 20
    assert s.removal_confirmations == 1
    assert s.max_removal_fraction == Decimal("0.5")
    assert s.schedule == "0 */6 * * *"
    assert s.access_key is None
    assert set(s.sources.values()) == {"default"}


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, 'countries = ["US"]\npage_size = 10\nconcurrency = 2\nmax_pages = 7\n')
    env = {"NUMBERS_ETL_PAGE_SIZE": "20", "NUMBERS_ETL_CONCURRENCY": "3"}
    s = load_settings({"concurrency": "5"}, env=env, config_path=path)
    assert s.countries == ("US",)
    assert s.page_size == 20
    assert s.concurrency == 5
    assert s.max_pages == 7
    assert s.removal_confirmations == 1
    assert s.sources["countries"] == f"file {path}"
    assert s.sources["page_size"] == "env NUMBERS_ETL_PAGE_SIZE"
    assert s.sources["concurrency"] == "flag --concurrency"
    assert s.sources["removal_confirmations"] == "default"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'countries = "nl, us"\n')
    s = load_settings(env={"NUMBERS_ETL_CONFIG": str(path)})
    assert s.countries == ("NL", "US")


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    env = {
        "NUMBERS_ETL_COUNTRIES": "US,XX,ZZ",
        "NUMBERS_ETL_PAGE_SIZE": "100",
        "NUMBERS_ETL_API_URL": "http://api.bird.com",
        "NUMBERS_ETL_SCHEDULE": "every tuesday",
        "NUMBERS_ETL_MAX_REMOVAL_FRACTION": "1.5",
        "NUMBERS_ETL_DATABASE_URL": "oracle://scott@db/orcl",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    problems = caught.value.problems
    assert len(problems) == 6
    text = str(caught.value)
    assert "countries = 'US,XX,ZZ' (env NUMBERS_ETL_COUNTRIES): XX, ZZ are not ISO 3166-1" in text
    assert "page_size = '100' (env NUMBERS_ETL_PAGE_SIZE): must be between 1 and 99" in text
    assert "plain http:// is refused for a host that is not loopback" in text
    assert "schedule = 'every tuesday'" in text
    assert "max_removal_fraction = '1.5'" in text
    assert "'oracle'" in text


@pytest.mark.parametrize("url", ["http://127.0.0.1:8787", "http://localhost:1", "http://[::1]:9"])
def test_plain_http_is_allowed_to_loopback(url: str) -> None:
    assert load_settings(env={"NUMBERS_ETL_API_URL": url}).api_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is not a database URL"),
        ("nosuchdb://x/y", "unknown database dialect or driver 'nosuchdb'"),
        ("postgresql+nosuchdriver://u@h/db", "unknown database dialect or driver"),
        # no database: every command died in SQLAlchemy's has_table (an AssertionError)
        ("mysql+pymysql://root@127.0.0.1:3306", "names no database, which MySQL/MariaDB"),
        ("mysql+pymysql://root@127.0.0.1:3306/", "names no database"),
        ("mariadb+pymysql://root@localhost", "names no database"),
    ],
)
def test_bad_database_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={"NUMBERS_ETL_DATABASE_URL": url})


def test_database_password_is_hidden_in_errors_and_redacted_view() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"NUMBERS_ETL_DATABASE_URL": "nosuchdb://app:hunter2secret@h/db"})
    assert "hunter2secret" not in str(caught.value)
    s = load_settings(env={"NUMBERS_ETL_DATABASE_URL": "postgresql+psycopg://app:pw123456@h/db"})
    assert "pw123456" not in str(s.redacted())


def test_access_key_from_file_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk_live_very_secret\n", encoding="utf-8")
    s = load_settings(env={"NUMBERS_ETL_ACCESS_KEY_FILE": str(key_file)})
    assert s.access_key == Secret("sk_live_very_secret")
    assert s.sources["access_key"] == "env NUMBERS_ETL_ACCESS_KEY_FILE"
    assert "sk_live" not in repr(s)
    assert "sk_live" not in str(s.redacted())
    assert s.redacted()["access_key"] == "***"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("sk_live_first\nsk_live_second", "holds a line break"),
        ("sk_live_first\r\nsk_live_second", "holds a line break"),
        ("sk_live first", "holds a space or another blank"),
        ("sk_live\tfirst", "holds a space or another blank"),
        ("sk_live\u00a0first", "holds a space or another blank"),
        ("sk_live\u200bfirst", "not ASCII"),
        ("sk_live_caf\u00e9_first", "not ASCII"),
        ("sk_live\x00first", "holds a control character"),
        ("sk_live\x7ffirst", "holds a control character"),
    ],
)
def test_an_access_key_an_http_header_cannot_carry_is_refused(
    tmp_path: Path, key: str, problem: str
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n", encoding="utf-8")
    for env in (
        {"NUMBERS_ETL_ACCESS_KEY": key},
        {"NUMBERS_ETL_ACCESS_KEY_FILE": str(key_file)},
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(env=env)
        (message,) = caught.value.problems
        assert message.startswith("access_key = (hidden) (env NUMBERS_ETL_ACCESS_KEY")
        assert problem in message
        assert "printable ASCII without spaces or line breaks" in message
        assert "sk_live" not in str(caught.value)
        assert "first" not in str(caught.value)


def test_missing_access_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"NUMBERS_ETL_ACCESS_KEY_FILE=.*cannot be read"):
        load_settings(env={"NUMBERS_ETL_ACCESS_KEY_FILE": str(tmp_path / "nope")})


def test_require_names_each_missing_key() -> None:
    s = load_settings(env={})
    with pytest.raises(ConfigError) as caught:
        s.require("access_key", "organization_id", "countries")
    assert len(caught.value.problems) == 3
    assert "NUMBERS_ETL_ACCESS_KEY_FILE" in caught.value.problems[0]


def test_prefixes_toml_and_env_forms(tmp_path: Path) -> None:
    path = write(tmp_path, 'countries = ["US", "NL"]\n[prefixes]\nUS = ["+1212", "+1646"]\n')
    assert load_settings(env={}, config_path=path).prefixes == {"US": ("+1212", "+1646")}
    env = {"NUMBERS_ETL_COUNTRIES": "US,NL", "NUMBERS_ETL_PREFIXES": "US=+1212|+1646;NL=+3120"}
    assert load_settings(env=env).prefixes == {"US": ("+1212", "+1646"), "NL": ("+3120",)}


@pytest.mark.parametrize(
    ("prefixes", "message"),
    [
        ("US=1212", "is not an area code in international form"),
        ("US=+1212|+12125", "overlap"),
        ("GB=+4420", "prefixes names GB, which is not in countries"),
        # the later entry replaced the earlier one: +1212 was no longer synced, silently
        ("US=+1212;US=+1646", "US is given twice"),
        ("US=+1212;us=+1646", "US is given twice"),
    ],
)
def test_bad_prefixes(prefixes: str, message: str) -> None:
    env = {"NUMBERS_ETL_COUNTRIES": "US", "NUMBERS_ETL_PREFIXES": prefixes}
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_a_country_twice_in_the_prefixes_table_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'countries = ["US"]\n[prefixes]\nus = ["+1212"]\nUS = ["+1646"]\n')
    with pytest.raises(ConfigError, match="US is given twice"):
        load_settings(env={}, config_path=path)


@pytest.mark.parametrize(
    ("prefixes", "shown"),
    [
        ("NL=+1212", "'+1212' cannot hold NL numbers, which start with +31"),
        ("NL=+3120|+4420", "'+4420' cannot hold NL numbers"),
        ("US=+44", "'+44' cannot hold US numbers, which start with +1"),
    ],
)
def test_a_prefix_outside_its_countrys_calling_code_is_refused(prefixes: str, shown: str) -> None:
    # such a scope would always be empty: complete, with nothing to say that it is wrong
    env = {"NUMBERS_ETL_COUNTRIES": "NL,US", "NUMBERS_ETL_PREFIXES": prefixes}
    with pytest.raises(ConfigError, match=re.escape(shown)):
        load_settings(env=env)


def test_prefixes_inside_the_calling_code_are_accepted() -> None:
    env = {
        "NUMBERS_ETL_COUNTRIES": "NL,US,CA,GB",
        # +1 is shared by the US and Canada; +4 is shorter than GB's +44, and holds all of it
        "NUMBERS_ETL_PREFIXES": "NL=+3120|+3110;US=+1212;CA=+1416;GB=+4",
    }
    assert load_settings(env=env).prefixes["CA"] == ("+1416",)


def test_an_invalid_value_overridden_by_a_higher_layer_is_never_checked(tmp_path: Path) -> None:
    # a bad value in a shared file, fixed for this host by its environment or a flag
    path = write(tmp_path, 'page_size = 500\ncountries = "XX"\n')
    settings = load_settings(
        flags={"countries": "US"}, env={"NUMBERS_ETL_PAGE_SIZE": "50"}, config_path=path
    )
    assert (settings.page_size, settings.countries) == (50, ("US",))
    assert settings.sources["page_size"] == "env NUMBERS_ETL_PAGE_SIZE"
    # the value that wins is still checked
    with pytest.raises(ConfigError, match="page_size = '500'"):
        load_settings(env={"NUMBERS_ETL_PAGE_SIZE": "500"}, config_path=write(tmp_path, ""))


def test_missing_required_keys_are_reported_with_the_invalid_values() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            env={"NUMBERS_ETL_PAGE_SIZE": "500", "NUMBERS_ETL_COUNTRIES": "XX"},
            required=("access_key", "organization_id", "countries"),
        )
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert problems[0].startswith("countries = 'XX'")  # invalid: not also "is required"
    assert problems[1].startswith("page_size = '500'")
    assert problems[2].startswith("access_key is required")
    assert problems[3].startswith("organization_id is required")


def test_unknown_keys_in_file_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "page_sise = 10\n")
    with pytest.raises(ConfigError, match="unknown keys page_sise"):
        load_settings(env={}, config_path=path)


def test_unreadable_toml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "countries = [\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(env={}, config_path=path)


def test_a_required_key_set_empty_names_where_it_was_set_empty(tmp_path: Path) -> None:
    """A blank NUMBERS_ETL_COUNTRIES= (an EnvironmentFile's empty line) overrode the file,
    and the message said to set countries in the config file, which already did."""
    path = write(tmp_path, 'countries = ["US"]\n')
    env = {"NUMBERS_ETL_COUNTRIES": " "}
    with pytest.raises(ConfigError) as raised:
        load_settings(env=env, config_path=path, required=("countries",))
    (problem,) = raised.value.problems
    assert problem.startswith("countries = ' ' (env NUMBERS_ETL_COUNTRIES): is empty")
    assert "overrides the layers below it" in problem
    assert load_settings(env={}, config_path=path, required=("countries",)).countries == ("US",)


def test_schedule_forms() -> None:
    assert load_settings(env={"NUMBERS_ETL_SCHEDULE": "30m"}).schedule == "30m"
    assert load_settings(env={"NUMBERS_ETL_SCHEDULE": "*/5 * * * *"}).schedule == "*/5 * * * *"
    assert parse_interval("30m") == 1800
    assert parse_interval("6h") == 21600
    assert parse_interval("0 */6 * * *") is None


SECRET = "s3cretpw"


@pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_a_cron_expression_that_never_fires_is_refused(cron: str) -> None:
    """It passed validation, then `schedule` crashed on the first run it could not find
    (exit 1, which the service restarts every 30 s), or idled for ever after --run-now."""
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"NUMBERS_ETL_SCHEDULE": cron})
    assert f"schedule = {cron!r} (env NUMBERS_ETL_SCHEDULE)" in str(raised.value)
    assert "it never fires" in str(raised.value)


def test_a_cron_expression_that_fires_once_in_four_years_is_accepted() -> None:
    assert load_settings(env={"NUMBERS_ETL_SCHEDULE": "0 0 29 2 *"}).schedule == "0 0 29 2 *"


@pytest.mark.parametrize("url", ["https://api.bird.com:0", "https://api.bird.com:99999"])
def test_an_api_url_with_a_malformed_port_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="has a malformed port"):
        load_settings(env={"NUMBERS_ETL_API_URL": url})


@pytest.mark.parametrize(
    "url", ["https://api.bird.com?x=1", "https://api.bird.com/?", "https://api.bird.com/#top"]
)
def test_an_api_url_with_a_query_or_fragment_is_refused(url: str) -> None:
    """The listing's path was appended after the query (`...?x=1/organizations/...`)."""
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"NUMBERS_ETL_API_URL": url})
    assert f"api_url = {url!r} (env NUMBERS_ETL_API_URL): must not carry a query" in str(
        raised.value
    )


def test_an_api_url_keeps_its_path_prefix() -> None:
    """A gateway's path prefix goes before the listing's path, not dropped."""
    from etl.source.client import BirdClient
    from etl.source.ratelimit import RateLimiter

    url = load_settings(env={"NUMBERS_ETL_API_URL": "https://gw.example.com/bird/"}).api_url
    client = BirdClient(url, Secret("k"), "org", rate_limiter=RateLimiter(10))
    assert client._target({"limit": 99}) == ("/bird/organizations/org/numbers-stock-items?limit=99")


@pytest.mark.parametrize(
    "url",
    [
        f"https://apiuser:{SECRET}@api.bird.com",
        f"https://{SECRET}@api.bird.com",
        f"https://u:{SECRET}/x@api.bird.com",  # a '/' in the password: urlsplit's netloc ends
        f"http://u:{SECRET}@pw@127.0.0.1:8787",
    ],
)
def test_an_api_url_refused_for_its_credentials_does_not_show_them(url: str) -> None:
    """The value was refused because it carries credentials, and the message quoted it."""
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"NUMBERS_ETL_API_URL": url})
    message = str(raised.value)
    # with the '/', the host is 'u' and the rest its port
    assert ("malformed port" if "/x@" in url else "must not carry credentials") in message
    assert SECRET not in message
    assert "api_url = '" + url.split("//")[0] + "//***@" in message


# --- database URLs: passwords hidden, malformed ones named ----------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://root@127.0.0.1/test?password={SECRET}",
        f"postgresql+psycopg://root@127.0.0.1/test?sslmode=require&sslpassword={SECRET}",
        f"postgresql+psycopg://u:other-pw@h/db?password={SECRET}&password=two",
        f"mysql+pymysql://root@127.0.0.1/test?password={SECRET}",
        f"mysql+pymysql://root@127.0.0.1/test?passwd={SECRET}&charset=utf8mb4",
        f"mysql+pymysql://root@127.0.0.1/test?ssl_key={Path(__file__)}&ssl_key_password={SECRET}",
    ],
)
def test_passwords_in_the_query_string_are_hidden(url: str) -> None:
    shown = redact_url(url)
    assert SECRET not in shown
    assert "=***" in shown
    assert SECRET in url_secrets(url)
    s = load_settings(env={"NUMBERS_ETL_DATABASE_URL": url})
    assert SECRET not in str(s.redacted())


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://root@127.0.0.1/test?pasword={SECRET}",
        f"mysql+pymysql://root@127.0.0.1/test?paswd={SECRET}",
        f"postgresql+psycopg://root@127.0.0.1/test?pw={SECRET}",
    ],
)
def test_a_misspelt_password_option_is_refused_without_its_value(url: str) -> None:
    with pytest.raises(ConfigError, match=r"which the .* driver does not know") as caught:
        load_settings(env={"NUMBERS_ETL_DATABASE_URL": url})
    assert SECRET not in str(caught.value)
    assert "=***" in str(caught.value)


def test_other_query_options_stay_visible() -> None:
    url = f"postgresql+psycopg://u:{SECRET}@h/db?sslmode=require&application_name=etl"
    assert redact_url(url) == (
        "postgresql+psycopg://u:***@h/db?application_name=etl&sslmode=require"
    )


def test_url_secrets_include_the_percent_encoded_forms() -> None:
    url = "postgresql+psycopg://u:p%40ss%2Fword@h/db?password=a%26b"
    secrets = url_secrets(url)
    assert {"p@ss/word", "p%40ss%2Fword", "a&b", "a%26b"} <= set(secrets)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # no ':' after the scheme: SQLAlchemy cannot parse it
        (f"postgresql+psycopg//u:{SECRET}@h/db", "postgresql+psycopg//u:***@h/db"),
        # an '@' in the password that was not percent-encoded
        (f"postgresql+psycopg://u:{SECRET}@pw@h/db", "postgresql+psycopg://u:***@h/db"),
        # ... and a '/' after it: the password's end parsed as a host, its rest a database
        (
            f"postgresql+psycopg://u:Xy@Zq/{SECRET}@h:5432/db",
            "postgresql+psycopg://u:***@h:5432/db",
        ),
        (f"mysql+pymysql://u:Xy@Zq/{SECRET}@h/db", "mysql+pymysql://u:***@h/db"),
        (
            f"postgresql+psycopg://u:{SECRET}@h:notaport/db",
            "postgresql+psycopg://u:***@h:notaport/db",
        ),
        (f"postgresql+psycopg:u:{SECRET}@h/db", "postgresql+psycopg:u:***@h/db"),
        (f"pg{SECRET}@h/db", "***@h/db"),
        (f"nonsense//u@h/db?password={SECRET}", "nonsense//***@h/db?password=***"),
    ],
)
def test_credentials_of_an_unparsable_url_are_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"postgresql+psycopg://u:{SECRET}@h:notaport/db", "has a malformed host or port"),
        (f"postgresql+psycopg://u:{SECRET}@h:5432:5432/db", "has a malformed host or port"),
        (f"postgresql+psycopg://u:{SECRET}@[::1/db", "has a malformed host or port"),
        (f"postgresql+psycopg://u:{SECRET}@h:70000/db", "has a port outside 1..65535"),
        (f"postgresql+psycopg://u:{SECRET}@pw@h/db", "percent-encode an '@'"),
        (f"postgresql+psycopg://u:Xy@Zq/{SECRET}@h:5432/db", "percent-encode an '@'"),
        (f"postgresql+psycopg//u:{SECRET}@h/db", "is not a database URL"),
    ],
)
def test_malformed_database_url_is_a_config_error_without_the_password(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(env={"NUMBERS_ETL_DATABASE_URL": url})
    assert "database_url = " in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql+psycopg://root@127.0.0.1/test?foo=bar",
            "has the connection option 'foo', which the psycopg driver does not know",
        ),
        (
            "mysql+pymysql://root@127.0.0.1/test?foo=bar&bar=1",
            "has the connection options 'bar', 'foo', which the pymysql driver does not know",
        ),
        (
            "mysql+pymysql://root@127.0.0.1/test?connect_timeout=soon",
            "cannot use for the connection option 'connect_timeout'",
        ),
        (
            "postgresql+psycopg://root@/test?host=h1,h2&port=5432",
            "has connection options that do not fit together: .*hosts and ports",
        ),
        # SQLite: SQLAlchemy raised a bare ValueError (a traceback) for a value it cannot
        # convert, and only warned about an option it then ignored
        ("sqlite:///x.sqlite?timeout=abc", "cannot use for the connection option 'timeout'"),
        (
            "sqlite:///x.sqlite?check_same_thread=maybe&cached_statements=x",
            "connection options 'cached_statements', 'check_same_thread': a number or",
        ),
        (
            "sqlite:///x.sqlite?foo=bar",
            "has the connection option 'foo', which the pysqlite driver does not know",
        ),
        ("sqlite:///x.sqlite?uri=true&foo=bar", "the connection option 'foo'"),
        # ignored without uri=true: `db upgrade` then wrote to the file it was to only read
        ("sqlite:///x.sqlite?mode=ro", "has 'mode', which SQLite takes only from a URI"),
        # uri=true without file: SQLite wrote a new file named "x.sqlite?mode=ro"
        ("sqlite:///x.sqlite?mode=ro&uri=true", "the path starting with file: and uri=true"),
    ],
)
def test_unknown_connection_option_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={"NUMBERS_ETL_DATABASE_URL": url})


@pytest.mark.parametrize(
    ("query", "message"),
    [
        # libpq checks these only when it connects: the run failed as if the database were
        # down (exit 1); PyMySQL failed with a FileNotFoundError traceback
        ("postgresql+psycopg:?sslmode=bogus", "sslmode='bogus', which libpq does not know; use"),
        (  # both at once: the value was reported only once the name was fixed
            "postgresql+psycopg:?sslmode=bogus&connect_timeut=3",
            "'connect_timeut', which the psycopg driver does not know; check the spelling or "
            "remove it from the query string; has sslmode='bogus'",
        ),
        ("postgresql+psycopg:?target_session_attrs=rw", "target_session_attrs='rw'"),
        ("postgresql+psycopg:?connect_timeout=abc", "connect_timeout='abc', which is not a whole"),
        ("postgresql+psycopg:?keepalives_idle=1m", "keepalives_idle='1m'"),
        (
            "postgresql+psycopg:?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "sslrootcert='/nonexistent/ca.pem', a file that does not exist",
        ),
        ("mysql+pymysql:?ssl_ca=~/ca.pem", "(the driver does not expand '~')"),
        ("mysql+pymysql:?ssl_ca=/nonexistent/ca.pem", "ssl_ca='/nonexistent/ca.pem', a file"),
        ("mysql+pymysql:?ssl_cert=/nonexistent/c.pem", "ssl_cert='/nonexistent/c.pem', a file"),
    ],
)
def test_a_connection_option_value_the_driver_would_refuse_is_a_config_error(
    query: str, message: str
) -> None:
    scheme, options = query.split(":")
    url = f"{scheme}://root:{SECRET}@127.0.0.1/test{options}"
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_settings(env={"NUMBERS_ETL_DATABASE_URL": url})
    assert SECRET not in str(caught.value)


def test_libpq_reads_its_system_root_certificates() -> None:
    url = "postgresql+psycopg://root@127.0.0.1/test?sslmode=verify-full&sslrootcert=system"
    assert load_settings(env={"NUMBERS_ETL_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://root@127.0.0.1/test?sslmode=prefer&connect_timeout=5"
        "&application_name=etl&password=x&options=-c%20statement_timeout%3D0",
        "mysql+pymysql://root@127.0.0.1/test?charset=utf8mb4&connect_timeout=5&passwd=x"
        f"&ssl_ca={Path(__file__)}&ssl_check_hostname=false",
        "sqlite:///numbers_stock.sqlite?timeout=30",
        "sqlite:///numbers_stock.sqlite?timeout=2.5&check_same_thread=false",
        "sqlite:///file:numbers_stock.sqlite?mode=ro&uri=true",
        "sqlite:///file:numbers_stock.sqlite?cache=shared&immutable=1&uri=1",
        # several hosts, as SQLAlchemy documents them for libpq
        "postgresql+psycopg://root@/test?host=127.0.0.1,127.0.0.1&port=5432,5432",
        "postgresql+psycopg://root@/test?host=127.0.0.1:5432&host=127.0.0.1:5433",
    ],
)
def test_known_connection_options_are_accepted(url: str) -> None:
    assert load_settings(env={"NUMBERS_ETL_DATABASE_URL": url}).database_url == url


# --- files that are not UTF-8 -------------------------------------------------------------


def test_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "numbers-etl.toml"
    path.write_bytes('countries = ["US"]\n'.encode("utf-16"))
    with pytest.raises(ConfigError, match=r"numbers-etl.toml' is not UTF-8 text; save it as"):
        load_settings(env={}, config_path=path)


def test_access_key_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes("sk_live_very_secret\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"NUMBERS_ETL_ACCESS_KEY_FILE=.* is not UTF-8 text"):
        load_settings(env={"NUMBERS_ETL_ACCESS_KEY_FILE": str(key_file)})


def test_a_utf8_byte_order_mark_is_not_part_of_a_value(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes("\ufeffsk_live_very_secret\n".encode())
    path = tmp_path / "numbers-etl.toml"
    path.write_bytes('\ufeffcountries = ["US"]\n'.encode())
    s = load_settings(env={"NUMBERS_ETL_ACCESS_KEY_FILE": str(key_file)}, config_path=path)
    assert s.access_key == Secret("sk_live_very_secret")
    assert s.countries == ("US",)


def test_an_at_sign_in_a_sqlite_path_is_a_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/user@corp/numbers.sqlite"
    assert load_settings(env={"NUMBERS_ETL_DATABASE_URL": url}).database_url == url
    assert "***" not in redact_url(url)  # no password to hide


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        # mysqlclient, which SQLAlchemy takes for mysql://, is not the driver the extra has
        ("mysql://root@127.0.0.1/test", r"start the URL with mysql\+pymysql://"),
        ("mariadb+mysqldb://root@127.0.0.1/test", r"start the URL with mariadb\+pymysql://"),
        ("postgresql+psycopg2://root@127.0.0.1/test", r"start the URL with postgresql\+psycopg://"),
        ("sqlite+pysqlcipher:///x.sqlite", r"use sqlite:///path/to/file.sqlite"),
    ],
)
def test_a_driver_that_is_not_installed_is_named_with_the_one_to_use(url: str, advice: str) -> None:
    with pytest.raises(ConfigError, match=r"driver, which is not installed; .*" + advice):
        load_settings(env={"NUMBERS_ETL_DATABASE_URL": url})
