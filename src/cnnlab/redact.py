"""Credentials out of URLs and out of the messages that quote them, before anything is printed or stored.

    mask_url("postgresql://u:pw@host/db?sslmode=require&password=pw")
        -> "postgresql://u:***@host/db?sslmode=require&password=***"
    mask_secrets("could not connect to postgresql://u:pw@host/db: ...", url)   # the URL and its secrets masked

What is masked: the password of the user info (user:***@), the whole user info where it has no password
(a lone token, https://TOKEN@host -> https://***@host) and the value of every query key that names a
credential (password, pwd, pass, secret, token, api_key, key, auth, sslpassword, ...; any case, the key
itself possibly URL-encoded). Everything else is kept as written, so a masked URL still says which server,
port, database and options were meant. A leaf module: nothing of cnnlab is imported.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

MASK = "***"

# Query keys that carry a credential, compared lower-case without "_", "-" and ".".
SECRET_KEYS = frozenset({
    "password", "passwd", "pwd", "pass", "passphrase", "secret", "token", "accesstoken", "apikey", "key", "auth",
    "sslpassword", "clientsecret", "refreshtoken", "idtoken", "authtoken", "sessiontoken", "securitytoken", "sig",
    "signature", "credential", "credentials", "privatekey", "secretkey", "accesskey", "awssecretaccesskey",
    "xamzsignature", "xamzsecuritytoken", "xamzcredential", "sastoken", "bearer", "jwt",
})
# ... and any key containing one of these (db_password, mlflow_tracking_token, aws_secret_access_key).
SECRET_PARTS = ("password", "passwd", "secret", "token", "apikey", "privatekey", "credential")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_SQLALCHEMY_USERINFO = re.compile(r"([^:/?#@]*):([^@]*)@")  # SQLAlchemy's reading: the password ends at the first @


def is_secret_key(name: str) -> bool:
    """Whether a query key names a credential (password, API_KEY, access-token, db_password, ...)."""
    key = re.sub(r"[\s_.\-]", "", unquote_plus(name).lower())
    return key in SECRET_KEYS or any(part in key for part in SECRET_PARTS)


def _userinfo_end(rest: str) -> tuple[int, int] | None:
    """(start, end) of the user info's password in `rest` (the URL after "scheme://"), or None; of the whole
    user info where it has no ":" (a token or a user name alone may be the credential: https://TOKEN@host).

    Two readings, the wider wins: the RFC's (urlsplit: the authority ends at the first / ? #, the
    user info at its last @, so a raw @ or : in a password is covered) and SQLAlchemy's (the password
    runs to the first @, so a raw / or ? in it is covered too)."""
    spans = []
    try:
        netloc = urlsplit("x://" + rest).netloc
    except ValueError:  # e.g. an unbalanced [ of an IPv6 address
        netloc = ""
    if not rest.startswith(netloc):  # urlsplit dropped a tab or newline: read the authority as written
        netloc = re.match(r"[^/?#]*", rest).group(0)
    userinfo, at, _ = netloc.rpartition("@")
    if ":" in userinfo:
        spans.append((userinfo.index(":") + 1, len(userinfo)))
    elif at and userinfo:  # a lone TOKEN@ (https://TOKEN@host, a PAT): the whole user info may be the secret
        spans.append((0, len(userinfo)))
    match = _SQLALCHEMY_USERINFO.match(rest)
    if match and not _query_like(match.group(2)):
        spans.append(match.span(2))
    return max(spans, key=lambda span: span[1]) if spans else None


def _query_like(password: str) -> bool:
    """Whether what SQLAlchemy's reading takes for a password is rather host:PORT/path?q=a@b or host/db?key=a@b:
    no user info at all, its @ is in the query."""
    port_then_query = re.match(r"\d*[/?#]", password) and re.search(r"[?#]", password)
    return bool(port_then_query or re.search(r"[?#][^@]*=", password))


def _parts(url: str):
    """(prefix through "user:", password, "@host/path", query or None) of a URL, split as written."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0  # without a scheme (user:pass@host/db): read it as if it had one
    rest = url[start:]
    span = _userinfo_end(rest)
    q = rest.find("?", span[1] if span else 0)
    tail, query = (rest, None) if q < 0 else (rest[:q], rest[q + 1:])
    if span is None:
        return url[:start] + tail, None, "", query
    return url[:start] + rest[:span[0]], rest[span[0]:span[1]], tail[span[1]:], query


def _query_fields(query: str):
    """The query's fields as written ("key=value" strings), with the decoded key and value of each."""
    for field in query.split("&"):
        pairs = parse_qsl(field, keep_blank_values=True)
        key, value = pairs[0] if pairs else (unquote_plus(field.partition("=")[0]), "")
        yield field, key, value


def mask_url(url: str) -> str:
    """The URL with its user info's password and every credential in its query string masked (***);
    the rest (scheme, user, host, port, path, other options) exactly as written."""
    if not isinstance(url, str):
        return url
    prefix, password, host, query = _parts(url)
    out = prefix + (MASK if password else password or "") + host
    if query is None:
        return out
    fields = [f"{field.partition('=')[0]}={MASK}" if "=" in field and is_secret_key(key) and value else field
              for field, key, value in _query_fields(query)]
    return out + "?" + "&".join(fields)


def secrets(url: str) -> set[str]:
    """The credentials in a URL, as written and URL-decoded (what a library may repeat in a message)."""
    return set().union(*_secrets(url))


def _secrets(url: str) -> tuple[set[str], set[str]]:
    """(passwords and query credentials, a lone user info: a token, or maybe just a user name such as "postgres"),
    each as written and URL-decoded."""
    if not isinstance(url, str):
        return set(), set()
    prefix, password, _, query = _parts(url)
    alone = bool(password) and not prefix.endswith(":")  # scheme://TOKEN@host: no "user:" before it
    raw = [password] if password and not alone else []
    for field, key, value in _query_fields(query or ""):
        if "=" in field and is_secret_key(key) and value:
            raw.append(field.partition("=")[2])

    def forms(values):
        return {form for value in values for form in (value, unquote(value), unquote_plus(value)) if form}

    return forms(raw), forms([password] if alone else [])


def mask_secrets(text: str, *urls: str) -> str:
    """`text` (an error message, a log line) with the given URLs, any other URL it quotes, and every credential
    of the given URLs masked, wherever and however (as written or URL-decoded) a library repeated them."""
    if not text:
        return text
    urls = [u for u in urls if isinstance(u, str) and u]
    for url in sorted(urls, key=len, reverse=True):
        text = text.replace(url, mask_url(url))
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    found = [_secrets(url) for url in urls]
    strong = set().union(*(s for s, _ in found))
    alone = set().union(*(a for _, a in found)) - strong
    for secret in sorted(strong | alone, key=len, reverse=True):
        if secret == MASK:
            continue
        if len(secret) >= 4 and secret not in alone:
            text = text.replace(secret, MASK)
        else:  # a very short password, or a lone user info that may be a plain user name ("postgres" is also in
            # "postgresql"): only where it stands alone, so the message stays readable
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", MASK, text)
    return text
