"""/openapi.json tells the truth: every $ref resolves, and what the schemas call valid is what the
routes take (or answer with a documented 400). No server: the app over a stand-in manager."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import pytest
from fastapi.testclient import TestClient

from radixserve.server.http_server import build_app


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_app(MagicMock(), None).openapi()


def _refs(node: Any, where: str = "#") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        out = [(where, node["$ref"])] if isinstance(node.get("$ref"), str) else []
        return out + [r for k, v in node.items() for r in _refs(v, f"{where}/{k}")]
    if isinstance(node, list):
        return [r for i, v in enumerate(node) for r in _refs(v, f"{where}/{i}")]
    return []


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert len(refs) > 50
    dangling = []
    for where, ref in refs:
        assert ref.startswith("#/"), (where, ref)
        node: Any = doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                dangling.append(f"{where} -> {ref}")
                break
            node = node[part]
    assert not dangling, dangling


def test_streamed_routes_document_their_events(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for path, event in (("/v1/chat/completions", "ChatCompletionChunk"), ("/v1/completions", "CompletionChunk"),
                        ("/generate", "GenerateResponse")):
        content = doc["paths"][path]["post"]["responses"]["200"]["content"]
        # One event (itemSchema): its data is a chunk, or an error that ends the stream, as JSON; or [DONE].
        data = content["text/event-stream"]["itemSchema"]["properties"]["data"]["anyOf"]
        assert data[0]["contentSchema"]["anyOf"] == [{"$ref": f"#/components/schemas/{event}"},
                                                     {"$ref": "#/components/schemas/ErrorResponse"}]
        assert data[1] == {"const": "[DONE]"}
        assert content["text/event-stream"]["schema"]["items"] == content["text/event-stream"]["itemSchema"]
        assert event in schemas
    assert "choices" in schemas["ChatCompletionChunk"]["properties"]


def test_request_schemas_say_what_is_accepted(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    generate = schemas["GenerateRequestBody"]
    # `{}` and `{"text": null}` are not valid: exactly one of the two, and not null
    assert generate["oneOf"] == [{"required": [k], "properties": {k: {"not": {"type": "null"}}}}
                                 for k in ("text", "input_ids")]
    prompt = str(schemas["CompletionRequest"]["properties"]["prompt"])
    assert "'minLength': 1" in prompt and "'minItems': 1" in prompt  # "" and [] are not valid
    chat = schemas["ChatCompletionRequest"]["properties"]
    # FastAPI's OpenAPI model writes bounds as floats: 2**63 - 1 comes out as 2.0**63.
    assert chat["seed"]["anyOf"][0]["maximum"] == float(2**63 - 1) and chat["seed"]["anyOf"][0]["minimum"] == 0
    assert chat["top_k"]["anyOf"][0]["maximum"] == 2**31 - 1


def test_405_carries_allow() -> None:
    client = TestClient(build_app(MagicMock(), None))  # no `with`: the manager is never started
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"] == {"message": "Method Not Allowed", "type": "invalid_request_error", "param": None,
                                 "code": "method_not_allowed"}


def test_an_unknown_route_is_named_in_an_openai_shaped_404() -> None:
    client = TestClient(build_app(MagicMock(), None))
    r = client.post("/v1/embeddings", json={"model": "m", "input": "hi"})  # generation only: no embeddings route
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "no route POST /v1/embeddings on this server (GET /openapi.json lists them)",
                                 "type": "not_found_error", "param": None, "code": "not_found"}
    assert client.get("/openapi.json").status_code == 200
