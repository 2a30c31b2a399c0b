// The station's page: checks a pass, records arrivals and departures, shows the live state.
"use strict";
// The page's token is in its HttpOnly cookie (set by the first visit with ?token=…): every request
// of this page, same-origin, carries it; the script never sees it.
const $ = (sel) => document.querySelector(sel);
let state = null, skew = 0, lastCheck = null;
let freshness = null, freshnessAt = 0;  // the views' ages as the station last told them, and when (this page's clock)

async function api(path, init = {}) {
  const r = await fetch(path, { ...init, credentials: "same-origin" });
  const text = await r.text();
  let body;
  try { body = JSON.parse(text); } catch { body = { error: text || r.statusText }; }
  return { ok: r.ok, body };
}
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) k === "class" ? (e.className = v) : e.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const here = () => $("#checkpoint").value;
const several = () => state && Object.keys(state.checkpoints).length > 1;
const stationNow = () => new Date(Date.now() + skew);
const hhmm = (iso) => new Date(iso).toISOString().slice(5, 16).replace("T", " ");
function clockText(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// --- live state ---------------------------------------------------------------------------------
function render(s) {
  state = s;
  skew = new Date(s.now) - Date.now();
  $("#target").textContent = Math.round(s.dwell_target / 60);
  const select = $("#checkpoint");
  if (select.options.length !== Object.keys(s.checkpoints).length) {
    select.replaceChildren(...Object.entries(s.checkpoints).map(([id, name]) => el("option", { value: id }, `${id} · ${name}`)));
  } else {
    for (const o of select.options) o.textContent = `${o.value} · ${s.checkpoints[o.value]}`;
  }
  const link = $("#link");
  link.className = "link " + (s.online ? "online" : "offline");
  link.textContent = (s.online ? "在线 online" : "离线 offline") + `, ${s.queued} 条扫描待发送 scans queued`;
  link.title = s.error || "";
  renderFreshness(s.freshness);
  renderPresent(s.present);
  renderArrivals(s.arrivals);
  renderRecent(s.recent);
  renderSetAside(s.set_aside || []);
}
// How old the station's view of decisions, statuses and keys is (told every few seconds; counted on
// here between): a view past its limit is marked, and every check then says so beside its verdict.
const VIEW_NAMES = { decisions: "通行证 decisions", statuses: "状态 statuses", keys: "密钥 keys" };
function renderFreshness(f) {
  if (!f) return;
  freshness = f;
  freshnessAt = Date.now();
  tickFreshness();
}
function ageText(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}
function tickFreshness() {
  if (!freshness) return;
  const since = (Date.now() - freshnessAt) / 1000;
  $("#freshness").replaceChildren(...Object.entries(VIEW_NAMES).map(([view, name]) => {
    const v = freshness[view];
    const age = v.age_seconds === null ? null : v.age_seconds + since;
    const stale = age === null || age > v.stale_after_seconds;
    return el("span", { class: stale ? "stale" : "", "data-view": view },
      `${name} ${age === null ? "从未同步 never" : ageText(age)}`);
  }));
}
function renderSetAside(items) {
  $("#set-aside-panel").hidden = items.length === 0;
  $("#set-aside").replaceChildren(...items.map((r) => el("li", { "data-scan": r.scan_id },
    `${hhmm(r.scanned_at)} ${r.kind === "arrival" ? "到达 arrival" : "离开 departure"} `, el("b", {}, r.plate), " ",
    el("small", { class: "reason" }, r.reason))));
}
function renderPresent(present) {
  $("#present").replaceChildren(...present.map((p) => {
    const button = el("button", { class: "depart secondary" }, "离开 Departure");
    button.onclick = () => scan("departure", { pass_id: p.pass_id, checkpoint_id: p.checkpoint_id });
    return el("li", { "data-pass": p.pass_id, "data-arrived": p.scanned_at },
      el("span", { class: "timer" }, "0:00"),
      el("span", { class: "who" }, el("b", {}, p.plate), " ", el("small", {}, `${p.pass_id} · ${p.checkpoint_id}`)), button);
  }));
  if (!present.length) $("#present").append(el("li", { class: "muted" }, "暂无车辆 no vehicle here"));
  tick();
}
function renderArrivals(arrivals) {
  $("#arrivals tbody").replaceChildren(...arrivals.slice(0, 40).map((a) => el("tr", { "data-pass": a.pass_id },
    el("td", { class: "eta" }, hhmm(a.eta), several() ? el("small", {}, " " + a.checkpoint_id) : null),
    el("td", {}, el("b", {}, a.plate)),
    el("td", { class: "cls " + (a.priority || "") }, a.priority || "?", a.toll_exempt ? " 免费" : ""),
    el("td", {}, a.origin || ""), el("td", {}, a.destination || ""))));
  $("#arrivals-empty").hidden = arrivals.length > 0;
}
function renderRecent(recent) {
  $("#recent").replaceChildren(...recent.map((r) => {
    const answer = r.answer ? ` → ${r.answer.status}${r.answer.reason ? " (" + r.answer.reason + ")" : ""}` : "";
    return el("li", { "data-scan": r.scan_id }, `${hhmm(r.scanned_at)} ${r.kind === "arrival" ? "到达 arrival" : "离开 departure"} `,
      el("b", {}, r.plate), " ", sentMark(r), answer);
  }));
}
function sentMark(r) {
  if (r.set_aside) return el("span", { class: "set-aside", title: r.set_aside }, "已搁置 set aside");
  return el("span", { class: r.sent ? "sent" : "queued" }, r.sent ? "已发送 sent" : "待发送 queued");
}
function tick() {
  $("#clock").textContent = stationNow().toISOString().slice(0, 19).replace("T", " ") + "Z";
  for (const li of document.querySelectorAll("#present li[data-arrived]")) {
    const seconds = (stationNow() - new Date(li.dataset.arrived)) / 1000;
    const timer = li.querySelector(".timer");
    timer.textContent = clockText(seconds);
    timer.classList.toggle("over", state && seconds > state.dwell_target);
  }
}
setInterval(() => { tick(); tickFreshness(); }, 1000);

function connect() {
  const source = new EventSource("api/events");
  source.addEventListener("state", (e) => render(JSON.parse(e.data)));
  source.addEventListener("freshness", (e) => renderFreshness(JSON.parse(e.data)));
  source.onerror = () => { $("#link").className = "link offline"; $("#link").textContent = "页面与检查站断开 page lost the station"; };
}

// --- check --------------------------------------------------------------------------------------
$("#check-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  // JSON, or (a QR photo, and no token typed) multipart: the only bodies the station takes.
  const fields = { checkpoint_id: here() };
  for (const name of ["token", "plate", "driver_id"]) if ($("#" + name).value.trim()) fields[name] = $("#" + name).value.trim();
  let init;
  if ($("#photo").files.length && !fields.token) {
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) form.append(k, v);
    form.append("photo", $("#photo").files[0]);
    init = { method: "POST", body: form };
  } else {
    init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(fields) };
  }
  // The last vehicle's answer goes at once: an officer never reads it for the next one.
  const card = $("#card");
  card.className = "card empty";
  card.replaceChildren("核验中 checking…");
  const { ok, body } = await api("api/check", init);
  $("#form-error").hidden = ok;
  if (!ok) { $("#form-error").textContent = body.error; card.replaceChildren("未核验 not checked"); return; }
  lastCheck = body;
  renderCard(body);
});
const VERDICTS = { green: ["放行", "CLEARED"], check: ["待核验", "CHECK ID · CALL IN"], grey: ["不予放行", "NOT CLEARED"] };
function renderCard(c) {
  const card = $("#card");
  // green: a token verified; check (待核验): a listed plate with no QR shown; grey: anything else.
  const verdict = c.verdict || (c.green ? "green" : "grey");
  card.className = "card " + verdict;
  const p = c.pass;
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "车牌 Plate"), el("dd", { class: "big-plate" }, c.plate || "—"),
    el("dt", {}, "通行证号 Pass"), el("dd", {}, c.pass_id || "—"));
  if (p) {
    facts.append(el("dt", {}, "类别 Class"), el("dd", {}, el("span", { class: "badge" }, p.priority || "?"), p.class_name || "",
                   p.toll_exempt ? el("span", { class: "badge toll" }, "三不一优先 · 免收通行费 toll-exempt") : null),
                 el("dt", {}, "有效期 Valid"), el("dd", {}, `${hhmm(p.valid_from)} → ${hhmm(p.valid_until)} UTC`),
                 el("dt", {}, "起讫 From → to"), el("dd", {}, `${p.origin} → ${p.destination}`),
                 el("dt", {}, "状态 Status"), el("dd", {}, p.status));
  }
  const route = p ? el("ol", { class: "route" }, ...p.checkpoints.map((cp) =>
    el("li", { class: cp.here ? "here" : "", title: cp.checkpoint_id }, cp.name))) : null;
  const actions = el("div", { class: "actions" });
  if (c.pass_id && c.plate) {
    const arrive = el("button", { id: "arrive" }, "到达 Arrival");
    arrive.onclick = () => scan("arrival", { pass_id: c.pass_id, plate: c.plate, token: c.token, checkpoint_id: c.checkpoint_id });
    actions.append(arrive);
  }
  // A view past its limit: the verdict stands, and the officer is told to call in to confirm it.
  const w = c.stale_warning;
  card.replaceChildren(
    ...(w ? [el("p", { id: "stale-warning", class: "stale-warning" }, "⚠ " + w.text_zh, el("small", {}, w.text_en))] : []),
    el("div", { class: "verdict" }, ...VERDICTS[verdict].map((t, i) => i ? el("small", {}, t) : t)),
    el("p", { id: "reason-zh", class: "reason-zh" }, c.text_zh),
    el("p", { id: "reason-en", class: "reason-en" }, c.text_en),
    c.driver ? el("p", { id: "driver", class: "driver " + c.driver }, `${c.driver_zh} · ${c.driver_en}`) : null,
    facts, route, actions);
}

// --- camera -------------------------------------------------------------------------------------
// The QR read live in the browser: the browser's BarcodeDetector where it reads QR codes (Android,
// macOS, ChromeOS), else ZXing built to WebAssembly (zxing-wasm, vendored: vendor/zxing/), its .wasm
// loaded from this station, never a CDN. A code read goes into the token field and is checked as a
// typed one; the camera then stops. getUserMedia needs a secure context: https, or this machine's own
// address (http://127.0.0.1, localhost).
const SCAN_EVERY_MS = 200;  // at most 5 frames a second: enough for a QR held still, light on a tablet
let camera = null;  // {stream, reader, timer} while the camera runs
const canvas = document.createElement("canvas");

async function qrReader() {
  if ("BarcodeDetector" in window) {
    try {
      if ((await BarcodeDetector.getSupportedFormats()).includes("qr_code")) {
        const detector = new BarcodeDetector({ formats: ["qr_code"] });
        document.body.dataset.reader = "BarcodeDetector";
        return async (image) => { const found = await detector.detect(image); return found.length ? found[0].rawValue : null; };
      }
    } catch { /* no detector here: ZXing below */ }
  }
  if (!window.ZXingWASM) throw new Error("未安装二维码识别组件 the QR reader is not installed (make env)");
  const wasm = new URL("vendor/zxing/zxing_reader.wasm", document.baseURI).href;
  ZXingWASM.prepareZXingModule({ overrides: { locateFile: (path, prefix) => (path.endsWith(".wasm") ? wasm : prefix + path) } });
  const options = { formats: ["QRCode"], maxNumberOfSymbols: 1, tryHarder: true };
  document.body.dataset.reader = "zxing-wasm";
  return async (image) => {
    const found = await ZXingWASM.readBarcodes(image, options);
    return found.length && found[0].isValid ? found[0].text : null;
  };
}
function cameraShown(on, status) {
  document.body.dataset.camera = on ? "on" : "off";
  $("#camera").hidden = !on;
  $("#camera-start").hidden = on;
  $("#camera-stop").hidden = !on;
  $("#camera-status").textContent = status || "";
}
async function startCamera() {
  if (camera) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    cameraShown(false, "摄像头需要 https 或本机地址 the camera needs https or this machine's own address");
    return;
  }
  try {
    const reader = await qrReader();
    const stream = await navigator.mediaDevices.getUserMedia(
      { video: { facingMode: "environment", width: { ideal: 1920 }, height: { ideal: 1080 } }, audio: false });
    camera = { stream, reader, timer: null };
    $("#camera").srcObject = stream;
    await $("#camera").play();
    cameraShown(true, "对准二维码 point the camera at the QR");
    camera.timer = setTimeout(scanFrame, SCAN_EVERY_MS);
  } catch (err) {
    stopCamera(`摄像头不可用 no camera: ${err.message || err}`);
  }
}
function stopCamera(status) {
  if (camera) {
    clearTimeout(camera.timer);
    for (const track of camera.stream.getTracks()) track.stop();
    $("#camera").srcObject = null;
    camera = null;
  }
  cameraShown(false, status);
}
async function scanFrame() {
  const video = $("#camera"), running = camera;
  if (!running) return;
  let text = null;
  if (video.videoWidth) {
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(video, 0, 0);
    try { text = await running.reader(context.getImageData(0, 0, canvas.width, canvas.height)); } catch { text = null; }
  }
  if (camera !== running) return;  // stopped meanwhile
  if (!text) { running.timer = setTimeout(scanFrame, SCAN_EVERY_MS); return; }
  stopCamera("已读取二维码 QR read");
  $("#token").value = text;
  $("#photo").value = "";
  $("#check-form").requestSubmit();
}
$("#camera-start").addEventListener("click", startCamera);
$("#camera-stop").addEventListener("click", () => stopCamera());
cameraShown(false);

// --- arrival / departure ---------------------------------------------------------------------------
async function scan(kind, fields) {
  const { ok, body } = await api("api/scan", { method: "POST", headers: { "Content-Type": "application/json" },
                                               body: JSON.stringify({ kind, ...fields }) });
  if (!ok) { $("#form-error").hidden = false; $("#form-error").textContent = body.error; return; }
  if (kind === "arrival") { const b = $("#arrive"); if (b) { b.disabled = true; b.textContent = "已登记到达 arrival recorded"; } }
  if (kind === "departure") {
    const d = $("#departed");
    d.hidden = false;
    d.className = "departed" + (body.dwell_exceeded ? " over" : "");
    d.textContent = body.dwell_seconds === null ? `${body.plate} 已离开 departed`
      : `${body.plate} 已离开 departed · 停留 dwell ${clockText(body.dwell_seconds)}` + (body.dwell_exceeded ? " · 超过15分钟目标 over the 15-minute target" : "");
    d.dataset.dwell = body.dwell_seconds;
  }
}
api("api/state").then(({ body }) => render(body));
connect();
