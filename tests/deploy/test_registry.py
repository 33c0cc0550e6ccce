"""The production pointer against a REAL SeaweedFS: promote, rollback, history, bad pointers."""

from __future__ import annotations

import json

import pytest

from kfloop.core.errors import ConfigError, DataError
from kfloop.core.objectstore import ObjectStore
from kfloop.deploy.registry import (
    HISTORY_LIMIT,
    NoProductionVersion,
    pointer_uri,
    promote,
    read_production,
    rollback,
)

MODEL = "churn"


def published(store: ObjectStore, root: str, version: str, model: str = MODEL) -> str:
    """A published version: its metadata.json exists (what promote checks)."""
    uri = f"{root}/{model}/{version}/"
    store.put_bytes(json.dumps({"version": version}).encode(), f"{uri}metadata.json")
    return uri


@pytest.fixture
def root(bucket: str) -> str:
    return f"s3://{bucket}"


def stored(store: ObjectStore, root: str, model: str = MODEL) -> dict:
    return json.loads(store.get_bytes(pointer_uri(root, model)))


def test_nothing_deployed_reads_as_none(store: ObjectStore, root: str) -> None:
    assert read_production(store, root, MODEL) is None


def test_promote_twice_keeps_the_previous_version_and_the_history(
    store: ObjectStore, root: str
) -> None:
    v1, v2 = published(store, root, "v1"), published(store, root, "v2")
    first = promote(store, root, MODEL, "v1", v1, reason="first")
    assert (first.version, first.uri, first.previous) == ("v1", v1, None)
    second = promote(store, root, MODEL, "v2", v2, reason="better auc")
    assert (second.version, second.uri) == ("v2", v2)
    assert second.previous is not None
    assert (second.previous["version"], second.previous["uri"]) == ("v1", v1)
    assert second.previous["deployed_at"] == first.deployed_at
    assert [(h["action"], h["version"], h["reason"]) for h in second.history] == [
        ("promote", "v1", "first"),
        ("promote", "v2", "better auc"),
    ]
    # What a reader sees is what was written, in the documented JSON format.
    assert read_production(store, root, MODEL) == second
    raw = stored(store, root)
    assert set(raw) == {
        "model",
        "version",
        "uri",
        "deployed_at",
        "reason",
        "previous",
        "history",
    }
    assert raw["version"] == "v2" and raw["previous"]["version"] == "v1"


def test_promoting_the_serving_version_again_changes_nothing(store: ObjectStore, root: str) -> None:
    v1 = published(store, root, "v1")
    first = promote(store, root, MODEL, "v1", v1)
    again = promote(store, root, MODEL, "v1", v1, reason="retry")
    assert again == first
    assert len(stored(store, root)["history"]) == 1


def test_rollback_points_back_at_the_previous_version(store: ObjectStore, root: str) -> None:
    v1, v2 = published(store, root, "v1"), published(store, root, "v2")
    promote(store, root, MODEL, "v1", v1)
    promote(store, root, MODEL, "v2", v2)
    back = rollback(store, root, MODEL, reason="v2 errors")
    assert (back.version, back.uri) == ("v1", v1)
    assert back.previous is not None and back.previous["version"] == "v2"
    assert back.history[-1]["action"] == "rollback"
    assert back.history[-1]["version"] == "v1"
    assert back.history[-1]["reason"] == "v2 errors"
    assert read_production(store, root, MODEL) == back
    # A second rollback goes forward again (previous is now v2): a toggle, not a stack.
    assert rollback(store, root, MODEL).version == "v2"


def test_rollback_with_nothing_to_go_back_to(store: ObjectStore, root: str) -> None:
    with pytest.raises(NoProductionVersion, match="nothing is deployed"):
        rollback(store, root, MODEL)
    promote(store, root, MODEL, "v1", published(store, root, "v1"))
    with pytest.raises(NoProductionVersion, match="first deployed version"):
        rollback(store, root, MODEL)
    assert read_production(store, root, MODEL).version == "v1"  # type: ignore[union-attr]


def test_rollback_to_a_version_that_was_removed_leaves_the_pointer(
    store: ObjectStore, root: str
) -> None:
    v1, v2 = published(store, root, "v1"), published(store, root, "v2")
    promote(store, root, MODEL, "v1", v1)
    current = promote(store, root, MODEL, "v2", v2)
    store.delete(f"{v1}metadata.json")
    with pytest.raises(ConfigError, match="v1/ is not a published model version"):
        rollback(store, root, MODEL)
    assert read_production(store, root, MODEL) == current


def test_an_unpublished_version_is_never_promoted(store: ObjectStore, root: str) -> None:
    v1 = published(store, root, "v1")
    current = promote(store, root, MODEL, "v1", v1)
    store.put_bytes(b"onnx", f"{root}/{MODEL}/v2/model.onnx")  # upload not finished
    with pytest.raises(ConfigError) as info:
        promote(store, root, MODEL, "v2", f"{root}/{MODEL}/v2/")
    assert info.value.field == "uri"
    assert "no metadata.json" in str(info.value)
    assert read_production(store, root, MODEL) == current


@pytest.mark.parametrize(
    ("model", "version", "field"),
    [("", "v1", "model_name"), ("a/b", "v1", "model_name"), (MODEL, "", "version")],
)
def test_bad_names_are_refused_naming_the_field(
    store: ObjectStore, root: str, model: str, version: str, field: str
) -> None:
    uri = published(store, root, "v1")
    with pytest.raises(ConfigError) as info:
        promote(store, root, model, version, uri)
    assert info.value.field == field
    assert read_production(store, root, MODEL) is None


def test_a_uri_that_is_not_s3_is_refused(store: ObjectStore, root: str) -> None:
    with pytest.raises(ConfigError) as info:
        promote(store, root, MODEL, "v1", "/tmp/models/churn/v1")
    assert info.value.field == "uri"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"model": "churn", "uri": "s3://x/churn/v1/"}', "lacks version"),
        (b'{"model": "churn", "version": 3, "uri": "s3://x/y/"}', "lacks version"),
    ],
)
def test_a_malformed_pointer_is_an_error_naming_it(
    store: ObjectStore, root: str, body: bytes, message: str
) -> None:
    uri = pointer_uri(root, MODEL)
    store.put_bytes(body, uri)
    with pytest.raises(DataError) as info:
        read_production(store, root, MODEL)
    assert message in str(info.value)
    assert uri in str(info.value)
    # Neither promote nor rollback overwrites a pointer it cannot read.
    with pytest.raises(DataError):
        promote(store, root, MODEL, "v1", published(store, root, "v1"))
    with pytest.raises(DataError):
        rollback(store, root, MODEL)
    assert store.get_bytes(uri) == body


def test_history_keeps_the_last_decisions(store: ObjectStore, root: str) -> None:
    v1, v2 = published(store, root, "v1"), published(store, root, "v2")
    promote(store, root, MODEL, "v1", v1)
    raw = stored(store, root)
    raw["history"] = [
        {"action": "promote", "version": f"old{i}", "uri": v1, "at": "", "reason": str(i)}
        for i in range(HISTORY_LIMIT)
    ]
    store.put_bytes(json.dumps(raw).encode(), pointer_uri(root, MODEL))
    pointer = promote(store, root, MODEL, "v2", v2)
    assert len(pointer.history) == HISTORY_LIMIT
    assert pointer.history[0]["version"] == "old1"  # the oldest one dropped
    assert pointer.history[-1]["version"] == "v2"


def test_pointers_of_two_models_are_independent(store: ObjectStore, root: str) -> None:
    promote(store, root, MODEL, "v1", published(store, root, "v1"))
    other = promote(store, root, "fraud", "a1", published(store, root, "a1", model="fraud"))
    assert read_production(store, root, MODEL).version == "v1"  # type: ignore[union-attr]
    assert read_production(store, root, "fraud") == other
