"""Credentials never leave a URL in clear: properties over generated URLs (a password in the user info, under
any credential key at any position of the query, raw or URL-encoded), and the messages that quote them."""

from __future__ import annotations

import re
import string
from urllib.parse import quote, quote_plus, unquote

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from cnnlab.redact import is_secret_key, mask_secrets, mask_url

HOLE = "\x00"  # where the secret goes in a URL template

SECRET_KEYS = ["password", "passwd", "pwd", "pass", "secret", "token", "access_token", "api_key", "apikey", "key",
               "auth", "sslpassword", "client_secret", "db_password", "X-Amz-Signature"]
OTHER_FIELDS = ["sslmode=require", "application_name=cnnlab", "connect_timeout=10", "options=-c%20search_path%3Dx",
                "authSource=admin", "user=bob", "target_session_attrs=any", "experiment=7"]

# How a password can be written: (alphabet, how it is put into the URL)
RAW_USERINFO = string.ascii_letters + string.digits + "@:!$-_.~&=+%*'()"  # raw @ and : (urlsplit's reading)
RAW_USERINFO_SLASH = string.ascii_letters + string.digits + "/?:#=&%!"      # raw / ? # (SQLAlchemy's reading)
RAW_QUERY = string.ascii_letters + string.digits + "@:/?=%+#!$*'"          # anything but &
ANY = string.ascii_letters + string.digits + "@:/?&=%#+ !$*'\"[]"


def key_spellings(key: str):
    return st.sampled_from([key, key.upper(), key.title(), "".join(f"%{ord(c):02X}" for c in key)])


@st.composite
def urls(draw):
    """(url, template with HOLE for each secret, password)."""
    mode_user = draw(st.sampled_from([None, "raw", "raw-slash", "quote"]))
    mode_query = draw(st.sampled_from([None, "raw", "quote", "quote_plus"]) if mode_user else
                      st.sampled_from(["raw", "quote", "quote_plus"]))
    if mode_user == "raw" and mode_query != "raw":
        alphabet = RAW_USERINFO
    elif mode_user == "raw-slash":
        alphabet = RAW_USERINFO_SLASH.replace("&", "") if mode_query == "raw" else RAW_USERINFO_SLASH
    elif mode_user == "raw" or mode_query == "raw":
        alphabet = "".join(c for c in (RAW_USERINFO if mode_user == "raw" else ANY) if c in RAW_QUERY)
    else:
        alphabet = ANY
    password = draw(st.text(alphabet=alphabet, min_size=4, max_size=16))
    if mode_user == "raw-slash":  # a raw ? then = reads as a query (host/db?key=a@b): see the xfail example
        assume(password[0].isalpha() and "@" not in password and not re.search(r"[?#].*=", password))
    scheme = draw(st.sampled_from(["postgresql", "postgresql+psycopg", "mysql", "http", "https"]))
    host = draw(st.sampled_from(["127.0.0.1", "db.example.com", "[::1]", "localhost"]))
    port = draw(st.sampled_from(["", ":5432", ":1"]))
    path = draw(st.sampled_from(["/db", "/mlflow/api", ""]))
    encode = {"raw": lambda s: s, "raw-slash": lambda s: s, "quote": lambda s: quote(s, safe=""),
              "quote_plus": quote_plus}
    userinfo = ""
    if mode_user:
        userinfo = draw(st.sampled_from(["u", "cnnlab", ""])) + ":" + HOLE + "@"
    fields = draw(st.lists(st.sampled_from(OTHER_FIELDS), max_size=3, unique=True))
    if mode_query:
        key = draw(st.sampled_from(SECRET_KEYS).flatmap(key_spellings))
        fields.insert(draw(st.integers(0, len(fields))), f"{key}={HOLE}")
    query = "?" + "&".join(fields) if fields else ""
    template = f"{scheme}://{userinfo}{host}{port}{path}{query}"
    url = template
    if mode_user:
        url = url.replace(HOLE, encode[mode_user](password), 1)
    if mode_query:
        url = url.replace(HOLE, encode[mode_query](password), 1)
    forms = {password, quote(password, safe=""), quote_plus(password)}
    rest = template.replace(HOLE, "")
    assume(not any(form in rest for form in forms))  # a password that is also a host name cannot be told apart
    return url, template, password


def leaks(text: str, password: str) -> list[str]:
    return [form for form in {password, quote(password, safe=""), quote_plus(password)} if form in text]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(urls())
@example(("postgresql://u:SECRETPW@127.0.0.1:1/db?password=SECRETPW",
          f"postgresql://u:{HOLE}@127.0.0.1:1/db?password={HOLE}", "SECRETPW"))
@example(("postgresql://[::1]/db?password=@000", f"postgresql://[::1]/db?password={HOLE}", "@000"))
@example(("postgresql://u:p@ss:w/rd@host/db", f"postgresql://u:{HOLE}@host/db", "p@ss:w/rd")).xfail(
    reason="a raw @ and a raw / in one password: no reading can tell where it ends")
@example(("postgresql://u:a?b=c@host/db", f"postgresql://u:{HOLE}@host/db", "a?b=c")).xfail(
    reason="a raw ? then = in a password reads as a query string (host/db?key=a@b)")
def test_a_masked_url_keeps_everything_but_the_secrets(case):
    url, template, password = case
    masked = mask_url(url)
    assert not leaks(masked, password), masked
    assert masked == template.replace(HOLE, "***"), (url, masked)
    assert mask_url(masked) == masked


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(urls(), st.sampled_from([
    "(psycopg.OperationalError) connection failed: {url}",
    "could not translate host name in {decoded} to address",
    "API request to {url}/api/2.0/mlflow/experiments/search failed with exception HTTPConnectionPool(...)",
    "password authentication failed for user \"u\" (password '{password}')",
    "Invalid URL '{decoded}': {password!r}",
]))
def test_masked_text_never_holds_the_password(case, message):
    url, _, password = case
    text = message.format(url=url, decoded=unquote(url), password=password)
    assume(not any(form in message.format(url="", decoded="", password="") for form in leaks(text, password)))
    masked = mask_secrets(text, url)
    assert not leaks(masked, password), masked


def test_urls_quoted_in_text_are_masked_even_when_not_named():
    text = "mlflow: could not reach http://me:hunter22@tracking:5000/?token=abcdef (refused)"
    assert mask_secrets(text) == "mlflow: could not reach http://me:***@tracking:5000/?token=*** (refused)"


def test_urls_without_credentials_are_unchanged():
    for url in ("http://host:5000?next=a:b@c", "http://host:5000/path?user=a@b", "sqlite:////tmp/cnnlab/mlflow.db",
                "file:///tmp/mlruns", "postgresql://host/db?sslmode=require&authSource=admin", "https://@host/",
                "https://user:@host/", "databricks"):
        assert mask_url(url) == url and mask_secrets(f"at {url}.", url) == f"at {url}.", url


def test_secret_keys():
    for key in ("password", "PASSWORD", "Passwd", "pwd", "sslpassword", "access_token", "API_KEY", "api-key", "apikey",
                "key", "auth", "secret", "client_secret", "db_password", "mlflow_tracking_token", "pass%77ord"):
        assert is_secret_key(key), key
    for key in ("user", "host", "sslmode", "authSource", "application_name", "keepalives", "dbname"):
        assert not is_secret_key(key), key


def test_a_url_without_a_scheme_is_read_as_if_it_had_one():
    assert mask_url("cnnlab:hunter22@db.example.com/db") == "cnnlab:***@db.example.com/db"
    assert mask_url("db.example.com/db?sslmode=require&password=a:b@c") == "db.example.com/db?sslmode=require&password=***"
    assert mask_url("127.0.0.1:5000") == "127.0.0.1:5000"


# ------------------------------------------------------------------ a lone token as the user info (https://TOKEN@host)

TOKEN_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=%@"  # anything a user info holds but ":"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(token=st.text(alphabet=TOKEN_CHARS, min_size=4, max_size=24),
       scheme=st.sampled_from(["https", "http", "postgresql", "postgresql+psycopg", "mysql+pymysql"]),
       host=st.sampled_from(["127.0.0.1", "db.example.com", "[::1]", "localhost"]),
       port=st.sampled_from(["", ":5432", ":1"]), path=st.sampled_from(["/db", "/", ""]),
       fields=st.lists(st.sampled_from(OTHER_FIELDS + [f"token={HOLE}", f"password={HOLE}"]), max_size=3, unique=True),
       message=st.sampled_from(["connection to {url} failed", "token {token} was refused", "Invalid URL '{url}': {token!r}",
                                "password authentication failed for user \"{token}\""]))
@example(token="s3cret", scheme="https", host="127.0.0.1", port=":1", path="/", fields=[], message="token {token} was refused")
def test_a_lone_token_as_the_user_info_is_masked_whole(token, scheme, host, port, path, fields, message):
    query = "?" + "&".join(fields) if fields else ""
    template = f"{scheme}://{HOLE}@{host}{port}{path}{query}"
    assume(token not in template.replace(HOLE, "") and unquote(token) not in template.replace(HOLE, ""))
    url = template.replace(HOLE, token, 1).replace(HOLE, quote(token, safe=""))  # in the query: encoded
    masked = mask_url(url)
    assert masked == template.replace(HOLE, "***"), (url, masked)
    assert mask_url(masked) == masked
    text = mask_secrets(message.format(url=url, token=token), url)
    assert token not in text and unquote(token) not in text, text


def test_the_cases_of_the_trial():
    assert mask_url("https://s3cret@127.0.0.1:1/") == "https://***@127.0.0.1:1/"
    assert mask_url("postgresql://s3cret@127.0.0.1/db") == "postgresql://***@127.0.0.1/db"
    assert mask_url("postgresql://u@host/db") == "postgresql://***@host/db"  # a user name alone may be a token too
    assert mask_url("https://tok%40en@host/x") == "https://***@host/x"
    assert mask_url("s3cret@db.example.com/db") == "***@db.example.com/db"  # no scheme
    assert mask_url("https://user:pw@h/?api_key=k1&access_token=k2&token=k3&password=k4&x=1") == \
        "https://user:***@h/?api_key=***&access_token=***&token=***&password=***&x=1"


def test_a_user_name_alone_is_masked_where_it_stands_alone_only():
    """"postgres" is a common user name and also the start of "postgresql": the scheme stays readable."""
    url = "postgresql://postgres@db.example.com/mlflow"
    text = mask_secrets(f"(psycopg.OperationalError) {url}: FATAL: role \"postgres\" does not exist (postgresql)", url)
    assert text == ("(psycopg.OperationalError) postgresql://***@db.example.com/mlflow: FATAL: role \"***\" does not "
                    "exist (postgresql)")
