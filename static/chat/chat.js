/* LLM-Backer chat page: one WebSocket per chat session, streamed replies, tool cards,
 * Markdown replies, a sidebar of the visitor's sessions.
 *
 * Model output reaches the DOM only as Text nodes / textContent, or as Markdown rendered by
 * marked and then sanitised by DOMPurify (raw HTML in the Markdown is shown as text).
 */
"use strict";

(function () {
  const SESSION_STORAGE_KEY = "llmbacker.session_id";
  const PING_INTERVAL_MS = 25000;
  const BACKOFF_START_MS = 500;
  const BACKOFF_MAX_MS = 8000;
  const CLOSE_UNAUTHORIZED = 4401;
  const CLOSE_FORBIDDEN = 4403;
  // Errors the server sends *instead of* starting a turn: no `done` follows them.
  const NO_TURN_ERRORS = new Set([
    "busy",
    "invalid_message",
    "invalid_json",
    "message_too_large",
    "rate_limited",
    "token_budget_exceeded",
  ]);
  // The running reply cannot be followed (its server went away): no `done` will come for it.
  const REPLY_UNAVAILABLE = "reply_unavailable";
  // Any other error during a turn is normally followed by `done`; if none comes within this
  // time the turn never started (e.g. the server could not claim it), so unlock the UI anyway.
  const ERROR_DONE_GRACE_MS = 5000;
  const STICK_THRESHOLD_PX = 80;
  const INPUT_MAX_HEIGHT_PX = 200;
  const TOOL_RESULT_OPEN_MAX_CHARS = 400; // longer results start collapsed
  const COPIED_FEEDBACK_MS = 1500;
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  const app = document.getElementById("app");
  if (!app) return;

  const els = {
    status: document.getElementById("status"),
    sessionId: document.getElementById("session-id"),
    modelName: document.getElementById("model-name"),
    messages: document.getElementById("messages"),
    pending: document.getElementById("pending"),
    composer: document.getElementById("composer"),
    input: document.getElementById("input"),
    send: document.getElementById("send"),
    stop: document.getElementById("stop"),
    newSession: document.getElementById("new-session"),
    charCount: document.getElementById("char-count"),
    hint: document.getElementById("composer-hint"),
    jumpLatest: document.getElementById("jump-latest"),
    sidebar: document.getElementById("sidebar"),
    sidebarToggle: document.getElementById("sidebar-toggle"),
    sidebarBackdrop: document.getElementById("sidebar-backdrop"),
    sessionList: document.getElementById("session-list"),
    sessionListState: document.getElementById("session-list-state"),
  };

  const state = {
    maxChars: parseInt(app.dataset.maxChars, 10) || 16000,
    sessionId: null,
    socket: null,
    ready: false, // true once the server's `session` frame arrived on the current socket
    reconnecting: false,
    disconnected: false, // closed for good (login needed, someone else's session)
    backoffMs: BACKOFF_START_MS,
    reconnectTimer: null,
    pingTimer: null,
    stickToBottom: true,
    lastScrollY: 0,
    touchY: null,
    refocusInput: false,
    historyToken: null, // set per `session` frame; a later send/switch voids a pending rich history
    sessionsSeq: 0, // newest /api/sessions/ request; older answers are dropped
    sessions: [],
    // The last frame_seq seen on this session: a reconnect asks for the frames after it.
    frameSeq: 0,
    lastUserMsg: null, // the last user message of the rendered history (see onUserMessage)
    notice: null, // an error box shown below the history of the session opened (until a message is sent)
    focusedOnce: false, // the input takes the focus when the first session frame arrives
    editing: null, // the element of the last user message while the reader edits it
    pending: null, // the turn this page asked for, until its first frame shows the server took it
    historyFresh: false, // the history was drawn with a turn running: its replay starts from it
    historyPlain: false, // the history was drawn plainly with a turn running: drawn richly after its `done`
  };

  let turn = turnNew();

  /* ---------- Markdown ---------- */

  const markdown = markdownSetup();

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function markdownSetup() {
    const marked = window.marked;
    const purify = window.DOMPurify;
    if (!marked || typeof marked.Marked !== "function" || !purify || typeof purify.sanitize !== "function") {
      console.warn("marked/DOMPurify missing: replies are shown as plain text");
      return null;
    }
    const parser = new marked.Marked({ gfm: true, breaks: true });
    parser.use({
      renderer: {
        // Raw HTML written by the model is shown as text, never as markup.
        html(token) {
          return escapeHtml(token.text);
        },
        // No remote images (they would load third-party URLs, a classic exfiltration channel): a link instead.
        image(token) {
          const label = escapeHtml(token.text || token.href || "image");
          if (!token.href) return label;
          return `<a href="${escapeHtml(token.href)}">${label}</a>`;
        },
      },
    });
    purify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    const config = {
      USE_PROFILES: { html: true },
      FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "img", "video", "audio", "source", "picture", "iframe", "object", "embed"],
      FORBID_ATTR: ["style", "class", "id"],
      RETURN_DOM_FRAGMENT: true,
    };
    return {
      render(text) {
        return purify.sanitize(parser.parse(text, { async: false }), config);
      },
    };
  }

  /* Put `text` into `textEl`, as sanitised Markdown when the libraries are there. */
  function markdownInto(textEl, text) {
    if (!markdown || !text) {
      textEl.textContent = text || "";
      return;
    }
    let fragment;
    try {
      fragment = markdown.render(text);
    } catch (err) {
      console.error("Markdown rendering failed", err);
      textEl.textContent = text;
      return;
    }
    // Drop whitespace-only text nodes between blocks (they would show as stray newlines).
    for (const node of Array.from(fragment.childNodes)) {
      if (node.nodeType === Node.TEXT_NODE && !node.data.trim()) node.remove();
    }
    for (const pre of fragment.querySelectorAll("pre")) {
      const box = elementWith("div", "code-block");
      pre.replaceWith(box);
      box.appendChild(pre);
      const button = copyButton("copy-code", "Copy", "Copy code", () => pre.textContent);
      box.appendChild(button);
    }
    for (const table of fragment.querySelectorAll("table")) {
      const box = elementWith("div", "table-wrap");
      table.replaceWith(box);
      box.appendChild(table);
    }
    textEl.replaceChildren(fragment);
  }

  /* ---------- clipboard ---------- */

  async function clipboardWrite(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (_) {
        /* fall through to the old way */
      }
    }
    // Plain http on a LAN has no Clipboard API: copy through a hidden textarea.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (_) {
      ok = false;
    }
    area.remove();
    return ok;
  }

  function copyButton(className, label, ariaLabel, getText) {
    const button = elementWith("button", `btn-copy ${className}`, label);
    button.type = "button";
    button.setAttribute("aria-label", ariaLabel);
    button.title = ariaLabel;
    button.addEventListener("click", async () => {
      const ok = await clipboardWrite(getText());
      button.textContent = ok ? "Copied" : "Copy failed";
      button.classList.toggle("copied", ok);
      clearTimeout(button._resetTimer);
      button._resetTimer = setTimeout(() => {
        button.textContent = label;
        button.classList.remove("copied");
      }, COPIED_FEEDBACK_MS);
    });
    return button;
  }

  /* ---------- session ids ---------- */

  function uuid4() {
    if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
    // crypto.randomUUID only exists in secure contexts (https, localhost); plain http on a LAN lacks it.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function storageGet(key) {
    try {
      return window.localStorage.getItem(key);
    } catch (_) {
      return null; // storage disabled (privacy mode): the session just won't survive a reload
    }
  }

  function storageRemove(key) {
    try {
      window.localStorage.removeItem(key);
    } catch (_) {
      /* see storageGet */
    }
  }

  function storageSet(key, value) {
    try {
      window.localStorage.setItem(key, value);
    } catch (_) {
      /* see storageGet */
    }
  }

  function sessionIdFromUrl() {
    const fromUrl = new URLSearchParams(window.location.search).get("session");
    return fromUrl && UUID_RE.test(fromUrl) ? fromUrl.toLowerCase() : null;
  }

  function sessionIdInitial() {
    const fromUrl = sessionIdFromUrl();
    if (fromUrl) return fromUrl;
    const stored = storageGet(SESSION_STORAGE_KEY);
    if (stored && UUID_RE.test(stored)) return stored.toLowerCase();
    return uuid4();
  }

  /* `urlMode`: "keep" updates ?session= only when the URL already has one; "push" always sets it
   * (a new history entry); "none" leaves the URL alone (back/forward already changed it). */
  function sessionSet(id, urlMode) {
    state.sessionId = id;
    storageSet(SESSION_STORAGE_KEY, id);
    els.sessionId.textContent = id;
    sessionListMarkCurrent();
    const url = new URL(window.location.href);
    if (urlMode === "none" || url.searchParams.get("session") === id) return;
    if (urlMode === "push") {
      url.searchParams.set("session", id);
      window.history.pushState({ session: id }, "", url.toString());
    } else if (url.searchParams.has("session")) {
      // Keep an explicit ?session= link pointing at the session shown, so a reload stays here.
      url.searchParams.set("session", id);
      window.history.replaceState({ session: id }, "", url.toString());
    } else {
      // No ?session=: remember the session in this history entry, for back/forward.
      window.history.replaceState({ session: id }, "", url.toString());
    }
  }

  /* ---------- connection ---------- */

  /* A reply this page was showing when its socket dropped is picked up where it stopped (?after=). */
  function socketUrl(sessionId) {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const after = turn.running && state.frameSeq > 0 ? `?after=${state.frameSeq}` : "";
    return `${scheme}//${window.location.host}/ws/session/${sessionId}/${after}`;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.ready = false;
    state.disconnected = false;
    statusSet(state.reconnecting ? "reconnecting" : "connecting");
    controlsUpdate();
    let socket;
    try {
      socket = new WebSocket(socketUrl(state.sessionId));
    } catch (err) {
      console.error("could not open the WebSocket", err);
      reconnectSchedule();
      return;
    }
    state.socket = socket;
    // Handlers ignore events from a socket that is no longer the current one (after "New session").
    socket.addEventListener("open", () => {
      if (socket === state.socket) pingStart();
    });
    socket.addEventListener("message", (event) => {
      if (socket === state.socket) frameReceive(event.data);
    });
    socket.addEventListener("close", (event) => {
      if (socket === state.socket) socketClosed(event);
    });
  }

  /* A reply streaming when the socket drops goes on at the server: it stays open here, to be resumed. */
  function socketClosed(event) {
    state.socket = null;
    state.ready = false;
    pingStop();
    if (event.code === CLOSE_UNAUTHORIZED) {
      turnInterrupt();
      state.disconnected = true;
      statusSet("disconnected");
      noticeLoginRequired();
    } else if (event.code === CLOSE_FORBIDDEN) {
      turnInterrupt();
      state.disconnected = true;
      statusSet("disconnected");
      forbiddenFallback();
    } else {
      state.reconnecting = true;
      statusSet("reconnecting");
      reconnectSchedule();
    }
    controlsUpdate();
  }

  function reconnectSchedule() {
    const delay = state.backoffMs;
    state.backoffMs = Math.min(delay * 2, BACKOFF_MAX_MS);
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function socketDrop() {
    const old = state.socket;
    state.socket = null; // detach first so its close event does not trigger a reconnect
    state.ready = false;
    pingStop();
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (old) old.close(1000, "new session");
  }

  function pingStart() {
    pingStop();
    state.pingTimer = setInterval(() => frameSend({ type: "ping" }), PING_INTERVAL_MS);
  }

  function pingStop() {
    clearInterval(state.pingTimer);
    state.pingTimer = null;
  }

  function frameSend(frame) {
    const socket = state.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    try {
      socket.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      console.error("could not send a frame", err);
      return false;
    }
  }

  function statusSet(word) {
    els.status.textContent = word;
    els.status.dataset.state = word;
  }

  /* ---------- server frames ---------- */

  const FRAME_HANDLERS = {
    session: onSession,
    user_message: onUserMessage,
    token: onToken,
    tool_call: onToolCall,
    tool_result: onToolResult,
    done: onDone,
    error: onError,
    feedback_saved: onFeedbackSaved,
    pong: () => {},
  };

  function frameReceive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (_) {
      console.warn("ignoring a frame that is not JSON");
      return;
    }
    if (frame && Number.isInteger(frame.frame_seq)) state.frameSeq = Math.max(state.frameSeq, frame.frame_seq);
    const handler = frame && FRAME_HANDLERS[frame.type];
    if (handler) handler(frame);
    else console.debug("ignoring an unknown frame", frame);
  }

  function onSession(frame) {
    state.ready = true;
    state.reconnecting = false;
    state.backoffMs = BACKOFF_START_MS;
    if (frame.model) {
      app.dataset.model = frame.model;
      if (els.modelName) els.modelName.textContent = frame.model;
    }
    const base = Number.isInteger(frame.frame_seq) ? frame.frame_seq : 0;
    // This page was showing the running reply (it has frames past the reply's start): the frames
    // after them follow, so keep what is drawn. Otherwise draw the history again (replace, not append);
    // a running reply then follows from its start, its user message first.
    const resuming = frame.turn_running === true && turn.running && state.frameSeq > base;
    if (!resuming) {
      state.frameSeq = base;
      state.pending = null;
      historyRender(Array.isArray(frame.history) ? frame.history : []);
      // The history leaves out the running turn and what it replaced: its user_message is drawn as is.
      state.historyFresh = frame.turn_running === true;
      // The plain history has no tool cards or figures: once the running reply is done, redraw it.
      state.historyPlain = frame.turn_running === true && frame.resumed === true;
    }
    statusSet("connected");
    controlsUpdate();
    sessionsRefresh();
    if (state.notice) els.messages.appendChild(state.notice);
    if (!state.focusedOnce) {
      state.focusedOnce = true;
      els.input.focus({ preventScroll: true });
    }
    // A resumed session: redraw it from its recorded events (tool cards, figures), once they arrive.
    const token = {};
    state.historyToken = token;
    if (frame.resumed && !frame.turn_running) historyRichLoad(state.sessionId, token);
  }

  /* A message sent from another tab (or this one before a reload): its reply follows. */
  function onUserMessage(frame) {
    const content = typeof frame.content === "string" ? frame.content : "";
    const fresh = state.historyFresh;
    state.historyFresh = false;
    if (turn.running) {
      if (turn.userMsg && !turn.assistant && turn.userMsg.raw === content) return; // already shown
      turnInterrupt();
    }
    if (state.editing) {
      // The last message is now another one: the edit in progress would replace it. Keep the text.
      state.editing.classList.remove("editing");
      state.editing = null;
    }
    if (!fresh && (frame.resend === "regenerate" || frame.resend === "edit")) {
      // Another tab regenerated the last reply or edited the last message: the earlier turn goes.
      const lastUser = lastUserElement();
      if (lastUser) {
        for (const el of elementsFrom(lastUser, frame.resend === "edit")) el.remove();
        if (frame.resend === "regenerate") {
          state.historyToken = null;
          turnBegin(null);
          turn.userMsg = { el: lastUser, raw: content };
          scrollFollow();
          return;
        }
      }
    }
    // The history drawn a moment ago may already hold it, as its last message.
    const last = state.lastUserMsg;
    const shown = last && last.raw === content && els.messages.lastElementChild === last.el;
    const userMsg = shown ? last : messageAppend("user", content);
    state.historyToken = null; // a rich history arriving now would wipe the reply
    turnBegin(userMsg);
    scrollFollow();
  }

  function onToken(frame) {
    const msg = assistantEnsure();
    if (typeof frame.content === "string" && frame.content) assistantAppendText(msg, frame.content);
  }

  function onToolCall(frame) {
    const msg = assistantEnsure();
    const card = toolCardBuild(frame.call_id, frame.name, frame.arguments);
    assistantTools(msg).appendChild(card);
    turn.toolCards.set(String(frame.call_id), card);
    scrollFollow();
  }

  function onToolResult(frame) {
    let card = turn.toolCards.get(String(frame.call_id));
    if (!card) {
      // A result without its call (should not happen): show it anyway.
      card = toolCardBuild(frame.call_id, frame.name, undefined);
      assistantTools(assistantEnsure()).appendChild(card);
    }
    toolCardFill(card, frame.ok !== false, frame.result, frame.duration_ms);
    scrollFollow();
  }

  function onDone(frame) {
    if (turn === state.pending) state.pending = null;
    const stopFocused = document.activeElement === els.stop;
    let msg = turn.assistant;
    // A turn that ended with no output still gets its (empty) bubble, as the history will show it;
    // except after an error, which already says what happened.
    if (!msg && !turn.hadError) msg = assistantEnsure();
    if (msg) assistantFinish(msg, figuresFrom(frame));
    if (msg) feedbackAttach(msg, frame.turn_id, null);
    for (const el of turn.replaced) el.remove(); // kept in the record, marked superseded
    turn.replaced = [];
    turnEnd();
    // The stop button just hid itself: the reader goes on typing.
    if (stopFocused || document.activeElement === document.body) els.input.focus({ preventScroll: true });
    scrollFollow();
    sessionsRefresh();
    if (state.historyPlain) {
      // Drawn plainly while this reply ran (a reload mid-reply): now every event is recorded.
      state.historyPlain = false;
      const token = {};
      state.historyToken = token;
      historyRichLoad(state.sessionId, token);
    }
  }

  function onError(frame) {
    if (frame.about === "feedback") {
      feedbackFailed(frame); // about a rating, not about the turn that may be running
      return;
    }
    const box = errorBuild(frame.code, frame.message, frame.retry_after);
    const own = state.pending;
    if (own && NO_TURN_ERRORS.has(frame.code)) {
      // The server refused what this page sent (another tab's turn may be running meanwhile):
      // no `done` comes for it, and what it would have replaced stays.
      state.pending = null;
      els.messages.appendChild(box);
      for (const el of own.replaced) el.classList.remove("replaced");
      own.replaced = [];
      messageUnsent(own.userMsg);
      if (turn === own && turn.running && !turn.assistant) turnEnd();
      scrollFollow();
      return;
    }
    if (turn === own) state.pending = null; // an error of the turn itself: it was taken
    if (turn.running && turn.assistant) messageAddBox(turn.assistant, box);
    else els.messages.appendChild(box);
    scrollFollow();
    if (!turn.running) return; // an error outside a turn: nothing to unlock
    if (frame.code === REPLY_UNAVAILABLE) {
      turnInterrupt();
      return;
    }

    turn.hadError = true;
    if (!turn.assistant && NO_TURN_ERRORS.has(frame.code)) {
      turnEnd(); // refused, so no `done` will come
      return;
    }
    const errored = turn;
    clearTimeout(errored.errorTimer);
    errored.errorTimer = setTimeout(() => {
      if (turn === errored && turn.running) turnInterrupt();
    }, ERROR_DONE_GRACE_MS);
  }

  /* ---------- feedback: a thumb up or down on each reply, and an optional comment ---------- */

  // Words, not emoji: a system without an emoji font shows those as empty boxes.
  const RATINGS = [
    ["up", "Good", "Good reply"],
    ["down", "Bad", "Bad reply"],
  ];

  function feedbackAttach(msg, turnId, rating) {
    if (typeof turnId !== "string" || !/^[0-9a-f]{32}$/.test(turnId) || msg.el.querySelector(".feedback")) return;
    const box = elementWith("span", "feedback");
    box.dataset.turnId = turnId;
    for (const [value, label, title] of RATINGS) {
      const button = elementWith("button", "btn-copy feedback-button", label);
      button.type = "button";
      button.dataset.rating = value;
      button.title = title;
      button.setAttribute("aria-label", title);
      button.setAttribute("aria-pressed", "false");
      box.appendChild(button);
    }
    msg.footEl.appendChild(box);
    if (rating) feedbackShow(turnId, rating);
  }

  function feedbackBox(turnId) {
    if (typeof turnId !== "string" || !/^[0-9a-f]{32}$/.test(turnId)) return null;
    return els.messages.querySelector(`.feedback[data-turn-id="${turnId}"]`);
  }

  function feedbackShow(turnId, rating) {
    const box = feedbackBox(turnId);
    if (!box) return;
    for (const button of box.querySelectorAll(".feedback-button")) {
      button.setAttribute("aria-pressed", button.dataset.rating === rating ? "true" : "false");
    }
  }

  /* Send the rating at once; then offer a comment, sent with the same rating. */
  function feedbackGive(box, rating) {
    if (!box || !frameSend({ type: "feedback", turn_id: box.dataset.turnId, rating })) return;
    const msgEl = box.closest(".msg");
    const old = msgEl.querySelector(".feedback-form");
    if (old) old.remove();
    const form = elementWith("form", "feedback-form");
    const input = elementWith("input", "feedback-comment");
    input.type = "text";
    input.maxLength = 2000;
    input.placeholder = rating === "up" ? "What was good? (optional)" : "What went wrong? (optional)";
    input.setAttribute("aria-label", "Comment on this reply");
    const send = elementWith("button", "btn-copy", "Send");
    send.type = "submit";
    form.append(input, send);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const comment = input.value.trim();
      if (comment) frameSend({ type: "feedback", turn_id: box.dataset.turnId, rating, comment });
      form.remove();
    });
    msgEl.appendChild(form);
    input.focus({ preventScroll: true });
  }

  function onFeedbackSaved(frame) {
    feedbackShow(frame.turn_id, frame.rating);
  }

  /* A rating the server refused: say so beside the buttons, and leave the turn alone. */
  function feedbackFailed(frame) {
    const box = feedbackBox(frame.turn_id);
    if (!box) return;
    let note = box.querySelector(".feedback-note");
    if (!note) {
      note = elementWith("span", "feedback-note");
      note.setAttribute("role", "status");
      box.appendChild(note);
    }
    note.textContent = typeof frame.message === "string" ? frame.message : "The rating was not saved.";
  }

  /* ---------- regenerate and edit ---------- */

  function lastUserElement() {
    const users = els.messages.querySelectorAll(".msg[data-role='user']:not(.replaced)");
    return users.length ? users[users.length - 1] : null;
  }

  /* The elements after `el` (and `el` itself when `including`): a turn and what follows it. */
  function elementsFrom(el, including) {
    const found = including ? [el] : [];
    for (let next = el.nextElementSibling; next; next = next.nextElementSibling) found.push(next);
    return found;
  }

  /* Offer "Regenerate" on the last reply and "Edit" on the last message, while nothing runs. */
  function actionsUpdate() {
    for (const button of els.messages.querySelectorAll(".msg-action")) button.remove();
    if (!state.ready || turn.running || state.editing) return;
    const lastUser = lastUserElement();
    if (!lastUser) return;
    const foot = lastUser.querySelector(".msg-foot");
    if (foot) foot.appendChild(actionButton("edit", "Edit", "Edit your last message and send it again"));
    const replies = els.messages.querySelectorAll(".msg[data-role='assistant']:not(.replaced)");
    const lastReply = replies.length ? replies[replies.length - 1] : null;
    const replyFoot = lastReply && lastReply.compareDocumentPosition(lastUser) & Node.DOCUMENT_POSITION_PRECEDING
      ? lastReply.querySelector(".msg-foot")
      : null;
    if (replyFoot) replyFoot.appendChild(actionButton("regenerate", "Regenerate", "Ask for another reply"));
  }

  function actionButton(action, label, title) {
    const button = elementWith("button", "btn-copy msg-action", label);
    button.type = "button";
    button.dataset.action = action;
    button.title = title;
    button.setAttribute("aria-label", title);
    return button;
  }

  function messagesClick(event) {
    const rate = event.target.closest("button.feedback-button");
    if (rate) {
      feedbackGive(rate.closest(".feedback"), rate.dataset.rating);
      return;
    }
    const button = event.target.closest("button.msg-action");
    if (!button) return;
    if (button.dataset.action === "regenerate") regenerate();
    else if (button.dataset.action === "edit") editStart();
  }

  function regenerate() {
    const lastUser = lastUserElement();
    if (!lastUser || !state.ready || turn.running) return;
    if (!frameSend({ type: "regenerate" })) return;
    state.historyToken = null;
    const replaced = elementsFrom(lastUser, false);
    for (const el of replaced) el.classList.add("replaced");
    turnBegin(null);
    turn.replaced = replaced;
    state.pending = turn;
    state.stickToBottom = true;
    scrollFollow();
  }

  function editStart() {
    const lastUser = lastUserElement();
    if (!lastUser || turn.running) return;
    state.editing = lastUser;
    lastUser.classList.add("editing");
    const text = lastUser.querySelector(".msg-text");
    els.input.value = text ? text.textContent : "";
    inputChanged();
    controlsUpdate();
    els.input.focus();
  }

  function editCancel() {
    if (!state.editing) return;
    state.editing.classList.remove("editing");
    state.editing = null;
    els.input.value = "";
    inputChanged();
    controlsUpdate();
  }

  /* ---------- turns ---------- */

  function turnNew() {
    return {
      running: false,
      stopRequested: false,
      hadError: false,
      assistant: null, // see messageBuild
      userMsg: null,
      toolCards: new Map(),
      errorTimer: null,
      replaced: [], // regenerate/edit: the elements of the turn it replaces, hidden until it has started
    };
  }

  function turnBegin(userMsg) {
    turn = turnNew();
    turn.running = true;
    turn.userMsg = userMsg;
    els.messages.setAttribute("aria-busy", "true");
    pendingUpdate();
    controlsUpdate();
  }

  function turnEnd() {
    clearTimeout(turn.errorTimer);
    turn.running = false;
    els.messages.removeAttribute("aria-busy");
    pendingUpdate();
    controlsUpdate();
    jumpUpdate();
  }

  /* The socket went away (or no `done` came): end the reply visually; the server keeps what it got. */
  function turnInterrupt() {
    // A regenerate or edit that never finished: what it would have replaced shows again.
    for (const el of turn.replaced) el.classList.remove("replaced");
    turn.replaced = [];
    if (turn.assistant && turn.assistant.el.classList.contains("streaming")) {
      assistantFinish(turn.assistant, { meta: "interrupted", stopped: false, title: "" });
    }
    if (turn.running) turnEnd();
  }

  function turnReset() {
    clearTimeout(turn.errorTimer);
    if (turn.assistant) renderCancel(turn.assistant);
    turn = turnNew();
    els.messages.removeAttribute("aria-busy");
    pendingUpdate();
  }

  /* ---------- messages ---------- */

  function timeBuild(createdAt) {
    const when = createdAt ? new Date(createdAt) : new Date();
    const el = document.createElement("time");
    el.className = "msg-time";
    if (Number.isNaN(when.getTime())) return el;
    el.dateTime = when.toISOString();
    el.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    el.title = when.toLocaleString();
    return el;
  }

  /* A message: {el, textEl, footEl, toolsEl, metaEl, raw} — raw is the text as sent (Markdown for replies). */
  function messageBuild(role, text, createdAt) {
    const el = document.createElement("div");
    el.className = "msg";
    el.dataset.role = role;
    const textEl = elementWith("div", role === "assistant" ? "msg-text markdown" : "msg-text");
    el.appendChild(textEl);
    const footEl = elementWith("div", "msg-foot");
    footEl.appendChild(timeBuild(createdAt));
    el.appendChild(footEl);
    const msg = { el, textEl, footEl, toolsEl: null, metaEl: null, raw: text || "", rendered: null, renderFrame: 0, renderTimer: 0, renderNotBefore: 0 };
    if (role === "assistant") {
      markdownInto(textEl, msg.raw);
      msg.rendered = msg.raw;
    }
    else if (text) textEl.textContent = text;
    return msg;
  }

  function messageAppend(role, text, createdAt) {
    const msg = messageBuild(role, text, createdAt);
    els.messages.appendChild(msg.el);
    return msg;
  }

  /* An error box inside a message goes above its footer. */
  function messageAddBox(msg, box) {
    msg.el.insertBefore(box, msg.footEl);
  }

  function messageUnsent(msg) {
    if (!msg) return;
    msg.el.classList.add("unsent");
    msg.el.title = "Not sent";
    // Give the text back so it can be sent again, unless something new was typed meanwhile.
    if (!els.input.value) {
      els.input.value = msg.raw;
      inputChanged();
    }
  }

  /* The plain history of a `session` frame: roles and texts only. */
  function historyRender(history) {
    turnReset();
    els.messages.replaceChildren();
    state.lastUserMsg = null;
    for (const item of history) {
      if (!item || (item.role !== "user" && item.role !== "assistant")) continue;
      const msg = messageAppend(item.role, typeof item.content === "string" ? item.content : "", item.created_at);
      if (item.role === "assistant") {
        assistantFinish(msg, { meta: "", stopped: false, title: "" });
        feedbackAttach(msg, item.turn_id, item.feedback);
      } else state.lastUserMsg = msg;
    }
    if (state.editing) {
      // Drawn again (a reconnect): the edit goes on, on the message as drawn now.
      state.editing = lastUserElement();
      if (state.editing) state.editing.classList.add("editing");
    }
    state.stickToBottom = true;
    scrollFollow();
  }

  function historyRichLoad(sessionId, token) {
    fetch(`/api/sessions/${encodeURIComponent(sessionId)}/`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then((response) => (response.ok ? response.json() : Promise.reject(new Error(`HTTP ${response.status}`))))
      .then((body) => {
        // Too late if the reader already sent something, switched sessions, or a turn is streaming.
        if (state.historyToken !== token || state.sessionId !== sessionId || turn.running) return;
        if (!body || !Array.isArray(body.events)) return;
        const stuck = state.stickToBottom;
        historyRichRender(body.events);
        state.stickToBottom = stuck;
        scrollFollow();
        actionsUpdate();
      })
      .catch((err) => {
        console.warn("could not load the session's events; showing its plain history", err);
      });
  }

  /* The history from the session's recorded events: tool cards, stopped replies, figures, errors. */
  function historyRichRender(events) {
    turnReset();
    els.messages.replaceChildren();
    let current = null; // the reply being assembled (tool calls come before its text)
    let lastReply = null; // the last reply since the last user message
    const cards = new Map();
    const currentEnsure = (createdAt) => {
      if (!current) current = messageAppend("assistant", "", createdAt);
      return current;
    };
    const currentClose = () => {
      if (current) {
        assistantFinish(current, { meta: "", stopped: false, title: "" });
        lastReply = current;
        current = null;
      }
    };
    for (const event of events) {
      if (!event || typeof event !== "object" || event.superseded === true) continue;
      const data = event.data && typeof event.data === "object" ? event.data : {};
      const content = typeof event.content === "string" ? event.content : "";
      if (event.type === "user_message") {
        currentClose();
        lastReply = null;
        messageAppend("user", content, event.created_at);
      } else if (event.type === "tool_call") {
        const card = toolCardBuild(data.call_id, data.name, data.arguments);
        assistantTools(currentEnsure(event.created_at)).appendChild(card);
        cards.set(String(data.call_id), card);
      } else if (event.type === "tool_result") {
        let card = cards.get(String(data.call_id));
        if (!card) {
          card = toolCardBuild(data.call_id, data.name, undefined);
          assistantTools(currentEnsure(event.created_at)).appendChild(card);
        }
        toolCardFill(card, data.ok !== false, data.result, data.duration_ms);
      } else if (event.type === "assistant_message") {
        const msg = currentEnsure(event.created_at);
        msg.raw = content;
        assistantFinish(msg, figuresFrom(data));
        feedbackAttach(msg, data.turn_id, null);
        lastReply = msg;
        current = null;
      } else if (event.type === "system" && data.kind === "feedback") {
        feedbackShow(data.turn_id, data.rating); // the latest rating of a reply counts
      } else if (event.type === "error") {
        const box = errorBuild(data.code, content || data.message);
        const target = current || lastReply;
        if (target) messageAddBox(target, box);
        else els.messages.appendChild(box);
      }
    }
    currentClose();
    if (state.notice) els.messages.appendChild(state.notice);
  }

  function assistantEnsure() {
    if (turn === state.pending) state.pending = null; // the server took it
    if (turn.assistant && turn.running) return turn.assistant;
    // Frames of a turn this page did not start (should not happen) still lock until `done`.
    if (!turn.running) turnBegin(null);
    const msg = messageAppend("assistant", "");
    msg.el.classList.add("streaming");
    turn.assistant = msg;
    pendingUpdate();
    controlsUpdate();
    scrollFollow();
    return msg;
  }

  function assistantAppendText(msg, text) {
    msg.raw += text;
    renderSchedule(msg);
  }

  /* Re-render a streaming reply at most once a frame, and less often when rendering gets slow (long replies). */
  function renderSchedule(msg) {
    if (msg.renderFrame || msg.renderTimer) return;
    const wait = msg.renderNotBefore - performance.now();
    if (wait > 0) {
      msg.renderTimer = setTimeout(() => {
        msg.renderTimer = 0;
        renderSchedule(msg);
      }, wait);
      return;
    }
    msg.renderFrame = requestAnimationFrame(() => {
      msg.renderFrame = 0;
      renderNow(msg);
    });
  }

  function renderNow(msg) {
    const started = performance.now();
    markdownInto(msg.textEl, msg.raw);
    msg.rendered = msg.raw;
    const cost = performance.now() - started;
    msg.renderNotBefore = performance.now() + Math.min(cost * 3, 500);
    scrollFollow();
  }

  function renderCancel(msg) {
    if (msg.renderFrame) cancelAnimationFrame(msg.renderFrame);
    clearTimeout(msg.renderTimer);
    msg.renderFrame = 0;
    msg.renderTimer = 0;
  }

  function assistantTools(msg) {
    if (!msg.toolsEl) {
      msg.toolsEl = document.createElement("div");
      msg.toolsEl.className = "msg-tools";
      msg.el.insertBefore(msg.toolsEl, msg.textEl);
    }
    return msg.toolsEl;
  }

  /* figures: {meta, stopped, title} (see figuresFrom). */
  function assistantFinish(msg, figures) {
    renderCancel(msg);
    if (msg.rendered !== msg.raw) {
      markdownInto(msg.textEl, msg.raw);
      msg.rendered = msg.raw;
    }
    msg.el.classList.remove("streaming");
    if (figures.stopped) msg.el.classList.add("stopped");
    for (const card of msg.el.querySelectorAll(".tool-call.pending")) toolCardUnfinished(card);
    if (!msg.metaEl) {
      msg.metaEl = elementWith("span", "msg-meta");
      msg.footEl.appendChild(msg.metaEl);
    }
    msg.metaEl.textContent = figures.meta || "";
    if (figures.title) msg.el.title = figures.title;
    if (msg.raw && !msg.footEl.querySelector(".copy-reply")) {
      msg.footEl.appendChild(copyButton("copy-reply", "Copy", "Copy reply", () => msg.raw));
    }
  }

  function numberOr(value) {
    return Number.isFinite(value) ? value : null;
  }

  /* From a `done` frame or an assistant_message event's data. */
  function figuresFrom(source) {
    const usage = (source && source.usage) || {};
    const stopped = Boolean(source && source.stopped);
    const ttft = numberOr(source && source.ttft_ms);
    const duration = numberOr(source && source.duration_ms);
    const prompt = numberOr(usage.prompt_tokens);
    const completion = numberOr(usage.completion_tokens);
    const model = (source && source.model) || app.dataset.model || "";

    const parts = [];
    if (stopped) parts.push("(stopped)");
    // A stopped stream never got its usage (Groq sends it last): say nothing rather than "0 tokens".
    if (completion) parts.push(`${completion} token${completion === 1 ? "" : "s"}`);
    if (ttft !== null) parts.push(`first token ${ttft} ms`);
    if (duration !== null) parts.push(`${(duration / 1000).toFixed(1)} s`);

    const lines = [];
    if (model) lines.push(`Model: ${model}`);
    if (ttft !== null) lines.push(`Time to first token: ${ttft} ms`);
    if (prompt !== null || completion !== null) {
      lines.push(`Tokens: ${prompt === null ? "?" : prompt} prompt, ${completion === null ? "?" : completion} completion`);
    }
    if (duration !== null) lines.push(`Duration: ${(duration / 1000).toFixed(1)} s`);
    if (stopped) lines.push("Stopped");
    return { meta: parts.join(" · "), stopped, title: lines.join("\n") };
  }

  /* ---------- tool cards and errors ---------- */

  function jsonPretty(value) {
    if (typeof value === "string") return value;
    if (value === undefined) return "";
    try {
      return JSON.stringify(value, null, 2);
    } catch (_) {
      return String(value);
    }
  }

  function elementWith(tag, className, text) {
    const el = document.createElement(tag);
    el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function toolCardBuild(callId, name, args) {
    const card = elementWith("div", "tool-call pending");
    card.dataset.callId = callId == null ? "" : String(callId);
    const head = elementWith("div", "tool-head");
    const spinner = elementWith("span", "tool-spinner");
    spinner.setAttribute("aria-hidden", "true");
    head.appendChild(spinner);
    head.appendChild(elementWith("span", "tool-label", "tool"));
    head.appendChild(elementWith("span", "tool-name", name == null ? "?" : String(name)));
    card.appendChild(head);
    card.appendChild(elementWith("pre", "tool-args", jsonPretty(args === undefined ? {} : args)));
    const output = elementWith("details", "tool-output");
    output.open = true;
    output.appendChild(elementWith("summary", "tool-summary", "Running…"));
    output.appendChild(elementWith("pre", "tool-result", "running…"));
    card.appendChild(output);
    return card;
  }

  function toolCardFill(card, ok, result, durationMs) {
    card.classList.remove("pending");
    card.classList.toggle("tool-error", !ok);
    const text = jsonPretty(result === undefined ? null : result);
    card.querySelector(".tool-result").textContent = text;
    let summary = ok ? "Result" : "Error";
    if (Number.isFinite(durationMs)) summary += ` · ${durationMs} ms`;
    const lines = text.split("\n").length;
    if (text.length > TOOL_RESULT_OPEN_MAX_CHARS) summary += ` (${lines} line${lines === 1 ? "" : "s"})`;
    card.querySelector(".tool-summary").textContent = summary;
    card.querySelector(".tool-output").open = text.length <= TOOL_RESULT_OPEN_MAX_CHARS;
  }

  function toolCardUnfinished(card) {
    card.classList.remove("pending");
    card.querySelector(".tool-result").textContent = "(no result)";
    card.querySelector(".tool-summary").textContent = "No result";
  }

  function errorBuild(code, message, retryAfter) {
    const box = elementWith("div", "msg-error");
    box.appendChild(elementWith("span", "error-code", String(code || "error")));
    let text = String(message || "Something went wrong.");
    if (Number.isFinite(retryAfter)) text += ` (retry after ${retryAfter} s)`;
    box.appendChild(elementWith("span", "error-message", text));
    return box;
  }

  function noticeLoginRequired() {
    const box = errorBuild("login_required", "You need to log in to chat.");
    const link = elementWith("a", "error-action", "Log in");
    link.href = "/admin/login/?next=" + encodeURIComponent(window.location.pathname + window.location.search);
    box.appendChild(link);
    els.messages.appendChild(box);
    scrollFollow();
  }

  /* Someone else's session (an old link, say): forget it here, and show the visitor's own latest one. */
  function forbiddenFallback() {
    const refused = state.sessionId;
    if (storageGet(SESSION_STORAGE_KEY) === refused) storageRemove(SESSION_STORAGE_KEY);
    fetch("/api/sessions/", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : Promise.reject(new Error(`HTTP ${response.status}`))))
      .then((body) => {
        if (state.sessionId !== refused) return; // the reader moved on meanwhile
        const others = body && Array.isArray(body.sessions) ? body.sessions.filter((s) => s && s.id !== refused) : [];
        const own = others.find((s) => s.turns > 0) || others[0];
        if (!own) {
          noticeForbidden();
          return;
        }
        sessionOpen(own.id, "keep");
        state.notice = errorBuild(
          "forbidden",
          "The session in the link belongs to someone else; here is your latest session instead.",
        );
      })
      .catch(() => noticeForbidden());
  }

  function noticeForbidden() {
    const box = errorBuild("forbidden", "This session belongs to someone else, so it cannot be opened here.");
    const button = elementWith("button", "btn error-action", "Start a new session");
    button.type = "button";
    button.addEventListener("click", sessionStartNew);
    box.appendChild(button);
    els.messages.appendChild(box);
    scrollFollow();
  }

  /* ---------- sidebar: the visitor's sessions ---------- */

  function sessionsRefresh() {
    if (!els.sessionList) return;
    const seq = ++state.sessionsSeq;
    fetch("/api/sessions/", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : Promise.reject(new Error(`HTTP ${response.status}`))))
      .then((body) => {
        if (seq !== state.sessionsSeq) return;
        state.sessions = body && Array.isArray(body.sessions) ? body.sessions : [];
        sessionListRender();
      })
      .catch((err) => {
        if (seq !== state.sessionsSeq) return;
        console.warn("could not load the sessions", err);
        if (!state.sessions.length) listStateSet("Could not load your sessions.");
      });
  }

  function csrfToken() {
    const found = document.cookie.split("; ").find((pair) => pair.startsWith("csrftoken="));
    return found ? decodeURIComponent(found.slice("csrftoken=".length)) : "";
  }

  function sessionRequest(id, method, body) {
    return fetch(`/api/sessions/${encodeURIComponent(id)}/`, {
      method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then((response) => {
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      return response;
    });
  }

  function sessionRename(id) {
    const session = state.sessions.find((s) => s && s.id === id);
    const title = window.prompt("Rename the session", session ? sessionLabel(session) : "");
    if (title === null || !title.trim()) return;
    sessionRequest(id, "PATCH", { title: title.trim().slice(0, 200) })
      .then(() => sessionsRefresh())
      .catch((err) => {
        console.warn("could not rename the session", err);
        listStateSet("Could not rename the session.");
      });
  }

  /* Delete one of the visitor's sessions: gone from their list (staff keep it; see the README). */
  function sessionDelete(id) {
    if (!window.confirm("Delete this session? It disappears from your list for good.")) return;
    sessionRequest(id, "DELETE")
      .then(() => {
        state.sessions = state.sessions.filter((s) => s && s.id !== id);
        sessionListRender();
        if (id === state.sessionId) sessionStartNew();
      })
      .catch((err) => {
        console.warn("could not delete the session", err);
        listStateSet("Could not delete the session.");
      });
  }

  function listStateSet(text) {
    if (!els.sessionListState) return;
    els.sessionListState.textContent = text;
    els.sessionListState.hidden = !text;
  }

  function dateShort(iso) {
    const when = iso ? new Date(iso) : null;
    if (!when || Number.isNaN(when.getTime())) return "";
    return when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }

  function sessionLabel(session) {
    const summaryTitle = session.summary && typeof session.summary.title === "string" ? session.summary.title.trim() : "";
    const title = typeof session.title === "string" ? session.title.trim() : "";
    // The session's title is the summary's, unless its owner renamed it.
    return title || summaryTitle || dateShort(session.started_at) || String(session.id);
  }

  function sessionListRender() {
    const items = [];
    for (const session of state.sessions) {
      if (!session || typeof session.id !== "string" || !UUID_RE.test(session.id)) continue;
      const id = session.id.toLowerCase();
      const link = elementWith("a", "session-link");
      link.dataset.sessionId = id;
      link.href = `?session=${encodeURIComponent(id)}`;
      const label = sessionLabel(session);
      link.appendChild(elementWith("span", "session-title", label));
      const details = [];
      const when = dateShort(session.started_at);
      if (when && when !== label) details.push(when);
      if (Number.isFinite(session.turns)) details.push(`${session.turns} turn${session.turns === 1 ? "" : "s"}`);
      if (details.length) link.appendChild(elementWith("span", "session-when", details.join(" · ")));
      link.title = label;
      const item = document.createElement("li");
      item.className = "session-item";
      item.appendChild(link);
      const actions = elementWith("div", "session-actions");
      for (const [action, text] of [["rename", "Rename"], ["delete", "Delete"]]) {
        const button = elementWith("button", "btn-copy session-action", text);
        button.type = "button";
        button.dataset.action = action;
        button.dataset.sessionId = id;
        button.setAttribute("aria-label", `${text} “${label}”`);
        actions.appendChild(button);
      }
      item.appendChild(actions);
      items.push(item);
    }
    els.sessionList.replaceChildren(...items);
    listStateSet(items.length ? "" : "No sessions yet.");
    sessionListMarkCurrent();
  }

  function sessionListMarkCurrent() {
    if (!els.sessionList) return;
    for (const link of els.sessionList.querySelectorAll("a.session-link")) {
      const current = link.dataset.sessionId === state.sessionId;
      link.classList.toggle("current", current);
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  function sessionListClick(event) {
    const action = event.target.closest("button.session-action");
    if (action) {
      if (action.dataset.action === "rename") sessionRename(action.dataset.sessionId);
      else if (action.dataset.action === "delete") sessionDelete(action.dataset.sessionId);
      return;
    }
    const link = event.target.closest("a.session-link");
    if (!link) return;
    // Let modified clicks open the session in a new tab.
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    sidebarSet(false);
    const id = link.dataset.sessionId;
    if (id === state.sessionId && (state.ready || state.socket)) return;
    sessionOpen(id, "push");
  }

  function sidebarSet(open) {
    if (!els.sidebar) return;
    const wasOpen = document.body.classList.contains("sidebar-open");
    document.body.classList.toggle("sidebar-open", open);
    if (els.sidebarToggle) els.sidebarToggle.setAttribute("aria-expanded", String(open));
    if (els.sidebarBackdrop) els.sidebarBackdrop.hidden = !open;
    if (open && !wasOpen) {
      sessionsRefresh();
      const target = els.sidebar.querySelector("a.session-link.current") || els.sidebar.querySelector("a, button");
      if (target) target.focus();
    } else if (!open && wasOpen && els.sidebar.contains(document.activeElement) && els.sidebarToggle) {
      els.sidebarToggle.focus();
    }
  }

  /* ---------- composer ---------- */

  function messageSend() {
    const content = els.input.value;
    if (!content.trim() || !state.ready || turn.running) return;
    if (content.length > state.maxChars) return; // maxlength normally prevents this
    const edited = state.editing;
    if (!frameSend(edited ? { type: "edit", content } : { type: "message", content })) return;
    state.historyToken = null; // a rich history arriving now would wipe this message
    state.notice = null;
    let replaced = [];
    if (edited) {
      state.editing = null;
      edited.classList.remove("editing");
      replaced = elementsFrom(edited, true);
      for (const el of replaced) el.classList.add("replaced");
    }
    const userMsg = messageAppend("user", content);
    els.input.value = "";
    inputChanged();
    turnBegin(userMsg);
    turn.replaced = replaced;
    state.pending = turn;
    state.stickToBottom = true;
    scrollFollow();
  }

  function stopRequest() {
    if (!turn.running || turn.stopRequested) return;
    if (frameSend({ type: "stop" })) {
      turn.stopRequested = true;
      controlsUpdate();
    }
  }

  /* Show another session (a new one, or one from the sidebar): a fresh socket, its history from the server. */
  function sessionOpen(id, urlMode) {
    socketDrop();
    state.notice = null;
    state.pending = null;
    if (state.editing) editCancel();
    turnReset();
    state.frameSeq = 0;
    state.historyToken = null;
    els.messages.replaceChildren();
    state.reconnecting = false;
    state.backoffMs = BACKOFF_START_MS;
    state.stickToBottom = true;
    sessionSet(id, urlMode);
    connect();
    controlsUpdate();
    jumpUpdate();
  }

  function sessionStartNew() {
    state.refocusInput = true; // a new session is for typing into, once its socket is up
    sessionOpen(uuid4(), "keep");
  }

  function controlsUpdate() {
    const connected = state.ready;
    if (!connected && document.activeElement === els.input) state.refocusInput = true;
    els.input.disabled = !connected;
    els.send.disabled = !connected || turn.running;
    const canStop = connected && turn.running;
    els.stop.hidden = !canStop;
    els.stop.disabled = !canStop || turn.stopRequested;
    if (els.hint) {
      let hint = "";
      if (!connected) {
        if (state.disconnected) hint = "Disconnected — see the message above.";
        else if (state.reconnecting) hint = "Reconnecting…";
        else hint = "Connecting…";
      } else if (turn.running) {
        hint = turn.stopRequested ? "Stopping…" : "Waiting for the reply…";
      } else if (state.editing) {
        hint = "Editing your last message: send replaces it and its reply (Esc cancels).";
      }
      if (els.hint.textContent !== hint) els.hint.textContent = hint;
      els.hint.hidden = !hint;
    }
    if (connected && state.refocusInput) {
      state.refocusInput = false;
      els.input.focus();
    }
    actionsUpdate();
  }

  function pendingUpdate() {
    // The dots fill the gap between sending and the first token or tool call.
    els.pending.hidden = !(turn.running && !turn.assistant);
  }

  function inputChanged() {
    els.input.style.height = "auto";
    els.input.style.height = Math.min(els.input.scrollHeight + 2, INPUT_MAX_HEIGHT_PX) + "px";
    els.input.style.overflowY = els.input.scrollHeight + 2 > INPUT_MAX_HEIGHT_PX ? "auto" : "hidden";
    const length = els.input.value.length;
    const near = length > state.maxChars * 0.8;
    els.charCount.textContent = near ? `${length} / ${state.maxChars}` : "";
    els.charCount.classList.toggle("at-limit", length >= state.maxChars);
  }

  function inputKeydown(event) {
    if (event.key === "Escape" && state.editing) {
      event.preventDefault();
      editCancel();
      return;
    }
    // isComposing: Enter that confirms an IME composition must not send.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      messageSend();
    }
  }

  /* ---------- scrolling ---------- */

  function nearBottom() {
    const doc = document.documentElement;
    return window.innerHeight + window.scrollY >= doc.scrollHeight - STICK_THRESHOLD_PX;
  }

  function scrollToEnd() {
    window.scrollTo({ top: document.documentElement.scrollHeight, behavior: "instant" });
  }

  function scrollFollow() {
    if (state.stickToBottom) scrollToEnd();
    jumpUpdate();
  }

  function jumpUpdate() {
    // While a reply streams, an unstuck view always offers the way back (the reply may grow below).
    if (els.jumpLatest) els.jumpLatest.hidden = state.stickToBottom || (!turn.running && nearBottom());
  }

  /* The reader asked to look up (wheel, touch, keys): stop following even if the page could not scroll. */
  function unstick() {
    if (!state.stickToBottom) return;
    state.stickToBottom = false;
    jumpUpdate();
  }

  function scrolled() {
    const y = window.scrollY;
    const down = y > state.lastScrollY;
    state.lastScrollY = y;
    if (!nearBottom()) state.stickToBottom = false;
    else if (down) state.stickToBottom = true; // back at the bottom by scrolling down: follow again
    jumpUpdate();
  }

  function jumpLatest() {
    state.stickToBottom = true;
    scrollToEnd();
    jumpUpdate();
    if (!els.input.disabled) els.input.focus({ preventScroll: true });
  }

  /* ---------- start ---------- */

  function init() {
    els.input.maxLength = state.maxChars;
    els.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      messageSend();
    });
    els.input.addEventListener("keydown", inputKeydown);
    els.input.addEventListener("input", inputChanged);
    els.stop.addEventListener("click", stopRequest);
    els.messages.addEventListener("click", messagesClick);
    els.newSession.addEventListener("click", sessionStartNew);
    if (els.jumpLatest) els.jumpLatest.addEventListener("click", jumpLatest);
    if (els.sessionList) els.sessionList.addEventListener("click", sessionListClick);
    if (els.sidebarToggle) {
      els.sidebarToggle.addEventListener("click", () => sidebarSet(!document.body.classList.contains("sidebar-open")));
    }
    if (els.sidebarBackdrop) els.sidebarBackdrop.addEventListener("click", () => sidebarSet(false));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) sidebarSet(false);
    });
    // Follow the stream only while the reader is at the bottom; scrolling up pauses it.
    window.addEventListener("scroll", scrolled, { passive: true });
    window.addEventListener("wheel", (event) => {
      if (event.deltaY < 0) unstick();
    }, { passive: true });
    window.addEventListener("touchstart", (event) => {
      state.touchY = event.touches.length ? event.touches[0].clientY : null;
    }, { passive: true });
    window.addEventListener("touchmove", (event) => {
      // A finger moving down drags the page up.
      if (state.touchY !== null && event.touches.length && event.touches[0].clientY > state.touchY + 10) unstick();
    }, { passive: true });
    document.addEventListener("keydown", (event) => {
      if (event.target === els.input || event.altKey || event.ctrlKey || event.metaKey) return;
      if (event.key === "PageUp" || event.key === "ArrowUp" || event.key === "Home") unstick();
    });
    window.addEventListener("resize", () => {
      if (state.stickToBottom) scrollToEnd();
      jumpUpdate();
    }, { passive: true });
    // Back online while waiting out a backoff: try now.
    window.addEventListener("online", () => {
      if (state.reconnectTimer) connect();
    });
    // Back/forward between sessions opened from the sidebar.
    window.addEventListener("popstate", (event) => {
      const fromState = event.state && typeof event.state.session === "string" ? event.state.session : null;
      const id = (fromState && UUID_RE.test(fromState) ? fromState.toLowerCase() : null) || sessionIdFromUrl();
      if (id && id !== state.sessionId) sessionOpen(id, "none");
    });

    sessionSet(sessionIdInitial(), "keep");
    connect();
    controlsUpdate();
    inputChanged();
  }

  init();
})();
