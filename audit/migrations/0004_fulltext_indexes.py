"""Full-text search indexes on PostgreSQL (message text, summaries); nothing on other databases.

The index expressions are the same SearchVector(..., config="english") the
admin search and the session-search tool filter on, so PostgreSQL can use them.
"""

from django.db import migrations


def _indexes(apps):
    from django.contrib.postgres.indexes import GinIndex
    from django.contrib.postgres.search import SearchVector

    return [
        (apps.get_model("audit", "Event"), GinIndex(SearchVector("content", config="english"), name="event_content_fts")),
        (
            apps.get_model("audit", "Summary"),
            GinIndex(SearchVector("title", "text", config="english"), name="summary_text_fts"),
        ),
    ]


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for model, index in _indexes(apps):
            schema_editor.add_index(model, index)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for model, index in _indexes(apps):
            schema_editor.remove_index(model, index)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_context_summary")]

    operations = [migrations.RunPython(create, drop)]
