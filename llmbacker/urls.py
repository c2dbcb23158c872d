"""URL routes: the admin, the chat page, the API, the health check."""

from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "LLM-Backer audit trail"
admin.site.site_title = "LLM-Backer admin"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("chat.urls")),
]
