"""Chat messages → what the chat template and the vision processor take, with every refusal naming
the request part (``messages[2].content[0].image_url``) as OpenAI's errors do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autoglm_runtime.errors import OpenAIError
from autoglm_runtime.schemas import ChatMessage


class ContentError(OpenAIError):
    """A message part the server refuses (400), with the request part it names."""

    def __init__(self, message: str, param: str, code: str = "invalid_content") -> None:
        super().__init__(message, param=param, code=code)


@dataclass(frozen=True)
class ImageRef:
    url: str
    param: str  # e.g. messages[2].content[0].image_url


def split_messages(
    messages: Sequence[ChatMessage], *, vision: bool, model_name: str
) -> tuple[list[dict[str, Any]], list[ImageRef]]:
    """Template messages and the images in order. A text-only model gets string contents (its
    template may not take lists); a vision model gets lists of ``text``/``image`` parts."""
    out: list[dict[str, Any]] = []
    images: list[ImageRef] = []
    for i, message in enumerate(messages):
        content = message.content
        if content is None or isinstance(content, str):
            out.append({"role": message.role, "content": content or ""})
            continue
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type")
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ContentError("a text part needs a string `text`", where)
                parts.append({"type": "text", "text": text})
            elif kind == "image_url":
                if not vision:
                    raise ContentError(
                        f"model {model_name!r} has no vision input; send text only",
                        where,
                        "vision_not_supported",
                    )
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                if not isinstance(url, str) or not url:
                    raise ContentError("an image_url part needs `image_url.url`", f"{where}.image_url")
                images.append(ImageRef(url, f"{where}.image_url"))
                parts.append({"type": "image"})
            else:
                raise ContentError(
                    f"unsupported content part type {kind!r}: this server accepts text and image_url",
                    where,
                    "unsupported_content",
                )
        if vision:
            out.append({"role": message.role, "content": parts})
        else:
            out.append({"role": message.role, "content": "".join(p["text"] for p in parts)})
    return out, images
