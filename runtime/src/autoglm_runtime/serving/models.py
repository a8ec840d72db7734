"""``/v1/models``, and which model names a request may ask for."""

from __future__ import annotations

from autoglm_runtime.errors import OpenAIError
from autoglm_runtime.loader import served_name
from autoglm_runtime.schemas import ModelCard, ModelList, now
from autoglm_runtime.settings import RuntimeSettings


class ModelServing:
    """The one model this server serves, under its served name (and the name it was loaded by)."""

    def __init__(self, name: str, aliases: tuple[str, ...] = (), created: int | None = None) -> None:
        self.name = name
        self.accepted = {name, *aliases}
        self.created = now() if created is None else created

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> ModelServing:
        return cls(served_name(settings), (settings.model,))

    def list(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.name, created=self.created)])

    def check(self, name: str) -> None:
        """Refuse (404) a request for another model."""
        if name not in self.accepted:
            raise OpenAIError(
                f"model {name!r} does not exist; this server serves {self.name!r}",
                status=404,
                param="model",
                code="model_not_found",
            )
