"""The chat page."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from .llm import chat_model_get


@require_GET
@ensure_csrf_cookie
def chat_page(request: HttpRequest) -> HttpResponse:
    """Render the chat page, making sure the visitor has a Django session (their sessions belong to it).

    The CSRF cookie is set too: the page sends it back to rename and delete sessions.
    """
    if not request.user.is_authenticated:
        # Writing to the session makes the middleware save it and set the cookie.
        request.session.setdefault("chat_visitor", True)
    model = chat_model_get()
    return render(
        request,
        "chat/index.html",
        {
            "llm_mode": model.mode,
            "model_name": model.model,
            "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        },
    )
