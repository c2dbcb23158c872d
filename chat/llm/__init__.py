"""The chat model, chosen by settings: Groq, an OpenAI-compatible server, or the offline demo model.

Each provider is one module here; they share the stream's chunk reader
(`chunks.py`) and yield the plain values of `types.py`. With
LLM_FALLBACK_PROVIDER set, a spare model answers when the main one is
rate limited or down (`fallback.py`).
"""

from django.conf import settings

from .types import ChatModel, Fallback, Finish, JsonAnswer, LLMError, StreamItem, TextDelta, ToolCall, Usage

__all__ = [
    "ChatModel",
    "Fallback",
    "Finish",
    "JsonAnswer",
    "LLMError",
    "StreamItem",
    "TextDelta",
    "ToolCall",
    "Usage",
    "chat_model_get",
    "provider_build",
]


def _connection_options() -> dict:
    """The timeouts, retries and pool size, which apply to every remote provider (named GROQ_* for history)."""
    return {
        "max_retries": settings.GROQ_MAX_RETRIES,
        "timeout": settings.GROQ_TIMEOUT_SECONDS,
        "connect_timeout": settings.GROQ_CONNECT_TIMEOUT_SECONDS,
        "max_connections": settings.GROQ_MAX_CONNECTIONS,
        "first_token_timeout": settings.GROQ_FIRST_TOKEN_TIMEOUT_SECONDS,
        "token_timeout": settings.GROQ_TOKEN_TIMEOUT_SECONDS,
    }


def provider_build(provider: str, model: str = "") -> ChatModel:
    """Return the provider's chat model ("groq", "openai" or "offline"); `model` overrides its main model."""
    if provider == "groq":
        from .groq_client import GroqChatModel

        return GroqChatModel(
            api_key=settings.GROQ_API_KEY,
            base_url=settings.GROQ_BASE_URL,
            model=model or settings.GROQ_MODEL,
            fast_model=model or settings.GROQ_FAST_MODEL,
            **_connection_options(),
        )
    if provider == "openai":
        from .openai_compatible import OpenAICompatibleChatModel

        return OpenAICompatibleChatModel(
            api_key=settings.OPENAI_API_KEY,
            base_url=settings.OPENAI_BASE_URL,
            model=model or settings.OPENAI_MODEL,
            fast_model=model or settings.OPENAI_FAST_MODEL,
            **_connection_options(),
        )
    from .offline import OfflineChatModel

    return OfflineChatModel()


def chat_model_get() -> ChatModel:
    """Return the configured chat model (with its spare, when one is set)."""
    provider = settings.LLM_PROVIDER or ("groq" if settings.GROQ_API_KEY else "offline")
    main = provider_build(provider)
    if not settings.LLM_FALLBACK_PROVIDER:
        return main
    from .fallback import FallbackChatModel

    return FallbackChatModel(main, provider_build(settings.LLM_FALLBACK_PROVIDER, settings.LLM_FALLBACK_MODEL))
