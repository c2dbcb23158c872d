"""URL routes: the admin, the chat page, the API, the health check, the metrics."""

from django.contrib import admin
from django.urls import include, path

from audit.metrics import metrics_view

admin.site.site_header = "LLM-Backer audit trail"
admin.site.site_title = "LLM-Backer admin"
# Two apps need no side menu on every page; the session list needs the width (its filters take the right).
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("", include("chat.urls")),
]
