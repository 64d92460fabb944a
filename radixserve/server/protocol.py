"""Request and response bodies of the HTTP API (OpenAI-compatible routes plus the native ones).

These pydantic models validate requests (a wrong type or range is a 400 naming the field) and
describe every route's bodies in /openapi.json.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Tag,
    create_model,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from radixserve.sampling.sampling_params import (
    MAX_GRAMMAR_CHARS,
    MAX_LOGIT_BIAS,
    MAX_LOGIT_BIAS_VALUE,
    MAX_N,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOKEN_ID,
    MAX_TOKENS,
    MAX_TOP_K,
)

# Bounds of the edge (the engine's own are in sampling_params.py and RequestBuilder).
MAX_BATCH = 1024  # prompts in one completions or /generate request
MAX_ID_CHARS = 256  # rid, model, user


def _utf8(s: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"); they cannot be tokenized or sent on."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return s


# Strings that reach the tokenizer, the scheduler or a reply are valid UTF-8.
Text = Annotated[str, AfterValidator(_utf8)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_utf8)]
Name = Annotated[str, Field(max_length=MAX_ID_CHARS), AfterValidator(_utf8)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_STRING_CHARS), AfterValidator(_utf8)]
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
# Extension (SGLang, vLLM): the request's rank in the waiting queue with --enable-priority-scheduling,
# higher first (SGLang's default order); 0 when unset. A router in front may set it per API key.
Priority = Annotated[int, Field(ge=-(2**31), le=2**31 - 1, description="Extension: waiting-queue rank with "
                                "--enable-priority-scheduling, higher values first (default 0; ignored "
                                "without that flag).")]


def _shape(v: Any) -> str | None:
    """The union member a value is meant as (by its JSON shape), so that a bad value gets that
    member's error (`prompt.0: >= 0`) instead of one per member. Tags with brackets are left out
    of the error's `param` (server/errors.py)."""
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        first = v[0] if v else None
        if isinstance(first, str):
            return "list[str]"
        if isinstance(first, list):
            return "list[list]"
        if isinstance(first, dict):
            return "list[dict]"
        return "list[int]"
    if isinstance(v, dict):
        return "dict"
    return None


def _one_of(what: str) -> Discriminator:
    return Discriminator(_shape, custom_error_type="invalid_type", custom_error_message=f"must be {what}")


def _now() -> int:
    return int(time.time())


class _Request(BaseModel):
    # Unknown fields are ignored, as vLLM and SGLang do, so newer clients keep working.
    # Strict types: `false` is not a number and `0` not a boolean (pydantic's lax mode would
    # coerce them, and the API would accept bodies its own schema says are invalid).
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)


def stream_event_schema(model: type[BaseModel]) -> Any:
    """A type for a streamed route's `responses={200: {"model": ...}}`: its schema only adds
    `x-stream-event: {"$ref": <model>}` (an OpenAPI extension) beside the JSON answer's, which
    puts `model` and what it uses into /openapi.json's components, so the event-stream content's
    `$ref` to it resolves."""
    holder = create_model(f"{model.__name__}Events", event=(model, ...))

    class StreamEvent:
        @classmethod
        def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
            return core_schema.any_schema()

        @classmethod
        def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
            inline = handler.resolve_ref_schema(handler(holder.__pydantic_core_schema__))
            return {"x-stream-event": inline["properties"]["event"]}

    return StreamEvent


# ---- errors --------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---- shared --------------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send a last chunk with `usage` (and empty `choices`).")
    continuous_usage_stats: bool = Field(
        False, description="vLLM's option: with `include_usage`, every chunk also carries `usage` so far "
                           "(completion tokens generated up to that chunk).")


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Prompt tokens whose KV came from the radix cache.")


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=lambda: PromptTokensDetails(cached_tokens=0))


MAX_TOOLS = 256

LogitBias = Annotated[
    dict[Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,9})$")], Annotated[float, Field(ge=-MAX_LOGIT_BIAS_VALUE, le=MAX_LOGIT_BIAS_VALUE)]],
    Field(max_length=MAX_LOGIT_BIAS, json_schema_extra={"additionalProperties": False})]


class ResponseFormatText(_Request):
    type: Literal["text"]


class ResponseFormatJsonObject(_Request):
    type: Literal["json_object"] = Field(description="Any JSON object.")


class JsonSchemaSpec(_Request):
    name: Name = Field(description="The schema's name (not used for decoding).")
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON Schema; the output is valid "
                                           "against it (left out: any JSON object).")
    strict: bool | None = Field(None, description="Accepted; the output always follows the schema.")


class ResponseFormatJsonSchema(_Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
                           Field(discriminator="type")]


class SamplingFields(_Request):
    """Sampling fields common to chat and completions (OpenAI's, plus vLLM/SGLang extensions)."""

    model: Name | None = Field(None, description="Served model name (see /v1/models); empty means that model.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy. Default 1.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=MAX_TOP_K, json_schema_extra={"not": {"const": 0}},
                              description="Extension: sample from the k most likely tokens (-1: all; 0 is invalid).")
    min_p: float | None = Field(None, ge=0, le=1, description="Extension: drop tokens below min_p * max prob.")
    n: int = Field(1, ge=1, le=MAX_N, description="Choices to generate for this prompt.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[Annotated[StopString, Tag("str")]
                    | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS), Tag("list[str]")],
                    _one_of("a string or a list of strings")] | None = Field(
        None, description=f"Up to {MAX_STOP_STRINGS} strings of 1 to {MAX_STOP_STRING_CHARS} characters that end "
        "generation (not returned).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Makes sampling reproducible for the same "
                             "request; 0 to 2**63 - 1 (the document's maximum is that, rounded to a float).")
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=MAX_REPETITION_PENALTY,
                                             description="Extension: HF-style repetition penalty.")
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS, description="Extension: "
                                                 "token ids (within the vocabulary) that end generation.")
    ignore_eos: bool = Field(False, description="Extension: keep generating past EOS.")
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS, description="Extension: generate at least this many tokens.")
    skip_special_tokens: bool = Field(True, description="Extension: leave special tokens out of the text.")
    logit_bias: LogitBias | None = Field(None, description=f"Token id (as a string) -> bias in [-100, 100] added "
                                         f"to its logit (at most {MAX_LOGIT_BIAS} entries; ids within the "
                                         "vocabulary).")
    response_format: ResponseFormat | None = Field(None, description="`text`, `json_object` (any JSON object) or "
                                                   "`json_schema` (output valid against the schema), enforced by "
                                                   "grammar-constrained decoding.")
    regex: Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS), AfterValidator(_utf8)] | None = Field(
        None, description="Extension (SGLang): the output matches this regular expression.")
    ebnf: Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS), AfterValidator(_utf8)] | None = Field(
        None, description="Extension (SGLang): the output matches this EBNF (GBNF) grammar.")
    user: Name | None = Field(None, description="An end-user id; logged with the request (--log-requests).")
    rid: Name | None = Field(None, description="Extension: request id, for /abort_request.")
    priority: Priority | None = None


# ---- chat ----------------------------------------------------------------------------------
class ContentPart(_Request):
    type: Literal["text"] = Field(description="Only text parts are served.")
    text: Text | None = None


class FunctionCall(_Request):
    name: Name
    arguments: Text = Field(description="The arguments as JSON text.")


class MessageToolCall(_Request):
    id: Name
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Annotated[Text, Tag("str")] | Annotated[list[ContentPart], Tag("list[dict]")],
                       _one_of("a string or a list of content parts")] | None = None
    name: Name | None = None
    tool_calls: list[MessageToolCall] | None = Field(None, description="An assistant message's tool calls.")
    tool_call_id: Name | None = Field(None, description="A tool message: the call it answers.")
    reasoning_content: Text | None = Field(None, description="An assistant message's reasoning (accepted, not "
                                           "sent to the model).")


class FunctionDefinition(_Request):
    name: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_utf8)]
    description: Text | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema of the arguments (an object); left "
                                              "out: no arguments.")
    strict: bool | None = Field(None, description="Accepted; forced calls always follow the schema.")


class ChatTool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_utf8)]


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="Deprecated by OpenAI; same as "
                                   "max_completion_tokens.")
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="Most tokens to generate "
                                              "(within the context; default: as many "
                                              "as fit in the context).")
    logprobs: bool = Field(False, description="Return the log probability of each output token.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Most likely alternatives per token (needs "
                                     "logprobs).")
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS, description="Functions the model may call; "
                                         "their schemas reach the chat template as `tools`.")
    tool_choice: ToolChoice | None = Field(None, description="auto (the default with tools: the model decides; calls "
                                           "are parsed by --tool-call-parser), none (tools are not shown), "
                                           "required or a named function (enforced by constrained decoding).")
    parallel_tool_calls: bool = Field(True, description="false: at most one call (enforced for required / named).")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="Extension: extra chat-template "
                                                        "variables.")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="JSON text.")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = Field(None, description="With --reasoning-parser: the model's reasoning.")
    tool_calls: list[ToolCallOut] | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = Field(None, description="stop, length, tool_calls, or abort (refused or cut short).")
    matched_stop: int | str | None = Field(None, description="Extension: the stop string or token id that "
                                           "ended generation.")


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    matched_stop: int | str | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (`data: {...}`; the stream ends `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


# ---- completions ---------------------------------------------------------------------------
class CompletionRequest(SamplingFields):
    prompt: Annotated[
        Annotated[NonEmptyText, Tag("str")]
        | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_BATCH), Tag("list[str]")]
        | Annotated[TokenIds, Tag("list[int]")]
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_BATCH), Tag("list[list]")],
        _one_of("a non-empty string, a list of strings, token ids, or a list of token-id lists")] = Field(
        ..., description=f"Text, a list of texts, token ids, or a list of token-id lists (non-empty; at most "
        f"{MAX_BATCH} prompts).")
    max_tokens: int | None = Field(16, ge=0, le=MAX_TOKENS, description="Most tokens to generate (OpenAI's default "
                                   "is 16).")
    logprobs: int | None = Field(None, ge=0, le=20, description="Return this many most likely alternatives per "
                                 "token (0: only the chosen token's logprob).")
    echo: bool = Field(False, description="Prepend the prompt to the completion text.")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="Only best_of == n is supported.")
    suffix: Text | None = Field(None, json_schema_extra={"maxLength": 0}, description="Not supported; must be empty.")


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    matched_stop: int | str | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionChunk(BaseModel):
    """One server-sent event of a streamed completion."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# ---- models --------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "radixserve"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- native --------------------------------------------------------------------------------
# /generate's sampling_params as JSON schema: the bounds of SamplingParams.validate, which checks them.
_INT = {"type": "integer"}
NATIVE_SAMPLING_SCHEMA: dict[str, Any] = {
    "max_new_tokens": {**_INT, "minimum": 0, "maximum": MAX_TOKENS},
    "min_new_tokens": {**_INT, "minimum": 0, "maximum": MAX_TOKENS},
    "temperature": {"type": "number", "minimum": 0},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {**_INT, "minimum": -1, "maximum": MAX_TOP_K, "not": {"const": 0}},
    "min_p": {"type": "number", "minimum": 0, "maximum": 1},
    "repetition_penalty": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_REPETITION_PENALTY},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "stop": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_STOP_STRING_CHARS},
                       {"type": "array", "maxItems": MAX_STOP_STRINGS,
                        "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_STRING_CHARS}},
                       {"type": "null"}]},
    "stop_token_ids": {"anyOf": [{"type": "array", "maxItems": MAX_STOP_TOKEN_IDS,
                                  "items": {**_INT, "minimum": 0, "maximum": MAX_TOKEN_ID}}, {"type": "null"}]},
    "ignore_eos": {"type": "boolean"},
    "skip_special_tokens": {"type": "boolean"},
    "seed": {"anyOf": [{**_INT, "minimum": 0, "maximum": MAX_SEED}, {"type": "null"}]},
    "n": {**_INT, "minimum": 1, "maximum": MAX_N},
    # grammar-constrained decoding: at most one of json_schema (a schema, or it as JSON text), regex, ebnf
    "json_schema": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_GRAMMAR_CHARS}, {"type": "object"}]},
    "regex": {"type": "string", "minLength": 1, "maxLength": MAX_GRAMMAR_CHARS},
    "ebnf": {"type": "string", "minLength": 1, "maxLength": MAX_GRAMMAR_CHARS},
    # token id (as a string) -> bias; the engine refuses keys that are not token ids
    "logit_bias": {"type": "object", "maxProperties": MAX_LOGIT_BIAS, "additionalProperties": {
        "type": "number", "minimum": -MAX_LOGIT_BIAS_VALUE, "maximum": MAX_LOGIT_BIAS_VALUE}},
}
# null means "unset" for every one of them
NATIVE_SAMPLING_SCHEMA = {k: {"anyOf": [v, {"type": "null"}]} for k, v in NATIVE_SAMPLING_SCHEMA.items()}


class GenerateRequestBody(_Request):
    # Exactly one of text and input_ids (a 400 otherwise).
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in ("text", "input_ids")]})

    text: Annotated[
        Annotated[NonEmptyText, Tag("str")]
        | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_BATCH), Tag("list[str]")],
        _one_of("a non-empty string or a list of them")] | None = Field(
        None, description="Prompt text, or a batch of prompts. Give exactly one of `text` and `input_ids`.")
    input_ids: Annotated[
        Annotated[TokenIds, Tag("list[int]")]
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_BATCH), Tag("list[list]")],
        _one_of("a list of token ids or a list of such lists")] | None = Field(
        None, description="Prompt token ids, or a batch.")
    sampling_params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False, "properties": NATIVE_SAMPLING_SCHEMA},
        description="SGLang's sampling parameters (unknown names are refused).")
    stream: bool = Field(False, description="Server-sent events, each with the text so far.")
    return_logprob: bool = False
    top_logprobs_num: int = Field(0, ge=0, le=20)
    logprob_start_len: int = Field(
        -1, description="Return `meta_info.input_token_logprobs` for the prompt's positions from this one on "
        "(-1: none; must be less than the prompt's length). The cache is matched only up to it, so the "
        "forward recomputes from there.")
    rid: Name | None = Field(None, description="Request id, for /abort_request.")
    priority: Priority | None = None


class GenerateMetaInfo(BaseModel):
    id: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: dict[str, Any] | None = None
    e2e_latency: float | None = None
    output_token_logprobs: list[tuple[float, int]] | None = None
    output_top_logprobs: list[list[tuple[float, int]]] | None = None
    # (logprob, token id) per prompt position from logprob_start_len; position 0 has no logprob (null).
    input_token_logprobs: list[tuple[float | None, int]] | None = None


class GenerateResponse(BaseModel):
    text: str
    output_ids: list[int]
    index: int = 0
    meta_info: GenerateMetaInfo


class AbortRequestBody(_Request):
    rid: Name


class SuccessResponse(BaseModel):
    success: bool
    message: str = ""


class HealthResponse(BaseModel):
    status: str
