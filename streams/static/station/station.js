// The station's page: checks a pass, records arrivals and departures, shows the live state.
"use strict";
// The page's token is in its HttpOnly cookie (set by the first visit with ?token=…): every request
// of this page, same-origin, carries it; the script never sees it.
const $ = (sel) => document.querySelector(sel);
let state = null, skew = 0, lastCheck = null;

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
  renderPresent(s.present);
  renderArrivals(s.arrivals);
  renderRecent(s.recent);
  renderSetAside(s.set_aside || []);
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
setInterval(tick, 1000);

function connect() {
  const source = new EventSource("api/events");
  source.addEventListener("state", (e) => render(JSON.parse(e.data)));
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
  card.replaceChildren(
    el("div", { class: "verdict" }, ...VERDICTS[verdict].map((t, i) => i ? el("small", {}, t) : t)),
    el("p", { id: "reason-zh", class: "reason-zh" }, c.text_zh),
    el("p", { id: "reason-en", class: "reason-en" }, c.text_en),
    c.driver ? el("p", { id: "driver", class: "driver " + c.driver }, `${c.driver_zh} · ${c.driver_en}`) : null,
    facts, route, actions);
}

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
