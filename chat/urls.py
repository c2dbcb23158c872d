from django.urls import path

from . import api, health, views

urlpatterns = [
    path("", views.chat_page, name="chat-page"),
    path("api/sessions/", api.sessions_list, name="api-sessions"),
    path("api/sessions/<uuid:session_id>/", api.session_detail, name="api-session-detail"),
    path("healthz", health.healthz, name="healthz"),
]
