from __future__ import annotations

import pytest

from kfloop.core.errors import ConfigError
from kfloop.core.objectstore import S3Uri, is_s3_uri


def test_parse_and_str() -> None:
    uri = S3Uri.parse("s3://kfloop-models/churn/3/model.onnx")
    assert uri.bucket == "kfloop-models"
    assert uri.key == "churn/3/model.onnx"
    assert str(uri) == "s3://kfloop-models/churn/3/model.onnx"


def test_bucket_only() -> None:
    assert S3Uri.parse("s3://bucket") == S3Uri("bucket", "")


@pytest.mark.parametrize("bad", ["/local/path", "gs://b/k", "s3://", "s3://ab/k", "s3://UPPER/k"])
def test_rejects_non_s3_uris_naming_the_field(bad: str) -> None:
    with pytest.raises(ConfigError, match="^source_uri: "):
        S3Uri.parse(bad, field="source_uri")


def test_join() -> None:
    base = S3Uri("b-b", "models/")
    assert base.join("m", "/v1/", "model.onnx") == S3Uri("b-b", "models/m/v1/model.onnx")
    assert S3Uri("b-b").join("x") == S3Uri("b-b", "x")


def test_is_s3_uri() -> None:
    assert is_s3_uri("s3://a/b")
    assert not is_s3_uri("/tmp/a")
