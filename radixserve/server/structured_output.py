"""Output constraints of the OpenAI routes: response_format / regex / ebnf checked and turned into the
engine's grammar sampling parameters, logit_bias, and grammar errors renamed to the field they came from."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING, Any

from radixserve.errors import InvalidRequestError
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server.errors import APIError
from radixserve.server.protocol import (
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    ResponseFormatText,
    SamplingFields,
)

if TYPE_CHECKING:  # the manager imports the engine's modules (torch): the router loads this file
    from radixserve.managers.tokenizer_manager import ChoiceChunk

JSON_TYPES = frozenset(("string", "number", "integer", "boolean", "object", "array", "null"))
# Keywords whose value is a schema, a list of schemas, or a map of name -> schema.
_SUB_SCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
               "additionalItems", "unevaluatedProperties", "unevaluatedItems")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _keyword_problem(schema: dict[str, Any], where: str) -> str | None:
    t = schema.get("type")
    types = t if isinstance(t, list) else [t] if t is not None else []
    if not all(isinstance(x, str) and x in JSON_TYPES for x in types) or (isinstance(t, list) and not t):
        return f"{where}.type must be one of {sorted(JSON_TYPES)} or a non-empty list of them, got {t!r}"
    if "required" in schema and not (isinstance(schema["required"], list)
                                     and all(isinstance(x, str) for x in schema["required"])):
        return f"{where}.required must be a list of property names"
    for key, kind in (("enum", list), ("pattern", str), ("$ref", str), ("format", str)):
        if key in schema and not isinstance(schema[key], kind):
            return f"{where}.{key} must be a {'list' if kind is list else 'string'}"
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                "minItems", "maxItems", "minProperties", "maxProperties", "multipleOf"):
        v = schema.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            return f"{where}.{key} must be a number, got {v!r}"
    return None


def _sub_schemas(schema: dict[str, Any], where: str) -> list[tuple[str, Any]] | str:
    """The schemas inside `schema` with their paths, or what is wrong with their shape."""
    subs: list[tuple[str, Any]] = []
    for k in _SUB_SCHEMA:
        if k in schema:
            v = schema[k]
            # draft-4 tuple form of items
            subs += [(f"{where}.{k}.{i}", x) for i, x in enumerate(v)] if isinstance(v, list) else [(f"{where}.{k}", v)]
    for k in _SCHEMA_LISTS:
        if k in schema:
            if not isinstance(schema[k], list):
                return f"{where}.{k} must be a list of schemas"
            subs += [(f"{where}.{k}.{i}", v) for i, v in enumerate(schema[k])]
    for k in _SCHEMA_MAPS:
        if k in schema:
            if not isinstance(schema[k], dict):
                return f"{where}.{k} must be an object of schemas"
            subs += [(f"{where}.{k}.{name}", v) for name, v in schema[k].items()]
    return subs


def schema_problem(schema: Any, where: str = "schema", depth: int = 0) -> str | None:
    """What makes `schema` not a JSON Schema, structurally (types, keyword shapes), or None. The grammar
    engine checks the rest (and what it cannot enforce) when it compiles the schema."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"{where} must be an object (a JSON Schema) or a boolean"
    if depth > 64:
        return f"{where} is nested too deeply"
    problem = _keyword_problem(schema, where)
    if problem:
        return problem
    subs = _sub_schemas(schema, where)
    if isinstance(subs, str):
        return subs
    return next((p for w, sub in subs if (p := schema_problem(sub, w, depth + 1))), None)


ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def _engine_supports(name: str) -> bool:
    return name in SamplingParams.__struct_fields__


def grammar_of(req: SamplingFields, tools_schema: dict[str, Any] | None = None) -> tuple[dict[str, str], str | None]:
    """The request's constraint as SamplingParams fields ({"json_schema": text} / {"regex"} / {"ebnf"},
    at most one) and the request field it came from (for errors)."""
    sources: list[tuple[str, str, str]] = []  # (engine field, value, request field)
    rf = req.response_format
    if isinstance(rf, ResponseFormatJsonObject):
        sources.append(("json_schema", json.dumps(ANY_JSON_OBJECT), "response_format"))
    elif isinstance(rf, ResponseFormatJsonSchema):
        schema = rf.json_schema.schema_ if rf.json_schema.schema_ is not None else ANY_JSON_OBJECT
        problem = schema_problem(schema, "response_format.json_schema.schema")
        if problem:
            raise APIError(400, f"invalid JSON schema: {problem}", param="response_format", code="invalid_value")
        sources.append(("json_schema", json.dumps(schema), "response_format"))
    if req.regex is not None:
        sources.append(("regex", req.regex, "regex"))
    if req.ebnf is not None:
        sources.append(("ebnf", req.ebnf, "ebnf"))
    if tools_schema is not None:
        sources.append(("json_schema", json.dumps(tools_schema), "tool_choice"))
    if len(sources) > 1:
        names = [src for _, _, src in sources]
        raise APIError(400, f"give at most one output constraint; this request has {', '.join(names)}",
                       param=names[1], code="invalid_value")
    if not sources:
        return {}, None
    field_name, value, source = sources[0]
    if not _engine_supports(field_name):
        raise APIError(400, f"{source} is not supported by this engine (no grammar-constrained decoding)",
                       param=source, code="unsupported")
    return {field_name: value}, source


def logit_bias_of(bias: dict[str, float] | None, vocab_size: int | None) -> dict[int, float] | None:
    """OpenAI's {"token id": bias} as the engine's {id: bias}; ids must be within the vocabulary."""
    if not bias:
        return None
    if not _engine_supports("logit_bias"):
        raise APIError(400, "logit_bias is not supported by this engine", param="logit_bias", code="unsupported")
    out = {int(k): float(v) for k, v in bias.items()}
    bad = [k for k in out if vocab_size is not None and k >= vocab_size]
    if bad:
        raise APIError(400, f"logit_bias: token id {bad[0]} is not in the vocabulary (ids are 0 to "
                       f"{(vocab_size or 0) - 1})", param="logit_bias", code="invalid_value")
    return out


# The engine names the grammar field it could not compile; the request may have given it another name.
_GRAMMAR_PARAMS = ("json_schema", "regex", "ebnf", "sampling_params")


def remap_grammar_error(e: InvalidRequestError, source: str | None) -> InvalidRequestError:
    """An engine error about the constraint, under the request field it came from (`response_format`
    for a JSON schema given there, `tool_choice`/`tools` for a forced tool call)."""
    # a grammar the scheduler could not compile: a refusal without a param, naming the field in its message
    refused = e.param is None and any(e.message.startswith(f"invalid value for {k!r}") for k in _GRAMMAR_PARAMS)
    if source is not None and (e.param in _GRAMMAR_PARAMS or refused):
        e.param = "tools" if source == "tool_choice" else source
    return e


@contextlib.contextmanager
def grammar_errors(source: str | None) -> Iterator[None]:
    try:
        yield
    except InvalidRequestError as e:
        raise remap_grammar_error(e, source) from None


async def remapped(gen: AsyncGenerator[ChoiceChunk, None], source: str | None) -> AsyncGenerator[ChoiceChunk, None]:
    """`gen`, with a refusal about the constraint (the scheduler compiles it) under the request's field."""
    try:
        async for c in gen:
            yield c
    except InvalidRequestError as e:
        raise remap_grammar_error(e, source) from None
    finally:
        await gen.aclose()



def constraint_field(req: SamplingFields) -> str | None:
    """The request field an output constraint of a completions request comes from."""
    if req.response_format is not None and not isinstance(req.response_format, ResponseFormatText):
        return "response_format"
    return "regex" if req.regex is not None else "ebnf" if req.ebnf is not None else None
