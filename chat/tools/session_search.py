"""The session-search tool: the caller's own earlier sessions, never anyone else's."""

from audit.selectors import sessions_search as sessions_search_select

from .registry import ToolContext, tool


@tool(database=True)
def sessions_search(query: str, context: ToolContext, limit: int = 5) -> list[dict]:
    """Search the user's own earlier chat sessions (their summaries and messages) for words or a phrase.

    Args:
        query: The words to look for, for example "Lisbon hotel".
        limit: How many sessions to return, newest first (1 to 10).
    """
    if not query.strip():
        raise ValueError("the query is empty")
    return sessions_search_select(
        user_id=context.user_id,
        anon_key=context.anon_key,
        query=query,
        exclude_session_id=context.session_id,
        limit=min(max(limit, 1), 10),
    )
