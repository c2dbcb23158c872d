"""The model client: Groq when a key is set, else the offline demo model."""

from django.conf import settings

from .types import ChatModel, Finish, LLMError, StreamItem, TextDelta, ToolCall, Usage

__all__ = ["ChatModel", "Finish", "LLMError", "StreamItem", "TextDelta", "ToolCall", "Usage", "chat_model_get"]


def chat_model_get() -> ChatModel:
    """Return the configured chat model."""
    if settings.GROQ_API_KEY:
        from .groq_client import GroqChatModel

        return GroqChatModel(
            api_key=settings.GROQ_API_KEY,
            base_url=settings.GROQ_BASE_URL,
            model=settings.GROQ_MODEL,
            max_retries=settings.GROQ_MAX_RETRIES,
            timeout=settings.GROQ_TIMEOUT_SECONDS,
            connect_timeout=settings.GROQ_CONNECT_TIMEOUT_SECONDS,
            max_connections=settings.GROQ_MAX_CONNECTIONS,
            first_token_timeout=settings.GROQ_FIRST_TOKEN_TIMEOUT_SECONDS,
            token_timeout=settings.GROQ_TOKEN_TIMEOUT_SECONDS,
            fast_model=settings.GROQ_FAST_MODEL,
        )
    from .offline import OfflineChatModel

    return OfflineChatModel()
