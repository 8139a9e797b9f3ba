"""The ``validate`` middleware's tables: the request models, field by field.

One pydantic ``TypedDict`` per JSON object of a Chat Completions request
(``_Chat...``) and of an Anthropic Messages request (``_Anthropic...``): the
fields it names, their types, ranges (``Field(ge=..., le=...)``), lengths and
enums (``Literal``); required fields are ``Required``. A union of objects is
discriminated by its ``role`` or ``type`` field; a value that may be a string,
an array or an object by its JSON kind (the tags ``_STRING``, ``_ARRAY`` and
``_OBJECT``, named in words by :data:`KIND_NAMES`). Two rules a type cannot
say are after-validators -- an assistant message says something, a custom tool
is complete -- raising the error types :data:`ASSISTANT_CONTENT` and
:data:`CUSTOM_TOOL`.

:data:`REQUESTS` names the model checked on each endpoint. What is checked, in
prose, how fast, and how a pydantic error becomes OpenAI's 400, are in
``core.policies._validate``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

from pydantic import AfterValidator, ConfigDict, Discriminator, Field, Tag, with_config
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from .._endpoints import Endpoint

__all__ = [
    "ASSISTANT_CONTENT",
    "CUSTOM_TOOL",
    "KIND_ERROR",
    "KIND_NAMES",
    "REQUESTS",
]

# Strict: a JSON string is not an integer, nor 1 a boolean. Fields the models do
# not name are ignored rather than kept ("allow"): the result is thrown away, so
# the two accept the same bodies, and not copying them is faster.
_CONFIG = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)
_Obj = with_config(_CONFIG)

# -- unions by JSON kind ---------------------------------------------------------------

# A value that may be a string or an array (or an object) is dispatched on its kind,
# so an error names the part at fault rather than every alternative's complaint.
_STRING = "<string>"
_ARRAY = "<array>"
_OBJECT = "<object>"
KIND_NAMES = {_STRING: "a string", _ARRAY: "an array", _OBJECT: "an object"}
KIND_ERROR = "json_kind"


def _kind(value: Any) -> str | None:
    if isinstance(value, str):
        return _STRING
    if isinstance(value, list):
        return _ARRAY
    if isinstance(value, dict):
        return _OBJECT
    return None


_BY_KIND = Discriminator(
    _kind, custom_error_type=KIND_ERROR, custom_error_message="Input has the wrong type"
)

# -- OpenAI Chat Completions -------------------------------------------------------------

_Positive = Annotated[int, Field(ge=1)]
_Penalty = Annotated[float, Field(ge=-2, le=2)]
_Probability = Annotated[float, Field(ge=0, le=1)]
_Name64 = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$", max_length=64)]


@_Obj
class _ChatText(TypedDict, total=False):
    type: Required[Literal["text"]]
    text: Required[str]


@_Obj
class _ChatImageURL(TypedDict, total=False):
    url: Required[str]
    detail: Literal["auto", "low", "high", "original"] | None


@_Obj
class _ChatImage(TypedDict, total=False):
    type: Required[Literal["image_url"]]
    image_url: Required[_ChatImageURL]


@_Obj
class _ChatAudioData(TypedDict, total=False):
    data: Required[str]
    format: Required[Literal["wav", "mp3"]]


@_Obj
class _ChatAudio(TypedDict, total=False):
    type: Required[Literal["input_audio"]]
    input_audio: Required[_ChatAudioData]


@_Obj
class _ChatFileData(TypedDict, total=False):
    file_data: str
    file_id: str
    filename: str


@_Obj
class _ChatFile(TypedDict, total=False):
    type: Required[Literal["file"]]
    file: Required[_ChatFileData]


@_Obj
class _ChatRefusal(TypedDict, total=False):
    type: Required[Literal["refusal"]]
    refusal: Required[str]


_ChatTextContent = Annotated[
    Annotated[str, Tag(_STRING)]
    | Annotated[Annotated[list[_ChatText], Field(min_length=1)], Tag(_ARRAY)],
    _BY_KIND,
]
_ChatUserPart = Annotated[_ChatText | _ChatImage | _ChatAudio | _ChatFile, Discriminator("type")]
_ChatUserContent = Annotated[
    Annotated[str, Tag(_STRING)]
    | Annotated[Annotated[list[_ChatUserPart], Field(min_length=1)], Tag(_ARRAY)],
    _BY_KIND,
]
_ChatAssistantPart = Annotated[_ChatText | _ChatRefusal, Discriminator("type")]
_ChatAssistantContent = Annotated[
    Annotated[str, Tag(_STRING)]
    | Annotated[Annotated[list[_ChatAssistantPart], Field(min_length=1)], Tag(_ARRAY)],
    _BY_KIND,
]


@_Obj
class _ChatSystem(TypedDict, total=False):
    role: Required[Literal["system"]]
    content: Required[_ChatTextContent]
    name: str | None


@_Obj
class _ChatDeveloper(TypedDict, total=False):
    role: Required[Literal["developer"]]
    content: Required[_ChatTextContent]
    name: str | None


@_Obj
class _ChatUser(TypedDict, total=False):
    role: Required[Literal["user"]]
    content: Required[_ChatUserContent]
    name: str | None


@_Obj
class _ChatFunctionCall(TypedDict, total=False):
    name: Required[str]
    arguments: Required[str]


@_Obj
class _ChatFunctionToolCall(TypedDict, total=False):
    id: Required[str]
    type: Required[Literal["function"]]
    function: Required[_ChatFunctionCall]


@_Obj
class _ChatCustomCall(TypedDict, total=False):
    name: Required[str]
    input: Required[str]


@_Obj
class _ChatCustomToolCall(TypedDict, total=False):
    id: Required[str]
    type: Required[Literal["custom"]]
    custom: Required[_ChatCustomCall]


@_Obj
class _ChatAudioRef(TypedDict, total=False):
    id: Required[str]


@_Obj
class _ChatAssistant(TypedDict, total=False):
    role: Required[Literal["assistant"]]
    content: _ChatAssistantContent | None
    refusal: str | None
    name: str | None
    audio: _ChatAudioRef | None
    tool_calls: (
        list[Annotated[_ChatFunctionToolCall | _ChatCustomToolCall, Discriminator("type")]] | None
    )
    function_call: _ChatFunctionCall | None


ASSISTANT_CONTENT = "assistant_content"


def _assistant_says_something(message: _ChatAssistant) -> _ChatAssistant:
    """``content`` is required unless the message calls a tool or refers to audio."""
    if not any(message.get(key) for key in ("content", "tool_calls", "function_call", "audio")):
        raise PydanticCustomError(ASSISTANT_CONTENT, "content is required")
    return message


@_Obj
class _ChatTool(TypedDict, total=False):
    role: Required[Literal["tool"]]
    content: Required[_ChatTextContent]
    tool_call_id: Required[str]


@_Obj
class _ChatFunction(TypedDict, total=False):
    role: Required[Literal["function"]]
    content: Required[str | None]
    name: Required[str]


_ChatMessage = Annotated[
    _ChatSystem
    | _ChatDeveloper
    | _ChatUser
    | Annotated[_ChatAssistant, AfterValidator(_assistant_says_something)]
    | _ChatTool
    | _ChatFunction,
    Discriminator("role"),
]


@_Obj
class _ChatFunctionDefinition(TypedDict, total=False):
    name: Required[_Name64]
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


@_Obj
class _ChatFunctionTool(TypedDict, total=False):
    type: Required[Literal["function"]]
    function: Required[_ChatFunctionDefinition]


@_Obj
class _ChatCustomDefinition(TypedDict, total=False):
    name: Required[str]
    description: str | None
    format: dict[str, Any] | None


@_Obj
class _ChatCustomTool(TypedDict, total=False):
    type: Required[Literal["custom"]]
    custom: Required[_ChatCustomDefinition]


@_Obj
class _ChatName(TypedDict, total=False):
    name: Required[str]


@_Obj
class _ChatChooseFunction(TypedDict, total=False):
    type: Required[Literal["function"]]
    function: Required[_ChatName]


@_Obj
class _ChatChooseCustom(TypedDict, total=False):
    type: Required[Literal["custom"]]
    custom: Required[_ChatName]


@_Obj
class _ChatAllowedTools(TypedDict, total=False):
    mode: Required[Literal["auto", "required"]]
    tools: Required[list[dict[str, Any]]]


@_Obj
class _ChatChooseAllowed(TypedDict, total=False):
    type: Required[Literal["allowed_tools"]]
    allowed_tools: Required[_ChatAllowedTools]


@_Obj
class _ChatFormatText(TypedDict, total=False):
    type: Required[Literal["text", "json_object"]]


@_Obj
class _ChatJSONSchema(TypedDict, total=False):
    name: Required[_Name64]
    description: str | None
    schema: dict[str, Any] | None
    strict: bool | None


@_Obj
class _ChatFormatSchema(TypedDict, total=False):
    type: Required[Literal["json_schema"]]
    json_schema: Required[_ChatJSONSchema]


@_Obj
class _ChatStreamOptions(TypedDict, total=False):
    include_usage: bool | None
    include_obfuscation: bool | None


@_Obj
class _ChatPrediction(TypedDict, total=False):
    type: Required[Literal["content"]]
    content: Required[_ChatTextContent]


@_Obj
class _ChatRequest(TypedDict, total=False):
    model: Required[str]
    messages: Required[Annotated[list[_ChatMessage], Field(min_length=1)]]
    audio: dict[str, Any] | None
    frequency_penalty: _Penalty | None
    function_call: (
        Annotated[
            Annotated[Literal["none", "auto"], Tag(_STRING)] | Annotated[_ChatName, Tag(_OBJECT)],
            _BY_KIND,
        ]
        | None
    )
    functions: Annotated[list[_ChatFunctionDefinition], Field(min_length=1, max_length=128)] | None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None
    logprobs: bool | None
    max_completion_tokens: _Positive | None
    max_tokens: _Positive | None
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    )
    modalities: list[str] | None
    n: Annotated[int, Field(ge=1, le=128)] | None
    parallel_tool_calls: bool | None
    prediction: _ChatPrediction | None
    presence_penalty: _Penalty | None
    prompt_cache_key: str | None
    reasoning_effort: str | None
    response_format: Annotated[_ChatFormatText | _ChatFormatSchema, Discriminator("type")] | None
    safety_identifier: str | None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None
    service_tier: str | None
    stop: (
        Annotated[
            Annotated[str, Tag(_STRING)]
            | Annotated[Annotated[list[str], Field(max_length=4)], Tag(_ARRAY)],
            _BY_KIND,
        ]
        | None
    )
    store: bool | None
    stream: bool | None
    stream_options: _ChatStreamOptions | None
    temperature: Annotated[float, Field(ge=0, le=2)] | None
    tool_choice: (
        Annotated[
            Annotated[Literal["none", "auto", "required"], Tag(_STRING)]
            | Annotated[
                Annotated[
                    _ChatChooseFunction | _ChatChooseCustom | _ChatChooseAllowed,
                    Discriminator("type"),
                ],
                Tag(_OBJECT),
            ],
            _BY_KIND,
        ]
        | None
    )
    tools: list[Annotated[_ChatFunctionTool | _ChatCustomTool, Discriminator("type")]] | None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None
    top_p: _Probability | None
    user: str | None
    verbosity: str | None
    web_search_options: dict[str, Any] | None


# -- Anthropic Messages -------------------------------------------------------------------


@_Obj
class _AnthropicText(TypedDict, total=False):
    type: Required[Literal["text"]]
    text: Required[str]
    cache_control: dict[str, Any] | None
    citations: list[dict[str, Any]] | None


@_Obj
class _AnthropicBase64Image(TypedDict, total=False):
    type: Required[Literal["base64"]]
    media_type: Required[Literal["image/jpeg", "image/png", "image/gif", "image/webp"]]
    data: Required[str]


@_Obj
class _AnthropicURL(TypedDict, total=False):
    type: Required[Literal["url"]]
    url: Required[str]


@_Obj
class _AnthropicFile(TypedDict, total=False):
    type: Required[Literal["file"]]
    file_id: Required[str]


@_Obj
class _AnthropicImage(TypedDict, total=False):
    type: Required[Literal["image"]]
    source: Required[
        Annotated[_AnthropicBase64Image | _AnthropicURL | _AnthropicFile, Discriminator("type")]
    ]
    cache_control: dict[str, Any] | None


@_Obj
class _AnthropicBase64PDF(TypedDict, total=False):
    type: Required[Literal["base64"]]
    media_type: Required[Literal["application/pdf"]]
    data: Required[str]


@_Obj
class _AnthropicPlainText(TypedDict, total=False):
    type: Required[Literal["text"]]
    media_type: Required[Literal["text/plain"]]
    data: Required[str]


@_Obj
class _AnthropicContentSource(TypedDict, total=False):
    type: Required[Literal["content"]]
    content: Required[
        Annotated[
            Annotated[str, Tag(_STRING)]
            | Annotated[
                list[Annotated[_AnthropicText | _AnthropicImage, Discriminator("type")]],
                Tag(_ARRAY),
            ],
            _BY_KIND,
        ]
    ]


@_Obj
class _AnthropicDocument(TypedDict, total=False):
    type: Required[Literal["document"]]
    source: Required[
        Annotated[
            _AnthropicBase64PDF
            | _AnthropicPlainText
            | _AnthropicContentSource
            | _AnthropicURL
            | _AnthropicFile,
            Discriminator("type"),
        ]
    ]
    title: str | None
    context: str | None
    citations: dict[str, Any] | None
    cache_control: dict[str, Any] | None


@_Obj
class _AnthropicSearchResult(TypedDict, total=False):
    type: Required[Literal["search_result"]]
    source: Required[str]
    title: Required[str]
    content: Required[list[_AnthropicText]]
    citations: dict[str, Any] | None
    cache_control: dict[str, Any] | None


@_Obj
class _AnthropicThinking(TypedDict, total=False):
    type: Required[Literal["thinking"]]
    thinking: Required[str]
    signature: Required[str]


@_Obj
class _AnthropicRedactedThinking(TypedDict, total=False):
    type: Required[Literal["redacted_thinking"]]
    data: Required[str]


@_Obj
class _AnthropicToolUse(TypedDict, total=False):
    type: Required[Literal["tool_use", "server_tool_use"]]
    id: Required[str]
    name: Required[str]
    input: Required[dict[str, Any]]
    cache_control: dict[str, Any] | None


@_Obj
class _AnthropicToolReference(TypedDict, total=False):
    """Tool-result blocks checked by their ``type`` only."""

    type: Required[Literal["tool_reference", "browser_state"]]


@_Obj
class _AnthropicToolResult(TypedDict, total=False):
    type: Required[Literal["tool_result"]]
    tool_use_id: Required[str]
    content: (
        Annotated[
            Annotated[str, Tag(_STRING)]
            | Annotated[
                list[
                    Annotated[
                        _AnthropicText
                        | _AnthropicImage
                        | _AnthropicSearchResult
                        | _AnthropicDocument
                        | _AnthropicToolReference,
                        Discriminator("type"),
                    ]
                ],
                Tag(_ARRAY),
            ],
            _BY_KIND,
        ]
        | None
    )
    is_error: bool | None
    cache_control: dict[str, Any] | None


@_Obj
class _AnthropicWebSearchResult(TypedDict, total=False):
    type: Required[Literal["web_search_tool_result"]]
    tool_use_id: Required[str]
    content: Required[
        Annotated[
            Annotated[list[dict[str, Any]], Tag(_ARRAY)] | Annotated[dict[str, Any], Tag(_OBJECT)],
            _BY_KIND,
        ]
    ]
    cache_control: dict[str, Any] | None


@_Obj
class _AnthropicOtherBlock(TypedDict, total=False):
    """Blocks checked by their ``type`` only: server-tool results, beta blocks."""

    type: Required[
        Literal[
            "web_fetch_tool_result",
            "code_execution_tool_result",
            "bash_code_execution_tool_result",
            "text_editor_code_execution_tool_result",
            "tool_search_tool_result",
            "container_upload",
            "mcp_tool_use",
            "mcp_tool_result",
            "mcp_tool_listing",
            "advisor_tool_result",
            "compaction",
            "tool_addition",
            "tool_removal",
            "fallback",
        ]
    ]


_AnthropicBlock = Annotated[
    _AnthropicText
    | _AnthropicImage
    | _AnthropicDocument
    | _AnthropicSearchResult
    | _AnthropicThinking
    | _AnthropicRedactedThinking
    | _AnthropicToolUse
    | _AnthropicToolResult
    | _AnthropicWebSearchResult
    | _AnthropicOtherBlock,
    Discriminator("type"),
]


@_Obj
class _AnthropicMessage(TypedDict, total=False):
    role: Required[Literal["user", "assistant"]]
    content: Required[
        Annotated[
            Annotated[str, Tag(_STRING)] | Annotated[list[_AnthropicBlock], Tag(_ARRAY)],
            _BY_KIND,
        ]
    ]


@_Obj
class _AnthropicTool(TypedDict, total=False):
    type: str | None
    name: str
    description: str | None
    input_schema: dict[str, Any]
    cache_control: dict[str, Any] | None


CUSTOM_TOOL = "custom_tool"


def _custom_tool_is_complete(tool: _AnthropicTool) -> _AnthropicTool:
    """A custom tool (no ``type``, or ``custom``) needs a ``name`` and an ``input_schema``.

    Server tools (``web_search_20250305`` ...) and beta toolsets are typed by
    their ``type`` alone: their fields change with their versions.
    """
    if tool.get("type") in (None, "custom"):
        for key in ("name", "input_schema"):
            if key not in tool:
                raise PydanticCustomError(CUSTOM_TOOL, "field required", {"field": key})
    return tool


@_Obj
class _AnthropicChooseAuto(TypedDict, total=False):
    type: Required[Literal["auto", "any"]]
    disable_parallel_tool_use: bool | None


@_Obj
class _AnthropicChooseTool(TypedDict, total=False):
    type: Required[Literal["tool"]]
    name: Required[str]
    disable_parallel_tool_use: bool | None


@_Obj
class _AnthropicChooseNone(TypedDict, total=False):
    type: Required[Literal["none"]]


@_Obj
class _AnthropicThinkingOn(TypedDict, total=False):
    type: Required[Literal["enabled"]]
    budget_tokens: Required[Annotated[int, Field(ge=1024)]]


@_Obj
class _AnthropicThinkingOther(TypedDict, total=False):
    type: Required[Literal["disabled", "adaptive", "between_tools"]]


@_Obj
class _AnthropicMetadata(TypedDict, total=False):
    user_id: str | None


@_Obj
class _AnthropicRequest(TypedDict, total=False):
    model: Required[str]
    max_tokens: Required[Annotated[int, Field(ge=0)]]
    messages: Required[Annotated[list[_AnthropicMessage], Field(min_length=1)]]
    system: (
        Annotated[
            Annotated[str, Tag(_STRING)] | Annotated[list[_AnthropicText], Tag(_ARRAY)],
            _BY_KIND,
        ]
        | None
    )
    metadata: _AnthropicMetadata | None
    stop_sequences: list[str] | None
    stream: bool | None
    temperature: _Probability | None
    top_p: _Probability | None
    top_k: Annotated[int, Field(ge=0)] | None
    tools: list[Annotated[_AnthropicTool, AfterValidator(_custom_tool_is_complete)]] | None
    tool_choice: (
        Annotated[
            _AnthropicChooseAuto | _AnthropicChooseTool | _AnthropicChooseNone,
            Discriminator("type"),
        ]
        | None
    )
    thinking: (
        Annotated[_AnthropicThinkingOn | _AnthropicThinkingOther, Discriminator("type")] | None
    )
    cache_control: dict[str, Any] | None
    service_tier: str | None


#: The model a request's body is checked against, by endpoint.
REQUESTS: dict[Endpoint, Any] = {
    "chat": _ChatRequest,
    "messages": _AnthropicRequest,
}
