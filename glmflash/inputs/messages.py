"""OpenAI-style chat messages -> the processor's conversation plus the decoded images, in order.

Checks roles and content parts, counts images, and neutralises control-token text a user typed
(so "<|assistant|>" in a question is read as text, not as a turn). Assistant messages may carry
`tool_calls`, and `tool` messages answer them by `tool_call_id`, with text or images (the same
guards as a user's). No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ..errors import ImageError, InvalidRequestError

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
ZERO_WIDTH_SPACE = "\u200b"


def to_conversation(
    messages: Sequence[dict],
    *,
    load_image: Callable[[object], object],
    max_images: int,
    control_tokens: Iterable[str] = (),
) -> tuple[list[dict], list]:
    """Validate `messages`; return (conversation for the chat template, images in prompt order)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError(
            "messages must be a non-empty list of {role, content} objects.", param="messages"
        )
    tokens = sorted({t for t in control_tokens if len(t) > 1}, key=len, reverse=True)
    conversation: list[dict] = []
    images: list = []
    calls: dict[str, bool] = {}  # tool_call_id -> answered yet
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{where} must be an object with role and content.", param=where)
        role = ROLES.get(str(message.get("role")))
        if role is None:
            raise InvalidRequestError(
                f"{where}.role {message.get('role')!r} is not supported: "
                "use system, user, assistant or tool.",
                param=f"{where}.role",
            )
        if message.get("function_call"):
            raise InvalidRequestError(
                "function_call is not supported: send tool_calls.", param=f"{where}.function_call"
            )
        extra: dict = {}
        if message.get("tool_calls"):
            if role != "assistant":
                raise InvalidRequestError(
                    f"Only assistant messages carry tool_calls ({where}).", param=f"{where}.tool_calls"
                )
            extra["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls", tokens, calls)
        if role == "tool":
            extra["tool_call_id"] = _answered(message.get("tool_call_id"), f"{where}.tool_call_id", calls)
        parts: list[dict] = []
        for j, (kind, value) in enumerate(_parts(message.get("content"), where)):
            here = f"{where}.content[{j}]"
            if kind == "text":
                text = str(value)
                _check_text(text, here)
                if parts and parts[-1]["type"] == "text":  # the template joins them with nothing
                    parts[-1]["text"] += text
                else:
                    parts.append({"type": "text", "text": text})
                continue
            if role not in ("user", "tool"):
                raise InvalidRequestError(
                    f"Images are only accepted in user and tool messages ({here}).", param=here
                )
            if len(images) >= max_images:
                raise ImageError(
                    f"Too many images: at most {max_images} per request.", param=here, code="too_many_images"
                )
            try:
                loaded = load_image(value)
            except ImageError as exc:
                raise ImageError(f"{here}: {exc.message}", param=here, code=exc.code) from None
            pages = loaded if isinstance(loaded, list) else [loaded]  # a PDF is its pages
            if len(images) + len(pages) > max_images:
                raise ImageError(
                    f"{here}: the document has {len(pages)} pages; with the other images that is over "
                    f"{max_images} images (pages) per request: send fewer pages.",
                    param=here, code="too_many_images",
                )  # fmt: skip
            images += pages
            parts += [{"type": "image"} for _ in pages]
        for piece in parts:  # after merging: a token split over two parts is caught too
            if piece["type"] == "text":
                piece["text"] = neutralize(piece["text"], tokens)
        conversation.append({"role": role, "content": parts, **extra})
    if not any(m["role"] == "user" for m in conversation):
        raise InvalidRequestError("messages need at least one user message.", param="messages")
    if conversation[-1]["role"] not in ("user", "tool"):
        raise InvalidRequestError(
            "The last message must be from the user (or a tool's result).", param="messages"
        )
    return conversation, images


def _tool_calls(value, where: str, tokens: Sequence[str], calls: dict[str, bool]) -> list[dict]:
    """An assistant message's OpenAI tool_calls as the template renders them: arguments as an
    object, string values neutralised like any other text."""
    from ..text.tools import render_arguments  # the text stage owns the call format

    if not isinstance(value, list):
        raise InvalidRequestError(f"{where} must be a list of calls.", param=where)
    out = []
    for k, call in enumerate(value):
        here = f"{where}[{k}]"
        function: dict | None = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        call_id = call.get("id") if isinstance(call, dict) else None
        if not isinstance(name, str) or not name or not isinstance(call_id, str) or not call_id:
            raise InvalidRequestError(
                f'{here} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}.',
                param=here,
            )
        assert isinstance(call, dict) and isinstance(function, dict)  # the check above held
        if call.get("type", "function") != "function":
            raise InvalidRequestError(f"{here}.type must be 'function'.", param=f"{here}.type")
        if call_id in calls:
            raise InvalidRequestError(f"{here}.id {call_id!r} is used twice.", param=f"{here}.id")
        calls[call_id] = False
        arguments = render_arguments(function.get("arguments", "{}"), f"{here}.function.arguments")
        arguments = {neutralize(str(key), tokens): neutralize_all(v, tokens) for key, v in arguments.items()}
        out.append({"id": call_id, "type": "function",
                    "function": {"name": neutralize(name, tokens), "arguments": arguments}})  # fmt: skip
    return out


def _answered(call_id, where: str, calls: dict[str, bool]) -> str:
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequestError(f"{where} must name the call this result answers.", param=where)
    if call_id not in calls:
        raise InvalidRequestError(
            f"{where} {call_id!r} matches no tool call of an earlier assistant message.", param=where
        )
    if calls[call_id]:
        raise InvalidRequestError(f"{where} {call_id!r} was already answered.", param=where)
    calls[call_id] = True
    return call_id


def neutralize_all(value, tokens: Iterable[str]):
    """Every string in a JSON value (keys too) neutralised (tool schemas, call arguments)."""
    tokens = sorted({t for t in tokens if len(t) > 1}, key=len, reverse=True)
    if isinstance(value, str):
        return neutralize(value, tokens)
    if isinstance(value, list):
        return [neutralize_all(v, tokens) for v in value]
    if isinstance(value, dict):
        return {neutralize(str(k), tokens): neutralize_all(v, tokens) for k, v in value.items()}
    return value


def _parts(content, where: str) -> list[tuple[str, object]]:
    """Content as ("text", str) / ("image", source) pairs."""
    if content is None:
        return []
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"{where}.content must be a string or a list of parts.", param=f"{where}.content"
        )
    out: list[tuple[str, object]] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        if isinstance(part, str):
            out.append(("text", part))
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(("text", part["text"]))
        elif kind == "image_url":
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            if not isinstance(url, str) or not url:
                raise InvalidRequestError(
                    f"{here}.image_url.url must be a string.", param=f"{here}.image_url"
                )
            out.append(("image", url))
        elif kind == "file":  # OpenAI's file part: a PDF (or an image) as a data URL
            value = part.get("file")
            data = value.get("file_data") if isinstance(value, dict) else None
            if not isinstance(data, str) or not data.startswith("data:"):
                raise InvalidRequestError(
                    f"{here}.file.file_data must be a data URL (data:application/pdf;base64,...); "
                    "file_id is not supported.", param=f"{here}.file",
                )  # fmt: skip
            out.append(("image", data))
        elif kind == "image":
            source = next((part[k] for k in ("image", "url", "path") if part.get(k) is not None), None)
            if source is None:
                raise InvalidRequestError(f"{here} has type image but no image.", param=here)
            out.append(("image", source))
        else:
            raise InvalidRequestError(
                f"{here} has unsupported type {kind!r}: use text, image_url, file or image.",
                param=f"{here}.type",
            )
    return out


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{where} is not valid Unicode text.", param=where) from None


def neutralize(text: str, control_tokens: Sequence[str]) -> str:
    """Break control-token strings with a zero-width space so they tokenize as plain text."""
    for token in control_tokens:
        if token in text:
            text = text.replace(token, token[0] + ZERO_WIDTH_SPACE + token[1:])
    return text


def ask_messages(image, question: str) -> list[dict]:
    """One user turn: an image (or a list of them, or None), then the question."""
    images = [] if image is None else list(image) if isinstance(image, (list, tuple)) else [image]
    content = [{"type": "image", "image": item} for item in images]
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]
