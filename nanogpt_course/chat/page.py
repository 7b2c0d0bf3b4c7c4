"""The web chat page served at ``GET /``: one self-contained HTML file (no CDN, no build).

It reads model info from ``/health``, sends the whole conversation to ``POST /api/chat``
and reads the server-sent events with ``fetch`` + a stream reader, appending each token to
the reply as it arrives. Stop aborts the request (the server then frees the slot).
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nanogpt-course chat</title>
<style>
  :root { --bg: #f6f7f9; --fg: #1d2330; --muted: #667085; --me: #dbeafe; --bot: #ffffff;
          --line: #d0d5dd; --accent: #2563eb; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
         background: var(--bg); color: var(--fg); display: flex; flex-direction: column;
         height: 100vh; height: 100dvh; }
  header { padding: .6rem 1rem; border-bottom: 1px solid var(--line); background: #fff;
           display: flex; flex-wrap: wrap; gap: .4rem 1rem; align-items: center; }
  header h1 { font-size: 1.05rem; margin: 0; }
  #info { color: var(--muted); font-size: .85rem; flex: 1 1 16rem; }
  #log { flex: 1; overflow-y: auto; padding: 1rem; display: flex; flex-direction: column;
         gap: .6rem; }
  .msg { max-width: 46rem; padding: .55rem .8rem; border-radius: .8rem; white-space: pre-wrap;
         word-wrap: break-word; border: 1px solid var(--line); }
  .user { align-self: flex-end; background: var(--me); }
  .assistant { align-self: flex-start; background: var(--bot); }
  .notice { align-self: center; color: var(--muted); font-size: .85rem; }
  .streaming::after { content: "\2589"; color: var(--muted); margin-left: 1px; }
  form { border-top: 1px solid var(--line); background: #fff; padding: .6rem 1rem; }
  .row { display: flex; gap: .5rem; }
  textarea { flex: 1; font: inherit; padding: .5rem; border: 1px solid var(--line);
             border-radius: .5rem; resize: vertical; min-height: 2.6rem; }
  button { font: inherit; padding: .45rem .9rem; border-radius: .5rem;
           border: 1px solid var(--line); background: #fff; cursor: pointer; }
  button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
  button:disabled { opacity: .45; cursor: default; }
  .knobs { display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; margin-top: .5rem;
           font-size: .85rem; color: var(--muted); align-items: center; }
  .knobs input[type=range] { vertical-align: middle; width: 8rem; }
</style>
</head>
<body>
<header>
  <h1>nanogpt-course chat</h1>
  <span id="info">loading model info&hellip;</span>
  <button id="new" type="button" title="forget this conversation">New chat</button>
</header>
<main id="log" aria-live="polite"></main>
<form id="form">
  <div class="row">
    <textarea id="input" rows="2" placeholder="Type a message (Enter sends, Shift+Enter: new line)"></textarea>
    <button id="send" class="primary" type="submit">Send</button>
    <button id="stop" type="button" disabled>Stop</button>
  </div>
  <div class="knobs">
    <label>temperature <input id="temperature" type="range" min="0" max="2" step="0.05" value="0.8">
      <span id="temperature-value">0.8</span></label>
    <label>top-k <input id="top-k" type="range" min="1" max="200" step="1" value="50">
      <span id="top-k-value">50</span></label>
    <label>max tokens <input id="max-tokens" type="number" min="1" max="1024" value="256" style="width:5rem"></label>
  </div>
</form>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), sendButton = $("send"), stopButton = $("stop");
let messages = [], controller = null, kind = "chat";

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

for (const id of ["temperature", "top-k"]) {
  $(id).addEventListener("input", () => { $(id + "-value").textContent = $(id).value; });
}

fetch("health").then((r) => r.json()).then((h) => {
  const m = h.model;
  kind = m.kind;
  $("info").textContent = `${m.name} · ${m.kind} model · depth ${m.depth} · ` +
    `${m.parameters.toLocaleString()} parameters · context ${m.context} · tokenizer ${m.tokenizer}`;
  $("max-tokens").max = h.limits.max_tokens;
  if (kind !== "chat") bubble("notice", "base model: each message is continued as plain text (no roles, no memory)");
}).catch(() => { $("info").textContent = "model info unavailable"; });

function setBusy(busy) {
  sendButton.disabled = busy;
  stopButton.disabled = !busy;
}

async function send() {
  const text = input.value;
  if (!text.trim() || controller) return;
  input.value = "";
  bubble("user", text);
  const convo = messages;  // "New chat" swaps in a new list; this reply belongs to the old one
  convo.push({ role: "user", content: text });
  const reply = bubble("assistant streaming", "");
  controller = new AbortController();
  setBusy(true);
  let answer = "";
  try {
    const response = await fetch("api/chat", {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: controller.signal,
      body: JSON.stringify({
        messages: kind === "chat" ? convo : [convo[convo.length - 1]],
        temperature: parseFloat($("temperature").value), top_k: parseInt($("top-k").value),
        max_tokens: parseInt($("max-tokens").value) }) });
    if (!response.ok) {
      let why = response.statusText;
      try { why = (await response.json()).error || why; } catch (e) {}
      throw new Error(`${response.status}: ${why}`);
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const payload = JSON.parse(data);
          if (payload.token !== undefined) {
            answer += payload.token;
            reply.textContent = answer;
            log.scrollTop = log.scrollHeight;
          } else if (payload.error) {
            bubble("notice", "error: " + payload.error);
          }
        }
      }
    }
  } catch (err) {
    if (err.name === "AbortError") bubble("notice", "stopped");
    else bubble("notice", String(err.message || err));
  } finally {
    reply.classList.remove("streaming");
    if (kind === "chat") convo.push({ role: "assistant", content: answer });
    else convo.length = 0;
    controller = null;
    setBusy(false);
    input.focus();
  }
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); send(); });
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
stopButton.addEventListener("click", () => { if (controller) controller.abort(); });
$("new").addEventListener("click", () => {
  if (controller) controller.abort();
  messages = [];
  log.replaceChildren();
  input.focus();
});
</script>
</body>
</html>
"""
