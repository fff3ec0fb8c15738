// The ssmkit chat page: sessions on the left, the open one on the right; replies stream in over SSE.
// The open session's id lives in the address (#s=ID), so a reload resumes it.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let current = null; // the open session's id
let busy = false;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem("ssmkit-key") || "";
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.status + " " + r.statusText);
  return data;
}

function size(n) {
  if (n < 1024) return n + " B";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1 << 30) return (n / (1 << 20)).toFixed(1) + " MiB";
  return (n / (1 << 30)).toFixed(2) + " GiB";
}

function sizes(s) {
  return `${s.tokens} tokens · state <b>${size(s.state_bytes)}</b> · KV cache ${size(s.transformer_kv_cache_bytes)}`;
}

function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(label, body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function refreshList() {
  const list = await api("GET", "/v1/sessions");
  const ul = $("sessions");
  ul.replaceChildren();
  for (const s of list.data) {
    const li = document.createElement("li");
    li.dataset.id = s.id;
    if (s.id === current) li.className = "current";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = (s.parent ? "fork: " : "") + (s.title || "(new chat)");
    const info = document.createElement("div");
    info.className = "sizes";
    info.innerHTML = sizes(s);
    li.append(title, info);
    li.onclick = () => open(s.id).catch(showError);
    ul.append(li);
  }
}

async function open(id) {
  const s = await api("GET", "/v1/sessions/" + encodeURIComponent(id));
  current = s.id;
  location.hash = "s=" + s.id;
  $("messages").replaceChildren();
  for (const m of s.messages) addMessage(m.role, m.content);
  $("info").innerHTML = sizes(s);
  $("fork").disabled = false;
  await refreshList();
}

async function newChat() {
  const s = await api("POST", "/v1/sessions");
  await open(s.id);
}

async function fork() {
  if (!current) return;
  const s = await api("POST", "/v1/sessions/" + encodeURIComponent(current) + "/fork");
  await open(s.id);
}

// Read a server-sent-events body; call onData(obj) for each `data:` JSON line.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  if (!current) await newChat();
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const out = reply.querySelector(".text");
  reply.dataset.chunks = "0";
  reply.dataset.done = "false";
  const body = {
    model, stream: true, session_id: current,
    messages: [{ role: "user", content: text }],
    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
  };
  const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!r.ok) {
    const data = await r.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || r.status + " " + r.statusText);
  }
  await readEvents(r, (chunk) => {
    if (chunk.error) throw new Error(chunk.error.message);
    const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
    if (delta) {
      out.textContent += delta;
      reply.dataset.chunks = String(Number(reply.dataset.chunks) + 1);
      reply.scrollIntoView({ block: "end" });
    }
  });
  reply.dataset.done = "true";
  const s = await api("GET", "/v1/sessions/" + encodeURIComponent(current));
  $("info").innerHTML = sizes(s);
  await refreshList();
}

async function submit(event) {
  event.preventDefault();
  const text = $("input").value;
  if (!text.trim() || busy) return;
  busy = true;
  $("send").disabled = true;
  showError(null);
  $("input").value = "";
  try { await send(text); } catch (e) { showError(e); }
  busy = false;
  $("send").disabled = false;
}

async function start() {
  $("key").value = localStorage.getItem("ssmkit-key") || "";
  $("key").onchange = () => { localStorage.setItem("ssmkit-key", $("key").value); start().catch(showError); };
  $("composer").onsubmit = submit;
  $("input").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) submit(e); };
  $("new").onclick = () => newChat().catch(showError);
  $("fork").onclick = () => fork().catch(showError);
  showError(null);
  model = (await api("GET", "/v1/models")).data[0].id;
  $("model").textContent = model;
  const wanted = new URLSearchParams(location.hash.slice(1)).get("s");
  if (wanted) await open(wanted);
  else await refreshList();
  document.body.dataset.ready = "true";
}

start().catch(showError);
