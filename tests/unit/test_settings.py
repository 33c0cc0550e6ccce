from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfloop.core.errors import ConfigError
from kfloop.core.settings import Secret, Settings, parse_bool, read_env_file

BASE = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-xyz"}


def load(**extra: str) -> Settings:
    return Settings.from_env({**BASE, **extra})


def test_defaults_point_at_the_local_stack() -> None:
    s = load()
    assert s.s3_endpoint == "127.0.0.1:8333"
    assert s.s3_use_https is False
    assert s.endpoint_url == "http://127.0.0.1:8333"
    assert s.data_bucket == "kfloop-data"
    assert s.models_bucket == "kfloop-models"


def test_kserve_style_endpoint_and_https_flag() -> None:
    s = load(S3_ENDPOINT="seaweedfs.kubeflow:8333", S3_USE_HTTPS="1")
    assert s.s3_endpoint == "seaweedfs.kubeflow:8333"
    assert s.endpoint_url == "https://seaweedfs.kubeflow:8333"


def test_url_style_endpoint() -> None:
    s = load(S3_ENDPOINT="https://s3.example.com")
    assert s.s3_endpoint == "s3.example.com"
    assert s.s3_use_https is True


def test_scheme_and_flag_that_disagree_name_both() -> None:
    with pytest.raises(ConfigError, match="S3_USE_HTTPS") as err:
        load(S3_ENDPOINT="https://s3.example.com", S3_USE_HTTPS="0")
    assert err.value.field == "S3_ENDPOINT"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("S3_ENDPOINT", "ftp://host:1", "scheme"),
        ("S3_ENDPOINT", "host:99999", "port"),
        ("S3_ENDPOINT", "http://host:80/path", "path"),
        ("S3_ENDPOINT", "bad host:80", "host:port"),
        ("S3_USE_HTTPS", "maybe", "boolean"),
        ("S3_VERIFY_SSL", "2", "boolean"),
        ("KFLOOP_DATA_BUCKET", "Bad_Bucket", "bucket name"),
        ("KFLOOP_MODELS_BUCKET", "ab", "bucket name"),
        ("KFLOOP_S3_RETRIES", "-1", "integer"),
        ("KFLOOP_S3_TIMEOUT", "soon", "seconds"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(**{name: value})
    assert err.value.field == name
    assert str(err.value).startswith(f"{name}: ")
    assert fragment in str(err.value)


@pytest.mark.parametrize("missing", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_missing_credentials_name_the_variable_and_say_what_to_do(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert err.value.field == missing
    assert "kfloop stack up" in str(err.value)


def test_blank_values_count_as_unset() -> None:
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        Settings.from_env({**BASE, "AWS_SECRET_ACCESS_KEY": "  "})


def test_environment_wins_over_fallback() -> None:
    s = Settings.from_env(
        {"S3_ENDPOINT": "10.0.0.1:9000", **BASE},
        fallback={"S3_ENDPOINT": "127.0.0.1:1234", "KFLOOP_LOGS_BUCKET": "from-file"},
    )
    assert s.s3_endpoint == "10.0.0.1:9000"
    assert s.logs_bucket == "from-file"


def test_repr_and_str_never_show_secrets() -> None:
    s = load()
    for text in (repr(s), str(s), f"{s}", repr(s.secret_key), str(s.access_key)):
        assert "s3cr3t-value-xyz" not in text
        assert "AKIDEXAMPLE" not in text
    assert s.secret_key.get() == "s3cr3t-value-xyz"


def test_to_env_round_trips() -> None:
    s = load(S3_ENDPOINT="minio.kubeflow:9000", AWS_REGION="eu-west-1", KFLOOP_S3_RETRIES="5")
    assert Settings.from_env(s.to_env()) == s


@given(st.sampled_from(["1", "true", "YES", " on "]))
def test_parse_bool_true(value: str) -> None:
    assert parse_bool("X", value) is True


@given(
    st.text(max_size=8).filter(
        lambda v: v.strip().lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}
    )
)
def test_parse_bool_rejects_everything_else(value: str) -> None:
    with pytest.raises(ConfigError, match="^X: "):
        parse_bool("X", value)


def test_secret_equality_without_exposure() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert "a" not in repr(Secret("a").__repr__())


def test_read_env_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "stack.env"
    f.write_text("# comment\nexport S3_ENDPOINT=127.0.0.1:1\nAWS_REGION='x'\n\n")
    assert read_env_file(f) == {"S3_ENDPOINT": "127.0.0.1:1", "AWS_REGION": "x"}
    f.write_text("NOEQUALS\n")
    with pytest.raises(ConfigError, match="stack.env:1"):
        read_env_file(f)
    assert read_env_file(tmp_path / "missing.env") == {}
