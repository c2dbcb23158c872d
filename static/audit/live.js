// The admin's live view of an active session: the replies as they stream,
// relayed through the channel layer by /ws/admin/sessions/<id>/watch/.
(function () {
  "use strict";
  const panel = document.getElementById("live-view");
  if (!panel) return;
  const state = panel.querySelector(".live-state");
  const log = panel.querySelector(".live-log");
  const url = (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host +
    "/ws/admin/sessions/" + panel.dataset.sessionId + "/watch/";
  let reply = null;
  let delay = 500;

  function line(kind, text) {
    const el = document.createElement("div");
    el.className = "live-" + kind;
    el.textContent = text;
    log.appendChild(el);
    return el;
  }

  function handle(frame) {
    switch (frame.type) {
      case "user_message":
        reply = null;
        line("user", "User: " + frame.content);
        break;
      case "token":
        if (!reply) reply = line("assistant", "Assistant: ");
        reply.textContent += frame.content;
        break;
      case "tool_call":
        reply = null;
        line("tool", "→ " + frame.name + " " + JSON.stringify(frame.arguments));
        break;
      case "tool_result":
        line(frame.ok ? "tool" : "error", "← " + frame.name + " " + JSON.stringify(frame.result));
        break;
      case "error":
        line("error", frame.code + ": " + frame.message);
        break;
      case "done":
        reply = null;
        line("meta", (frame.stopped ? "(stopped) " : "") + "turn over in " + frame.duration_ms + " ms");
        break;
    }
  }

  function connect() {
    const socket = new WebSocket(url);
    socket.onopen = function () {
      delay = 500;
      state.textContent = "watching: new replies appear here as they stream";
    };
    socket.onmessage = function (event) {
      handle(JSON.parse(event.data));
    };
    socket.onclose = function (event) {
      if (event.code === 4403) {
        state.textContent = "only staff may watch";
        return;
      }
      state.textContent = "reconnecting…";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 8000);
    };
  }

  connect();
})();
