"""Masking: every URL form a driver accepts, read by that driver's parser, masked exactly."""

import pytest

from recon_pipeline.model.masking import mask_text, mask_url, url_secrets

URLS = [
    # (url, masked)
    ("postgresql+psycopg://u:s3cret@db.example:5432/app",
     "postgresql+psycopg://u:***@db.example:5432/app"),
    ("postgresql://u:p%40ss@db.example/app",  # percent-encoded `p@ss`
     "postgresql://u:***@db.example/app"),
    ("postgresql://db.example/app?user=u&password=s3cret&sslmode=require",  # libpq style
     "postgresql://db.example/app?user=u&password=***&sslmode=require"),
    ("postgresql://db.example/app?sslpassword=k3y&password=p%2Fw",
     "postgresql://db.example/app?sslpassword=***&password=***"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/recon",  # no secret: unchanged
     "postgresql+psycopg://postgres@127.0.0.1:5432/recon"),
    ("postgresql://u:p%61ss@db.example/app",  # needlessly encoded: masked whole
     "postgresql://***"),
    ("mongodb://u:s3cret@127.0.0.1:27017/?directConnection=true",
     "mongodb://u:***@127.0.0.1:27017/?directConnection=true"),
    ("mongodb://u:p%40ss@h1,h2:27018/?replicaSet=x",  # several hosts
     "mongodb://u:***@h1,h2:27018/?replicaSet=x"),
    ("mongodb+srv://u:s3cret@cluster0.example.net/app?retryWrites=true",  # no DNS lookup
     "mongodb+srv://u:***@cluster0.example.net/app?retryWrites=true"),
    ("mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:t0k",
     "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=***"),
    ("mongodb://h/?tls=true&tlsCertificateKeyFilePassword=k3y",
     "mongodb://h/?tls=true&tlsCertificateKeyFilePassword=***"),
    ("mongodb://127.0.0.1:1/?directConnection=true",
     "mongodb://127.0.0.1:1/?directConnection=true"),
    ("mongodb://u:p%zz@h/", "mongodb://***"),  # pymongo refuses it: masked whole
    ("https://me:t0ken@git.example/repo", "https://me:***@git.example/repo"),
]


@pytest.mark.parametrize(("url", "masked"), URLS, ids=[u for u, _ in URLS])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask_url(masked) == masked  # masking twice changes nothing


SECRETS = [
    # (url, every spelling of its secrets that text may carry)
    ("postgresql://u:s3cret@h/db", {"s3cret"}),
    ("postgresql://u:p%40ss@h/db", {"p@ss", "p%40ss"}),
    ("postgresql://h/db?user=u&password=a%20b", {"a b", "a+b", "a%20b"}),
    ("mongodb://u:p%40ss@h1,h2/?replicaSet=x", {"p@ss", "p%40ss"}),
    ("mongodb://127.0.0.1:1/", set()),
    ("not a url", set()),
]


@pytest.mark.parametrize(("url", "forms"), SECRETS, ids=[u for u, _ in SECRETS])
def test_url_secrets(url: str, forms: set[str]) -> None:
    assert set(url_secrets(url)) == forms


TEXTS = [
    # (text, secrets known from the configured URLs, masked)
    ("cannot connect: password authentication failed for p@ss",
     url_secrets("postgresql://u:p%40ss@h/db"),
     "cannot connect: password authentication failed for ***"),
    ("retrying postgresql://u:p%40ss@h/db, then p%40ss and p@ss", (),
     "retrying postgresql://u:***@h/db, then p%40ss and p@ss"),  # unknown: URL only
    ("retrying postgresql://u:p%40ss@h/db, then p%40ss and p@ss",
     url_secrets("postgresql://u:p%40ss@h/db"),
     "retrying postgresql://u:***@h/db, then *** and ***"),
    ("servers (mongodb://u:pw1@h1,h2/?replicaSet=x). and 'mongodb+srv://v:pw2@c.example/'", (),
     "servers (mongodb://u:***@h1,h2/?replicaSet=x). and 'mongodb+srv://v:***@c.example/'"),
    ("connect to postgresql://h/db?user=u&password=s3cret failed", (),
     "connect to postgresql://h/db?user=u&password=*** failed"),
    ("conninfo host=h password=s3cret user=u / sslpassword='k 3y'", (),
     "conninfo host=h password=*** user=u / sslpassword=***"),
    ("nothing secret at mongodb://127.0.0.1:1/?directConnection=true", (),
     "nothing secret at mongodb://127.0.0.1:1/?directConnection=true"),
]


@pytest.mark.parametrize(("text", "secrets", "masked"), TEXTS)
def test_mask_text(text: str, secrets: tuple[str, ...], masked: str) -> None:
    assert mask_text(text, secrets) == masked


def test_a_password_that_spells_the_user_masks_only_the_password() -> None:
    assert mask_url("postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres") == (
        "postgresql+psycopg://postgres:***@127.0.0.1:5432/postgres")
    assert mask_url("mongodb://h1:h1@h1:27017/?replicaSet=h1") == (
        "mongodb://h1:***@h1:27017/?replicaSet=h1")
