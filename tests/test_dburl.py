"""DATABASE_URL and INSTANCE_NAME: parsed at startup, refused with one line, the password never shown."""

import pytest
from mitmproxy.test import taddons

from rerouter.dburl import mask_in
from rerouter.dburl import masked
from rerouter.dburl import parse_database_url
from rerouter.settings import DATABASE_URL
from rerouter.settings import INSTANCE_NAME
from rerouter.settings import Settings
from tests.helpers import start

SECRET = "Sup3r-s3cret"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://rerouter:{SECRET}@db:5432/rerouter",
        f"postgres://rerouter:{SECRET}@db/rerouter?sslmode=require",
        f"postgresql://rerouter@db1:5432,db2:5433/rerouter?password={SECRET}",
        "postgresql:///rerouter",
    ],
)
def test_urls_libpq_takes_are_kept_as_given(url):
    assert parse_database_url(f"  {url} ") == url


def test_empty_means_sqlite():
    assert parse_database_url("") == parse_database_url("   ") == ""


@pytest.mark.parametrize(
    "url, problem",
    [
        (f"mysql://rerouter:{SECRET}@db/rerouter", "expected postgresql://user:password@host:port/database"),
        (f"rerouter:{SECRET}@db/rerouter", "expected postgresql://user:password@host:port/database, got no URL"),
        (f"host=db password={SECRET}", "got no URL"),
        (f"{SECRET}://db/rerouter", "got no URL"),
        (f"postgresql://rerouter:{SECRET}@db:99999/rerouter", "invalid port '99999'"),
        (f"postgresql://rerouter:{SECRET}@db:port/rerouter", "invalid"),
        (f"postgresql://rerouter:{SECRET}@db/rerouter?nonsense={SECRET}", 'invalid URI query parameter: "nonsense"'),
    ],
)
def test_bad_urls_are_refused_without_the_password(url, problem):
    with pytest.raises(ValueError) as refused:
        DATABASE_URL.read(url)
    message = str(refused.value)
    assert message.startswith("DATABASE_URL (option database_url): ")
    assert problem in message
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url, shown",
    [
        (f"postgresql://rerouter:{SECRET}@db:5432/logs", "postgresql://rerouter:***@db:5432/logs"),
        (f"postgresql://rerouter:{SECRET}@x@db/logs", "postgresql://rerouter:***@db/logs"),
        (f"postgresql://db/logs?user=u&password={SECRET}&sslmode=require", "postgresql://db/logs?user=u&password=***&sslmode=require"),
        ("postgresql://rerouter@db/logs", "postgresql://rerouter@db/logs"),
    ],
)
def test_masked(url, shown):
    assert masked(url) == shown


def test_mask_in_covers_every_spelling_of_the_password():
    url = "postgresql://rerouter:p%40ss-w0rd@db/logs"
    message = f"connecting to {url} as rerouter with p@ss-w0rd (p%40ss-w0rd) failed"
    assert mask_in(message, url) == "connecting to postgresql://rerouter:***@db/logs as rerouter with *** (***) failed"


@pytest.mark.parametrize("name", ["x" * 201, "replica\n1", "tab\there"])
def test_bad_instance_names_are_refused(name):
    with pytest.raises(ValueError, match=r"^INSTANCE_NAME \(option instance_name\): expected a printable name"):
        INSTANCE_NAME.read(name)


def test_settings_read_both_from_the_environment(settings_env):
    url = f"postgresql://rerouter:{SECRET}@db:5432/rerouter"
    settings_env.setenv("DATABASE_URL", url)
    settings_env.setenv("INSTANCE_NAME", " replica-a ")
    settings = Settings()
    with taddons.context(settings) as tctx:
        start(tctx, settings)
        assert settings.database_url == url
        assert settings.instance_name == "replica-a"


def test_defaults(settings_env):
    settings = Settings()
    with taddons.context(settings) as tctx:
        start(tctx, settings)
        assert settings.database_url == ""
        assert settings.instance_name == ""


def test_bad_url_stops_startup_with_one_line_and_no_password(rerouter):
    proxy = rerouter(env={"DATABASE_URL": f"mysql://rerouter:{SECRET}@127.0.0.1:9/rerouter"}, ready=False)
    assert proxy.wait_exit() != 0
    assert proxy.output.strip().splitlines() == [
        "DATABASE_URL (option database_url): expected postgresql://user:password@host:port/database, got a mysql:// URL"
    ]
