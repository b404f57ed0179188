// The tnn-serve playground: chat and completion through the server's own OpenAI routes (streaming), per-reply
// figures, a server panel from /metrics. No dependencies, no build step; the page only talks to its own origin.
// Model output is only ever set as textContent, never parsed as HTML.

import { sseEvents } from "./sse.js";

const KEY_STORAGE = "tnn-serve.api-key"; // sessionStorage only: gone when the tab closes
const METRICS_EVERY_MS = 1000;
const PHONE_WIDTH = "(max-width: 760px)";

const $ = (id) => document.getElementById(id);

const ui = {
  mode: "chat",
  model: null,
  stateBytes: null,
  history: [], // chat messages sent so far: {role, content}
  run: null, // the reply being streamed: {controller}
  transcripts: {}, // mode -> element
};

// ---- talking to the server ----------------------------------------------------------------------------------------

class ApiError extends Error {
  // info is the API's error object {message, type, param, code}; status is null for an error event inside a stream
  constructor(status, info, retryAfter = null) {
    super(info.message);
    this.name = "ApiError";
    this.status = status;
    this.info = info;
    this.retryAfter = retryAfter;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function headers() {
  const result = { "Content-Type": "application/json" };
  if (apiKey()) result.Authorization = `Bearer ${apiKey()}`;
  return result;
}

async function errorFrom(response) {
  const text = await response.text();
  let info = null;
  try {
    info = JSON.parse(text).error;
  } catch {
    // not the API's envelope (a proxy's page, say): show what came back
  }
  if (!info || typeof info.message !== "string") {
    info = { message: `${response.status} ${response.statusText} ${text.slice(0, 300)}`.trim() };
  }
  return new ApiError(response.status, info, response.headers.get("Retry-After"));
}

// fetch with the key; a non-2xx answer throws ApiError (and a 401 opens the key prompt)
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers() });
  if (!response.ok) {
    const error = await errorFrom(response);
    if (error.status === 401) askForKey(error.message);
    throw error;
  }
  return response;
}

// ---- formatting -----------------------------------------------------------------------------------------------------

function formatBytes(bytes) {
  if (bytes == null) return "–";
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(2)} MiB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${bytes} B`;
}

function formatMs(ms) {
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

// ---- model and server panel -----------------------------------------------------------------------------------------

async function loadModel() {
  try {
    const card = (await (await api("/v1/models")).json()).data[0];
    ui.model = card.id;
    ui.stateBytes = card.state_bytes_per_sequence ?? null;
    $("model").textContent = card.id;
    $("model").title = `prompts up to ${card.max_model_len} tokens`;
    $("srv-state-seq").textContent = formatBytes(ui.stateBytes);
    showDefaults(card.generation_defaults ?? {});
    if (ui.stateBytes == null) setTimeout(loadModel, 1000); // still loading: the figure comes with the engine
  } catch (error) {
    $("model").textContent = error.status === 401 ? "API key needed" : `unavailable: ${error.message}`;
    if (error.status !== 401) setTimeout(loadModel, 2000);
  }
}

// Prometheus text -> {name: value}, the samples of a labelled metric summed (e.g. bytes over cache tiers)
function parseMetrics(text) {
  const values = {};
  for (const line of text.split("\n")) {
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{.*\})?\s+(\S+)$/);
    if (match) values[match[1]] = (values[match[1]] ?? 0) + Number(match[3]);
  }
  return values;
}

async function pollMetrics() {
  const panel = $("server");
  try {
    const response = await fetch("/metrics", { headers: headers() });
    if (!response.ok) throw new Error(`${response.status}`);
    const m = parseMetrics(await response.text());
    $("srv-running").textContent = m.tnn_num_requests_running ?? "–";
    $("srv-waiting").textContent = m.tnn_num_requests_waiting ?? "–";
    $("srv-slots").textContent = `${m.tnn_state_slots_used ?? "–"} / ${m.tnn_state_slots_total ?? "–"}`;
    $("srv-state").textContent = formatBytes(m.tnn_state_bytes);
    const queried = m.tnn_prefix_cache_queries_total;
    $("srv-cache-box").hidden = queried === undefined; // a server without the prefix-state cache
    if (queried !== undefined) {
      const hits = m.tnn_prefix_cache_hits_total ?? 0;
      const share = queried > 0 ? ` (${Math.round((100 * hits) / queried)}%)` : "";
      $("srv-cache").textContent = `${hits} / ${queried} tokens${share} · ${formatBytes(m.tnn_prefix_cache_bytes)}`;
    }
    panel.classList.remove("stale");
    panel.title = "";
  } catch (error) {
    panel.classList.add("stale");
    panel.title = `no /metrics: ${error.message}`;
  }
}

// ---- API key prompt -----------------------------------------------------------------------------------------------

function askForKey(reason) {
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason;
  $("key-input").value = "";
  if (!dialog.open) dialog.showModal();
}

function onKeyDialogClose() {
  const dialog = $("key-dialog");
  if (dialog.returnValue === "save" && $("key-input").value) {
    sessionStorage.setItem(KEY_STORAGE, $("key-input").value.trim());
  } else if (dialog.returnValue === "forget") {
    sessionStorage.removeItem(KEY_STORAGE);
  } else {
    return;
  }
  $("key-input").value = "";
  loadModel();
  pollMetrics();
}

// ---- request parameters ---------------------------------------------------------------------------------------------

const NUMBER_FIELDS = ["temperature", "top_p", "top_k", "min_p", "max_tokens", "seed"];
// what an omitted field means on a server without a generation config (OpenAI's defaults; 0 = off)
const API_DEFAULTS = { temperature: 1, top_p: 1, top_k: "off", min_p: "off", max_tokens: "server's" };
const EXAMPLE_SCHEMA = {
  type: "object",
  properties: {
    speaker: { type: "string", maxLength: 24 },
    mood: { enum: ["merry", "sad", "wrathful"] },
    line: { type: "string", maxLength: 120 },
  },
  required: ["speaker", "mood", "line"],
  additionalProperties: false,
};

function fromEscapes(text) {
  return text.replace(/\\(n|t|\\)/g, (_, c) => ({ n: "\n", t: "\t", "\\": "\\" })[c]);
}

function toEscapes(text) {
  return text.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll("\t", "\\t");
}

// Grey placeholders: what an empty field gets (the model's generation config from /v1/models, else the API's)
function showDefaults(defaults) {
  for (const name of NUMBER_FIELDS.filter((n) => n !== "seed")) {
    $(name).placeholder = String(defaults[name] ?? API_DEFAULTS[name]);
  }
  $("stop").placeholder = defaults.stop?.length ? defaults.stop.map(toEscapes).join("\n") : "none";
}

// Values as typed (the server validates ranges and names the field); an empty field is left out (the default).
// Throws on what cannot be sent: an unreadable number, a schema that is not JSON.
function requestParams() {
  const params = {};
  for (const name of NUMBER_FIELDS) {
    const input = $(name);
    if (input.validity.badInput) throw new Error(`${name}: not a number`);
    if (input.value !== "") params[name] = Number(input.value);
  }
  const stop = $("stop")
    .value.split("\n")
    .filter((line) => line !== "")
    .map(fromEscapes);
  if (stop.length) params.stop = stop;
  if ($("json-mode").checked) {
    let schema;
    try {
      schema = JSON.parse($("schema").value);
    } catch (error) {
      throw new Error(`schema: not JSON (${error.message})`);
    }
    params.response_format = { type: "json_schema", json_schema: { name: "playground", schema, strict: true } };
  }
  return params;
}

// ---- transcript ---------------------------------------------------------------------------------------------------

function transcript() {
  return ui.transcripts[ui.mode];
}

function addEntry(role) {
  $("empty").hidden = true;
  const entry = $("entry-template").content.firstElementChild.cloneNode(true);
  entry.classList.add(role);
  entry.dataset.role = role;
  entry.querySelector(".role").textContent = role;
  transcript().append(entry);
  scrollToEnd(true);
  return entry;
}

// #transcript scrolls; the entries of each mode live in their own list inside it
function scrollToEnd(force = false) {
  const box = $("transcript");
  if (force || box.scrollHeight - box.scrollTop - box.clientHeight < 80) box.scrollTop = box.scrollHeight;
}

function showError(entry, error) {
  const box = entry.querySelector(".error");
  box.hidden = false;
  box.replaceChildren();
  const head = document.createElement("b");
  const info = error.info ?? {};
  head.textContent = error.status ? `${error.status}${info.type ? ` ${info.type}` : ""}` : info.type || "error";
  const message = document.createElement("span");
  message.className = "message";
  message.dataset.testid = "error-message";
  message.textContent = error.message;
  box.append(head, " ", message);
  const details = [];
  if (info.param) details.push(`param: ${info.param}`);
  if (info.code) details.push(`code: ${info.code}`);
  if (error.retryAfter) details.push(`retry after ${error.retryAfter} s`);
  if (details.length) {
    const small = document.createElement("small");
    small.textContent = details.join(" · ");
    small.dataset.testid = "error-details";
    box.append(small);
  }
  entry.classList.add("failed");
}

// Per-reply figures: {name: [label, shown text, raw value, tooltip]}
function showFigures(entry, figures) {
  const row = entry.querySelector(".figures");
  row.replaceChildren();
  for (const [name, [label, text, value, title]] of Object.entries(figures)) {
    const span = document.createElement("span");
    span.dataset.figure = name;
    span.dataset.value = value ?? "";
    span.title = title;
    const b = document.createElement("b");
    b.textContent = text;
    span.append(`${label} `, b);
    row.append(span);
  }
}

function isJson(text) {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

// ---- one streamed reply -------------------------------------------------------------------------------------------

class Reply {
  constructor(entry, textTarget, structured) {
    this.entry = entry;
    this.structured = structured; // a JSON-schema reply: say whether the text parses
    this.target = textTarget;
    this.controller = new AbortController();
    this.t0 = performance.now();
    this.tFirst = null;
    this.tLast = null;
    this.chunks = 0;
    this.text = "";
    this.usage = null;
    this.finish = null;
    this.stopped = false;
  }

  add(piece) {
    const now = performance.now();
    if (this.tFirst === null) this.tFirst = now;
    this.tLast = now;
    this.chunks += 1;
    this.text += piece;
    this.target.textContent = this.text;
    scrollToEnd();
  }

  figures() {
    const usage = this.usage;
    const tokens = usage ? usage.completion_tokens : this.chunks;
    const ttft = this.tFirst === null ? null : this.tFirst - this.t0;
    const span = this.tFirst === null ? 0 : (this.tLast - this.tFirst) / 1000;
    const rate = span > 0 && tokens > 1 ? (tokens - 1) / span : null;
    const cached = usage?.prompt_tokens_details?.cached_tokens;
    const exact = usage ? "" : "≈";
    const figures = {
      ttft: ["TTFT", ttft === null ? "–" : formatMs(ttft), ttft, "time to first token, as this page saw it"],
      rate: ["", rate === null ? "– tok/s" : `${exact}${rate.toFixed(0)} tok/s`, rate,
        "generated tokens per second after the first"],
      tokens: ["tokens", `${exact}${tokens}`, tokens, usage ? "completion tokens (usage)" : "streamed chunks so far"],
      prompt: ["prompt", usage ? `${usage.prompt_tokens}` : "–", usage?.prompt_tokens, "prompt tokens (usage)"],
      cached: ["cached", cached == null ? "–" : `${cached}`, cached,
        "prompt tokens whose state came from the prefix-state cache"],
      state: ["state", `${formatBytes(ui.stateBytes)}/seq`, ui.stateBytes,
        "recurrent state of one sequence: fixed, however long the text grows"],
      finish: ["finish", this.stopped ? "stopped" : this.finish ?? "…", this.stopped ? "stopped" : this.finish,
        "finish reason"],
    };
    if (this.structured && (this.finish || this.stopped)) {
      const valid = isJson(this.text);
      figures.json = ["JSON", valid ? "valid" : "invalid", String(valid), "whether the reply parses as JSON"];
    }
    return figures;
  }

  async stream(path, body, pieceOf) {
    try {
      const response = await api(path, { method: "POST", body: JSON.stringify(body), signal: this.controller.signal });
      for await (const event of sseEvents(response)) {
        if (event.error) throw new ApiError(null, event.error);
        if (event.usage) this.usage = event.usage;
        for (const choice of event.choices ?? []) {
          const piece = pieceOf(choice);
          if (piece) this.add(piece);
          if (choice.finish_reason) this.finish = choice.finish_reason;
        }
        showFigures(this.entry, this.figures());
      }
    } catch (error) {
      if (error.name === "AbortError") {
        this.stopped = true;
      } else if (error instanceof ApiError) {
        showError(this.entry, error);
      } else {
        showError(this.entry, { message: `cannot reach the server: ${error.message}`, info: { type: "network" } });
      }
    }
    const ok = !this.entry.classList.contains("failed");
    if (ok) showFigures(this.entry, this.figures());
    else this.entry.querySelector(".figures").replaceChildren();
    this.entry.classList.add("done");
    return ok;
  }
}

// ---- sending ------------------------------------------------------------------------------------------------------

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop-button").hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

async function send() {
  if (ui.run) return;
  const input = $("input");
  const text = input.value;
  if (!text.trim()) return;
  let params;
  try {
    params = requestParams();
  } catch (error) {
    const entry = addEntry("assistant");
    showError(entry, { message: error.message, info: { type: "this page" } });
    entry.classList.add("done");
    return;
  }
  const common = { ...params, stream: true, stream_options: { include_usage: true } };
  if (ui.model) common.model = ui.model;
  input.value = "";

  let entry;
  let reply;
  let path;
  let body;
  let userEntry = null;
  if (ui.mode === "chat") {
    userEntry = addEntry("user");
    userEntry.querySelector(".text").textContent = text;
    ui.history.push({ role: "user", content: text });
    const system = $("system").value.trim();
    const messages = system ? [{ role: "system", content: system }, ...ui.history] : [...ui.history];
    entry = addEntry("assistant");
    reply = new Reply(entry, entry.querySelector(".text"), "response_format" in params);
    path = "/v1/chat/completions";
    body = { ...common, messages };
  } else {
    entry = addEntry("completion");
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = text;
    const generated = document.createElement("span");
    generated.className = "generated";
    entry.querySelector(".text").append(prompt, generated);
    reply = new Reply(entry, generated, "response_format" in params);
    path = "/v1/completions";
    body = { ...common, prompt: text };
  }

  ui.run = reply;
  setBusy(true);
  pollMetrics();
  const pieceOf = ui.mode === "chat" ? (choice) => choice.delta?.content : (choice) => choice.text;
  const ok = await reply.stream(path, body, pieceOf);
  ui.run = null;
  setBusy(false);
  if (userEntry) {
    if (ok) {
      ui.history.push({ role: "assistant", content: reply.text }); // a stopped reply keeps what was shown
    } else {
      ui.history.pop(); // not part of the conversation: fix the settings and send it again
      userEntry.classList.add("unsent");
      if (!input.value) input.value = text;
    }
  } else if (!ok && !input.value) {
    input.value = text;
  }
  pollMetrics();
  input.focus();
}

function stop() {
  if (ui.run) ui.run.controller.abort(); // the server sees the disconnect and frees the slot
}

function clearTranscript() {
  stop();
  if (ui.mode === "chat") ui.history = [];
  transcript().replaceChildren();
  $("empty").hidden = false;
}

function setMode(mode) {
  ui.mode = mode;
  for (const button of document.querySelectorAll(".mode")) {
    button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
  }
  for (const [name, box] of Object.entries(ui.transcripts)) box.hidden = name !== mode;
  document.body.dataset.mode = mode;
  $("input").placeholder = mode === "chat" ? "Message" : "Prompt (the model continues it)";
  $("empty").hidden = transcript().childElementCount > 0;
}

// ---- wiring -------------------------------------------------------------------------------------------------------

function init() {
  const root = $("transcript");
  for (const mode of ["chat", "completion"]) {
    const box = document.createElement("div");
    box.className = "entries";
    box.dataset.mode = mode;
    root.append(box);
    ui.transcripts[mode] = box;
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.run) {
      event.preventDefault();
      stop();
    }
  });
  $("stop-button").addEventListener("click", stop);
  $("clear").addEventListener("click", clearTranscript);
  for (const button of document.querySelectorAll(".mode")) {
    button.addEventListener("click", () => setMode(button.dataset.mode));
  }
  $("key-button").addEventListener("click", () => askForKey(apiKey() ? "Change or forget the key." : ""));
  $("key-dialog").addEventListener("close", onKeyDialogClose);
  if (window.matchMedia(PHONE_WIDTH).matches) $("settings").open = false;
  $("schema").value = JSON.stringify(EXAMPLE_SCHEMA, null, 2);
  $("json-mode").addEventListener("change", () => {
    document.body.classList.toggle("json", $("json-mode").checked);
  });
  showDefaults({});

  setMode("chat");
  loadModel();
  pollMetrics();
  setInterval(() => {
    if (!document.hidden) pollMetrics();
  }, METRICS_EVERY_MS);
  $("input").focus();
}

init();
