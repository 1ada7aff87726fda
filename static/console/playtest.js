// The playtest page: a game client in the browser, speaking protocol v1 (docs/protocol.md).
// Every server string goes into the page through textContent, never as HTML.
"use strict";

(function () {
  const root = document.getElementById("playtest");
  const form = document.getElementById("playtest-form");
  if (!root || !form) return;

  const npcSelect = document.getElementById("playtest-npc");
  const textInput = document.getElementById("playtest-text");
  const sendButton = document.getElementById("playtest-send");
  const cancelButton = document.getElementById("playtest-cancel");
  const statusLine = document.getElementById("playtest-status");
  const log = document.getElementById("playtest-log");
  const playerId = root.dataset.playerId;

  // The socket authenticates with this page's session cookie; no game key in the browser.
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/game/";
  const turns = new Map(); // request_id -> {card, npc, meta, text}
  let socket = null;
  let sessionId = null;
  let lastSeq = 0;
  let inFlight = null; // the request_id being answered
  let requestCounter = 0;
  let reconnectDelay = 500;

  function status(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", Boolean(isError));
  }

  function controls() {
    const ready = socket !== null && socket.readyState === WebSocket.OPEN && sessionId !== null;
    sendButton.disabled = !ready || inFlight !== null;
    cancelButton.disabled = !ready || inFlight === null;
  }

  function send(frame) {
    socket.send(JSON.stringify(frame));
  }

  function span(field, text) {
    const element = document.createElement("span");
    element.dataset.field = field;
    element.textContent = text;
    return element;
  }

  function turnCard(requestId, npcName, playerText) {
    const card = document.createElement("li");
    card.className = "turn streaming";
    card.dataset.requestId = requestId;
    const player = document.createElement("p");
    player.className = "player";
    player.textContent = "You → " + npcName + ": " + playerText;
    const npc = document.createElement("p");
    npc.className = "npc";
    const meta = document.createElement("p");
    meta.className = "meta";
    card.append(player, npc, meta);
    log.prepend(card);
    const turn = { card: card, npc: npc, meta: meta, text: "" };
    turns.set(requestId, turn);
    return turn;
  }

  function turnFinished(requestId) {
    if (inFlight === requestId) inFlight = null;
    controls();
  }

  function turnFailed(turn, frame) {
    if (!turn) return;
    turn.card.classList.remove("streaming");
    turn.card.classList.add("failed");
    turn.meta.append(span("error", frame.code + ": " + frame.message));
  }

  function onFrame(frame) {
    if (typeof frame.seq === "number" && frame.seq > 0) lastSeq = frame.seq;
    const turn = frame.request_id ? turns.get(frame.request_id) : undefined;
    switch (frame.type) {
      case "session.ready":
        sessionId = frame.session_id;
        reconnectDelay = 500;
        status(frame.resumed ? "Reconnected (" + frame.replayed + " frames replayed)." : "Connected.");
        break;
      case "turn.start":
        if (turn) {
          turn.meta.append(span("adapter", "adapter " + (frame.adapter || "base model")), span("tier", "tier " + frame.tier));
        }
        break;
      case "turn.delta":
        if (turn) {
          turn.text += frame.text;
          turn.npc.textContent = turn.text;
        }
        break;
      case "turn.end":
        if (turn) {
          turn.npc.textContent = frame.text;
          turn.card.classList.remove("streaming");
          turn.meta.append(
            span("emotion", "emotion " + frame.emotion),
            span("action", "action " + frame.action),
            span("ttft", "first token " + frame.timing.ttft_ms + " ms"),
            span("total", "total " + frame.timing.total_ms + " ms"),
            span("tokens", frame.usage.completion_tokens + " tokens"),
          );
          if (frame.memory) turn.meta.append(span("memory", "memory " + frame.memory.source + ", " + frame.memory.turns + " turns, " + frame.memory.facts + " facts"));
          if (frame.fallbacks && frame.fallbacks.length) turn.meta.append(span("fallbacks", "fallbacks " + frame.fallbacks.join(", ")));
          // Why did it say that: the turn's trace, once the archiver has it (a second or two).
          const trace = document.createElement("a");
          trace.className = "trace";
          trace.href = "/ops/turns/" + encodeURIComponent(frame.turn_id) + "/";
          trace.textContent = "trace";
          turn.meta.append(trace);
        }
        send({ type: "ack", seq: frame.seq }); // frees the session's replay buffer
        turnFinished(frame.request_id);
        break;
      case "turn.error":
        turnFailed(turn, frame);
        send({ type: "ack", seq: frame.seq });
        turnFinished(frame.request_id);
        break;
      case "error":
        status(frame.code + ": " + frame.message + (frame.retry_after ? " (retry in " + frame.retry_after + " s)" : ""), true);
        turnFailed(turn, frame);
        if (frame.code === "unknown_session" || frame.code === "resume_gap") {
          sessionId = null; // start a fresh session on this socket
          send({ type: "session.start", player_id: playerId });
        }
        if (frame.request_id) turnFinished(frame.request_id);
        break;
      default:
        break;
    }
    controls();
  }

  function connect() {
    status(sessionId ? "Reconnecting…" : "Connecting…");
    socket = new WebSocket(url);
    socket.addEventListener("open", function () {
      const start = { type: "session.start", player_id: playerId };
      if (sessionId) start.resume = { session_id: sessionId, last_seq: lastSeq };
      send(start);
    });
    socket.addEventListener("message", function (event) {
      onFrame(JSON.parse(event.data));
    });
    socket.addEventListener("close", function (event) {
      controls();
      if (event.code === 4401 || event.code === 4403) {
        status("The server refused the connection (" + event.code + "): sign in again with the playtest permission.", true);
        return;
      }
      status("Disconnected (" + event.code + "); reconnecting…", true);
      setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 10000);
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = textInput.value.trim();
    if (!text || inFlight !== null) return;
    requestCounter += 1;
    const requestId = "pt-" + Date.now().toString(36) + "-" + requestCounter;
    turnCard(requestId, npcSelect.options[npcSelect.selectedIndex].text, text);
    inFlight = requestId;
    send({ type: "npc.say", request_id: requestId, npc_id: npcSelect.value, text: text });
    textInput.value = "";
    controls();
  });

  cancelButton.addEventListener("click", function () {
    if (inFlight !== null) send({ type: "npc.cancel", request_id: inFlight });
  });

  connect();
})();
