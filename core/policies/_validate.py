"""The ``validate`` middleware: refuse malformed requests before they leave.

Its ``on_request`` hook checks the body of ``POST /v1/chat/completions``
(OpenAI Chat Completions) and ``POST /v1/messages`` (Anthropic Messages)
against the API's documented shape, and answers 400 naming the first
``param`` at fault in OpenAI's style (``messages[2].role``, ``temperature``,
``messages[0].content[1].type``) with OpenAI's error codes
(``missing_required_parameter``, ``invalid_type``, ``invalid_value``,
``integer_below_min_value``, ``decimal_above_max_value``, ``empty_array``,
``array_above_max_length`` ...). A body that is not a JSON object is
``invalid_json``. An Anthropic client gets the same error in Anthropic's shape
(the message names the param). Other paths, and every field the models do not
name, pass untouched; the body is never modified.

Chat Completions:

* ``model`` (string) and ``messages`` (a non-empty array) are required;
* a message's ``role`` is ``system``, ``developer``, ``user``, ``assistant``,
  ``tool`` or ``function``; its ``content`` is a string or a non-empty array
  of parts whose ``type`` the role allows: ``text`` (every role),
  ``image_url``, ``input_audio`` and ``file`` (``user``), ``refusal``
  (``assistant``); each part has its fields (``image_url.url``,
  ``input_audio.data`` and ``format`` ...);
* ``tool`` messages need ``tool_call_id``, ``function`` messages ``name``,
  ``assistant`` messages ``content`` unless they carry ``tool_calls``,
  ``function_call`` or ``audio``; ``tool_calls`` are ``function`` or
  ``custom`` calls with their fields;
* ranges: ``max_tokens`` and ``max_completion_tokens`` >= 1, ``n`` in
  [1, 128], ``temperature`` in [0, 2], ``top_p`` in [0, 1],
  ``presence_penalty`` and ``frequency_penalty`` in [-2, 2], ``top_logprobs``
  in [0, 20], ``logit_bias`` values in [-100, 100], ``seed`` a 64-bit
  integer, ``stop`` a string or at most 4 strings, ``metadata`` at most 16
  string pairs (keys up to 64 characters, values up to 512);
* ``tools`` are ``function`` tools (``name`` of letters, digits, ``_`` and
  ``-``, at most 64) or ``custom`` ones; ``tool_choice``, ``functions``,
  ``function_call``, ``response_format``, ``stream_options`` and
  ``prediction`` have their documented shapes; the other known fields their
  types (``stream`` a boolean, ``user`` a string ...).

Messages:

* ``model`` (string), ``max_tokens`` (an integer >= 0: ``0`` pre-warms the
  prompt cache) and ``messages`` (a non-empty array) are required;
* a message's ``role`` is ``user`` or ``assistant`` (the system prompt is the
  top-level ``system``, a string or ``text`` blocks); its ``content`` is a
  string or an array of blocks whose ``type`` is a known one: ``text``,
  ``image``, ``document``, ``search_result``, ``thinking``,
  ``redacted_thinking``, ``tool_use``, ``tool_result``, ``server_tool_use``
  and ``web_search_tool_result`` are checked field by field (an image's
  ``source`` and its ``media_type`` ...); the other server-tool results,
  ``container_upload`` and the beta blocks (``mcp_tool_use``, ``compaction``
  ...) only by their ``type``;
* ranges: ``temperature`` and ``top_p`` in [0, 1], ``top_k`` >= 0,
  ``thinking.budget_tokens`` >= 1024; ``stop_sequences`` strings,
  ``stream`` a boolean; ``tool_choice`` and ``thinking`` have their
  documented shapes; a custom tool (no ``type``, or ``custom``) needs
  ``name`` and ``input_schema``, a server tool only a ``type``.

Optional fields may be ``null`` (clients send that for "not given"). Sets of
values that change often (``reasoning_effort``, ``service_tier``, tool
versions) are checked as strings only: a validator that refuses what the
upstream accepts breaks clients; one that lets through what the upstream
refuses only moves the 400.

Speed: the models are built once, at import (35 ms), and the body is parsed
and checked in one pass by pydantic-core: 9 us for a 1 KB chat or Messages
request, against 12 us for ``json.loads`` then ``validate_python`` (and 6 us
for ``json.loads`` alone). Unions of objects are discriminated by their
``role`` or ``type`` field, natively; a string-or-array union by a Python
function on the JSON kind, which costs next to nothing for a string (a
``role`` discriminator written that way cost 5 us: pydantic hands the
function each message as Python objects). Fields the models do not name are
ignored rather than kept, 1.5 us less. Only a refused request pays for
finding the param.
"""

from __future__ import annotations

import functools
import json
from types import NoneType, UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import pydantic
import pydantic_core
from pydantic import AfterValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter, with_config
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict, is_typeddict

from .._errors import ValidationError
from .._http import json_error, param_path, parse_json_object
from .._json import MAX_JSON_ITEMS, JSONError, check_items
from .._middleware import Context

__all__ = ["ValidateMiddleware"]

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
_KIND_NAMES = {_STRING: "a string", _ARRAY: "an array", _OBJECT: "an object"}
_KIND_ERROR = "json_kind"


def _kind(value: Any) -> str | None:
    if isinstance(value, str):
        return _STRING
    if isinstance(value, list):
        return _ARRAY
    if isinstance(value, dict):
        return _OBJECT
    return None


_BY_KIND = Discriminator(
    _kind, custom_error_type=_KIND_ERROR, custom_error_message="Input has the wrong type"
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


_ASSISTANT_CONTENT = "assistant_content"


def _assistant_says_something(message: _ChatAssistant) -> _ChatAssistant:
    """``content`` is required unless the message calls a tool or refers to audio."""
    if not any(message.get(key) for key in ("content", "tool_calls", "function_call", "audio")):
        raise PydanticCustomError(_ASSISTANT_CONTENT, "content is required")
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


_CUSTOM_TOOL = "custom_tool"


def _custom_tool_is_complete(tool: _AnthropicTool) -> _AnthropicTool:
    """A custom tool (no ``type``, or ``custom``) needs a ``name`` and an ``input_schema``.

    Server tools (``web_search_20250305`` ...) and beta toolsets are typed by
    their ``type`` alone: their fields change with their versions.
    """
    if tool.get("type") in (None, "custom"):
        for key in ("name", "input_schema"):
            if key not in tool:
                raise PydanticCustomError(_CUSTOM_TOOL, "field required", {"field": key})
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


#: What is checked, by path: the pydantic validator, and the model (to name a param).
_CHECKS: dict[bytes, tuple[TypeAdapter[Any], Any]] = {
    path: (TypeAdapter(model), model)
    for path, model in (
        (b"/v1/chat/completions", _ChatRequest),
        (b"/v1/messages", _AnthropicRequest),
    )
}


# -- from a pydantic error to (param, message, code) ----------------------------------------
#
# pydantic's ``loc`` holds, besides field names and indexes, the tag of every union it
# went through: a ``role`` or ``type`` value, or one of the kind tags above. Which
# item is a tag is known only from the model, so the ``loc`` is walked along it.
# (Walking the data instead would mistake a tag for a field of the same name:
# ``{"type": "image_url", "image_url": ...}``.) This runs for refused requests only.


def _strip(tp: Any) -> Any:
    """``tp`` without ``Required``, ``| None`` and any annotation but a discriminator."""
    while True:
        origin = get_origin(tp)
        if origin is Required:
            tp = get_args(tp)[0]
        elif origin is Annotated:
            if _discriminator(tp) is not None:
                return tp
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):  # only ever "X | None" here
            tp = next(arg for arg in get_args(tp) if arg is not NoneType)
        else:
            return tp


def _discriminator(tp: Any) -> Discriminator | None:
    return next((m for m in tp.__metadata__ if isinstance(m, Discriminator)), None)


@functools.cache
def _fields(typed_dict: Any) -> dict[str, Any]:
    hints = get_type_hints(typed_dict, include_extras=True)
    return {name: _strip(tp) for name, tp in hints.items()}


def _members(union: Any) -> dict[str, Any]:
    """A discriminated union's members by their tag."""
    discriminator = _discriminator(union)
    assert discriminator is not None
    field = discriminator.discriminator
    members: dict[str, Any] = {}
    for member in get_args(get_args(union)[0]):
        if isinstance(field, str):
            inner = _strip(member)
            members.update(dict.fromkeys(get_args(_fields(inner)[field]), inner))
        else:
            tag = next(m.tag for m in get_args(member)[1:] if isinstance(m, Tag))
            members[tag] = _strip(member)
    return members


def _locate(root: Any, loc: tuple[int | str, ...]) -> tuple[list[int | str], Any]:
    """The path in the request an error's ``loc`` leads to, and the type found there."""
    path: list[int | str] = []
    tp = root
    for item in loc:
        if item == "[key]":  # the error is about the key just passed
            continue
        if get_origin(tp) is Annotated:  # a union: the item is the member's tag
            tp = _members(tp)[str(item)]
        elif is_typeddict(tp):
            path.append(item)
            tp = _fields(tp)[str(item)]
        elif get_origin(tp) is list:
            path.append(item)
            tp = _strip(get_args(tp)[0])
        else:  # a dict: the item is a key
            path.append(item)
            tp = _strip(get_args(tp)[1])
    return path, tp


def _a(value: Any) -> str:
    """What a JSON value is, as OpenAI's errors say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _choices(values: Any) -> str:
    quoted = [repr(value) for value in values]
    if len(quoted) < 3:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a decimal",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
}


def _missing(path: list[int | str]) -> ValidationError:
    param = param_path(path)
    return ValidationError(
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _invalid_value(path: list[int | str], value: Any, choices: Any) -> ValidationError:
    param = param_path(path)
    return ValidationError(
        f"Invalid value for '{param}': {_shown(value)}. Supported values are: {_choices(choices)}.",
        param=param,
        code="invalid_value",
    )


def _refusal(error: pydantic_core.ErrorDetails, root: Any) -> ValidationError:
    """The 400 for pydantic's ``error`` about a request of type ``root``."""
    path, tp = _locate(root, error["loc"])
    kind = error["type"]
    value = error["input"]
    ctx = error.get("ctx", {})
    param = param_path(path)
    if kind == "missing":
        return _missing(path)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = str(_discriminator(tp).discriminator)  # type: ignore[union-attr]
        if field not in value:
            return _missing([*path, field])
        return _invalid_value([*path, field], value[field], _members(tp))
    if kind == _ASSISTANT_CONTENT:
        return _missing([*path, "content"])
    if kind == _CUSTOM_TOOL:
        return _missing([*path, ctx["field"]])
    if kind == "literal_error":
        return _invalid_value(path, value, get_args(tp))
    if kind == _KIND_ERROR or kind in _EXPECTED:
        expected = (
            " or ".join(_KIND_NAMES[tag] for tag in _members(tp))
            if kind == _KIND_ERROR
            else _EXPECTED[kind]
        )
        return ValidationError(
            f"Invalid type for '{param}': expected {expected}, but got {_a(value)} instead.",
            param=param,
            code="invalid_type",
        )
    noun = "integer" if tp is int else "decimal"
    if kind == "greater_than_equal":
        message = (
            f"{noun} below minimum value. Expected a value >= {_number(ctx['ge'])}, "
            f"but got {_number(value)} instead"
        )
        code = f"{noun}_below_min_value"
    elif kind == "less_than_equal":
        message = (
            f"{noun} above maximum value. Expected a value <= {_number(ctx['le'])}, "
            f"but got {_number(value)} instead"
        )
        code = f"{noun}_above_max_value"
    elif kind == "too_short":  # every minimum length here is 1
        message = (
            f"empty array. Expected an array with minimum length {ctx['min_length']}, "
            "but got an empty array instead"
        )
        code = "empty_array"
    elif kind == "too_long" and isinstance(value, list):
        message = (
            f"array too long. Expected an array with maximum length {ctx['max_length']}, "
            f"but got an array with length {len(value)} instead"
        )
        code = "array_above_max_length"
    elif kind == "too_long":
        message = (
            f"object too large. Expected an object with at most {ctx['max_length']} "
            f"properties, but got {len(value)} instead"
        )
        code = "object_above_max_properties"
    elif kind == "string_too_long":
        message = (
            f"string too long. Expected a string with maximum length {ctx['max_length']}, "
            f"but got a string with length {len(value)} instead"
        )
        code = "string_above_max_length"
    elif kind == "string_pattern_mismatch":
        message = (
            "string does not match pattern. Expected a string that matches the pattern "
            f"{ctx['pattern']!r}"
        )
        code = "invalid_value"
    else:  # finite_number: NaN or Infinity
        message = error["msg"][0].lower() + error["msg"][1:]
        code = "invalid_value"
    return ValidationError(f"Invalid '{param}': {message}.", param=param, code=code)


class ValidateMiddleware:
    """Refuse Chat Completions and Messages requests that break their API's rules.

    No options (``max_json_items`` comes from ``limits``). What is checked, and how
    fast, is in this module's docstring.
    """

    name = "validate"

    __slots__ = ("_max_items",)

    def __init__(self, *, max_json_items: int = MAX_JSON_ITEMS) -> None:
        self._max_items = max_json_items

    def on_request(self, exchange: Context) -> None:
        """Raise ``ValidationError`` for a malformed request; never change it."""
        if exchange.request_method != b"POST":
            return
        check = _CHECKS.get(exchange.request_path)
        if check is None:
            return
        adapter, root = check
        raw = exchange.request_body
        try:  # before pydantic parses it all
            check_items(raw, max_items=self._max_items)
        except JSONError as exc:
            raise json_error(exc) from exc
        try:
            adapter.validate_json(raw)
        except pydantic.ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            if error["loc"]:
                raise _refusal(error, root) from None
        else:
            return
        # Not a JSON object, too deep, or JSON only the core's parser reads (UTF-16,
        # a lone surrogate): the same rules as the rest of the core.
        body = parse_json_object(raw, max_items=self._max_items)
        try:
            adapter.validate_python(body)
        except pydantic.ValidationError as exc:
            raise _refusal(exc.errors(include_url=False)[0], root) from None
