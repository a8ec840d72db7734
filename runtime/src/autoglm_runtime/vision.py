"""Images in chat requests: safe decoding of ``data:`` URLs, and images → model inputs.

Decoding refuses, each with a 4xx that names the request part: remote ``http(s)`` URLs unless their
host is on ``--image-url-hosts`` (then: public addresses only, the checked address is the one
connected to, same-host redirects only, a size cap and a timeout), other schemes (``file://`` is
never read), non-base64 data, types other than PNG, JPEG and
WebP (SVG, audio …), bytes that are not an image, images whose header declares more than
``max_decoded_pixels`` (decompression bombs are refused before any pixel is decoded), and truncated
or corrupt files. Preprocessing uses the model's own image processor (its PIL backend: no
torchvision) with ``max_image_pixels`` as its ``max_pixels``, and tells how many tokens each image
becomes, so the placeholder token in the chat template can be expanded and counted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm_runtime.errors import OpenAIError
from autoglm_runtime.serving_settings import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)

ALLOWED_MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}


class ImageInputError(OpenAIError):
    """A request image the server refuses: ``status`` 400 (or 413), ``param`` the request part."""

    def __init__(self, message: str, param: str, status: int = 400, code: str = "invalid_image") -> None:
        super().__init__(message, status=status, param=param, code=code)


@dataclass(frozen=True)
class MultiModalInputs:
    """What the model needs besides token ids for one request's images."""

    pixel_values: Any  # torch.Tensor [patches, features]
    image_grid_thw: Any  # torch.LongTensor [images, 3]
    tokens_per_image: tuple[int, ...]
    # One content digest per image (of its decoded pixels): what the prefix cache keys an image's
    # KV on. Empty when built elsewhere; the engine then hashes pixel_values instead.
    digests: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class RemoteImages:
    """Which remote image URLs may be fetched, and how (``--image-url-hosts`` and friends)."""

    hosts: tuple[str, ...] = ()  # exact host names, or "*.example.com"
    timeout_s: float = 10.0
    max_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_redirects: int = 3

    @classmethod
    def from_settings(cls, settings: Any) -> RemoteImages:
        hosts = tuple(h.strip().lower() for h in settings.image_url_hosts.split(",") if h.strip())
        return cls(hosts, settings.image_url_timeout_seconds, settings.image_url_max_bytes)

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.hosts)


def public_address(ip: str) -> bool:
    """Only globally routable unicast addresses: never loopback, link-local (cloud metadata),
    private, carrier-grade NAT, multicast or reserved ranges."""
    import ipaddress

    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _resolve(host: str, port: int) -> list[str]:
    import socket

    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def fetch_image_url(url: str, param: str, remote: RemoteImages) -> bytes:
    """The bytes at an allowed ``http(s)`` URL. The host must be on the allow-list and resolve only
    to public addresses; the connection goes to the address that was checked (no second DNS answer
    can point it elsewhere), redirects are followed only to the same host, and the download stops at
    ``max_bytes`` and ``timeout_s``."""
    from urllib.parse import urljoin, urlsplit

    import httpx

    for _ in range(remote.max_redirects + 1):
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise ImageInputError("unsupported image URL; use http(s)://host/path or a data: URL", param)
        if not remote.allows(host):
            raise ImageInputError(
                f"image host {host!r} is not allowed (allowed: {', '.join(remote.hosts)})",
                param,
                code="host_not_allowed",
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = _resolve(host, port)
        except OSError:
            raise ImageInputError(f"image host {host!r} does not resolve", param) from None
        if not addresses or not all(public_address(a) for a in addresses):
            raise ImageInputError(
                f"image host {host!r} resolves to a non-public address; refused",
                param,
                code="host_not_allowed",
            )
        ip = addresses[0]
        target = f"{parts.scheme}://{'[' + ip + ']' if ':' in ip else ip}:{port}{parts.path or '/'}"
        if parts.query:
            target += "?" + parts.query
        try:
            with (
                httpx.Client(timeout=remote.timeout_s, follow_redirects=False, trust_env=False) as client,
                client.stream(
                    "GET",
                    target,
                    headers={"Host": parts.netloc.rsplit("@", 1)[-1]},
                    extensions={"sni_hostname": host},
                ) as response,
            ):
                if response.is_redirect:
                    location = urljoin(url, response.headers.get("location", ""))
                    if (urlsplit(location).hostname or "").lower() != host:
                        raise ImageInputError("the image URL redirects to another host; refused", param)
                    url = location
                    continue
                if response.status_code != 200:
                    raise ImageInputError(f"fetching the image answered HTTP {response.status_code}", param)
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > remote.max_bytes:
                        raise ImageInputError(
                            f"the image at the URL is larger than {remote.max_bytes} bytes",
                            param,
                            413,
                            "image_too_large",
                        )
                return bytes(data)
        except httpx.TimeoutException:
            raise ImageInputError(
                f"fetching the image took longer than {remote.timeout_s:g} s", param
            ) from None
        except httpx.HTTPError as exc:
            raise ImageInputError(f"fetching the image failed: {type(exc).__name__}", param) from None
    raise ImageInputError(f"the image URL redirects more than {remote.max_redirects} times", param)


def decode_image_url(
    url: str, param: str, max_decoded_pixels: int, remote: RemoteImages | None = None
) -> Any:
    """A ``data:image/...;base64,...`` URL (or, when allowed, an ``http(s)`` URL) → an RGB PIL
    image, or :class:`ImageInputError`."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        if remote is None or not remote.hosts:
            raise ImageInputError(
                "remote image URLs are not fetched by this server; send the image inline as a "
                "data:image/png;base64,... URL",
                param,
                code="remote_images_disabled",
            )
        return decode_image_bytes(fetch_image_url(url, param, remote), param, max_decoded_pixels)
    if scheme != "data":
        raise ImageInputError(
            f"unsupported image URL scheme {scheme + ':' if scheme else '(none)'}; send a data:image/png;base64,... URL",
            param,
        )
    header, sep, payload = url[5:].partition(",")
    media_type, *options = header.split(";")
    media_type = media_type.strip().lower()
    if not sep or "base64" not in [o.strip().lower() for o in options]:
        raise ImageInputError("the image data URL must be base64-encoded (data:image/png;base64,...)", param)
    if media_type not in ALLOWED_MIME:
        raise ImageInputError(
            f"unsupported image type {media_type or '(none)'}: send PNG, JPEG or WebP",
            param,
            code="unsupported_image",
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("invalid base64 in the image data URL", param) from None
    if not raw:
        raise ImageInputError("the image data URL is empty", param)
    return decode_image_bytes(raw, param, max_decoded_pixels)


def decode_image_bytes(raw: bytes, param: str, max_decoded_pixels: int) -> Any:
    """Image file bytes → an RGB PIL image; refuses non-images, other formats, bombs, truncation."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(
            f"the image declares more pixels than this server decodes (at most {max_decoded_pixels})",
            param,
            code="image_too_large",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageInputError("the data is not a PNG, JPEG or WebP image", param) from None
    if image.format not in set(ALLOWED_MIME.values()):
        raise ImageInputError(
            f"unsupported image format {image.format}: send PNG, JPEG or WebP",
            param,
            code="unsupported_image",
        )
    width, height = image.size
    if width * height > max_decoded_pixels:
        raise ImageInputError(
            f"the image is {width}x{height} = {width * height} pixels; this server decodes at most "
            f"{max_decoded_pixels}",
            param,
            code="image_too_large",
        )
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageInputError(f"truncated or corrupt image: {exc}", param) from None


class VisionProcessor:
    """The model's image processor (PIL backend) and how many tokens an image becomes."""

    def __init__(
        self,
        image_processor: Any,
        image_token_id: int,
        max_image_pixels: int | None = None,
        dtype: Any = None,
    ) -> None:
        self.image_processor = image_processor
        # Pixel values wait with their request until it finishes (a failed batch re-prefills them):
        # held in the vision tower's dtype, a 1080x2400 screenshot is 32 MB in bf16 (63 MB in fp32).
        self.dtype = dtype
        self.image_token_id = int(image_token_id)
        self.merge_size = int(getattr(image_processor, "merge_size", 2) or 2)
        size = dict(getattr(image_processor, "size", None) or {})
        self.min_pixels = int(size.get("shortest_edge") or getattr(image_processor, "min_pixels", 0) or 0)
        model_max = int(size.get("longest_edge") or getattr(image_processor, "max_pixels", 0) or 0)
        self.max_pixels = int(max_image_pixels or model_max) or None

    def prepare(self, images: list[Any], params: list[str]) -> MultiModalInputs:
        """Resize and normalize ``images`` (PIL) as the model was trained; ``params`` name them in errors."""
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if self.max_pixels:
            kwargs["size"] = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        grids = []
        pixels = []
        digests = []
        for image, param in zip(images, params, strict=True):
            digest = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=16)
            digest.update(image.tobytes())
            digests.append(digest.digest())
            try:
                out = self.image_processor(images=[image], **kwargs)
            except ValueError as exc:  # e.g. an aspect ratio the resize rule refuses (> 200:1)
                raise ImageInputError(f"the image cannot be processed: {exc}", param) from None
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
        import torch

        grid = torch.cat(grids, dim=0)
        counts = tuple(int(g.prod()) // (self.merge_size**2) for g in grid)
        values = torch.cat(pixels, dim=0)
        values = values.to(self.dtype) if self.dtype is not None else values
        return MultiModalInputs(values, grid, counts, tuple(digests))

    def expand(self, ids: list[int], inputs: MultiModalInputs) -> list[int]:
        """Repeat the i-th image placeholder token once per token of the i-th image."""
        out: list[int] = []
        counts = iter(inputs.tokens_per_image)
        seen = 0
        for token in ids:
            if token == self.image_token_id:
                seen += 1
                out.extend([token] * next(counts, 1))
            else:
                out.append(token)
        if seen != len(inputs.tokens_per_image):
            raise ValueError(
                f"the chat template placed {seen} image placeholders for {len(inputs.tokens_per_image)} images"
            )
        return out


def load_image_processor(source: str, **kwargs: Any) -> Any:
    """The model's image processor, its PIL backend when torchvision is not importable.

    transformers 5.x names the torchvision-backed class in ``preprocessor_config.json`` (e.g.
    ``Glm4vImageProcessor``); beside the CPU torch build torchvision does not import, and the
    processor class would also build a video processor we do not serve. The PIL twin
    (``Glm4vImageProcessorPil``) computes the same pixels.
    """
    import transformers
    from transformers import AutoImageProcessor

    name = None
    local = Path(source) / "preprocessor_config.json"
    if local.is_file():
        name = json.loads(local.read_text()).get("image_processor_type")
    else:
        config, _ = transformers.ImageProcessingMixin.get_image_processor_dict(source, **kwargs)
        name = config.get("image_processor_type")
    try:
        import torchvision  # noqa: F401

        have_torchvision = True
    except Exception:  # noqa: BLE001 - an import that fails beside the CPU torch build raises RuntimeError
        have_torchvision = False
    pil = getattr(transformers, f"{name.removesuffix('Fast')}Pil", None) if name else None
    if pil is not None and not have_torchvision:
        return pil.from_pretrained(source, **kwargs)
    return AutoImageProcessor.from_pretrained(source, **kwargs)
