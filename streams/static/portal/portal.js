// The firms' portal (streams/gateway/portal.py): one page over the gateway's own API, Chinese and English.
// The API key is sent once, to open a session; the session is an HttpOnly cookie the script never sees.
// Every request carries X-GC-Portal: 1, which the gateway requires of a change made by cookie (CSRF).
"use strict";

const T = {
  zh: {
    title: "绿色通道 · 企业服务", nav_list: "我的申请", nav_apply: "申请通行证", sign_out: "退出", lang: "English",
    signin_title: "企业登录", sign_in: "登录", api_key: "API 密钥",
    signin_hint: "请输入运营方为贵企业签发的 API 密钥（gck_…）。密钥只用于换取本次会话，浏览器不会保存它。",
    list_title: "我的申请与通行证", list_empty: "还没有申请。", col_shipment: "运单号", col_accepted: "提交时间",
    col_status: "状态", col_pass: "通行证", col_reasons: "说明", apply_title: "申请通行证",
    sec_shipment: "运单", sec_parties: "托运人与收货人", sec_route: "起讫地", sec_cargo: "货物", sec_vehicle: "车辆与司机",
    f_shipment_id: "运单号", f_trip: "行程", trip_single: "单程", trip_multi: "往返多次", f_departure: "出发时间",
    f_shipper_code: "托运人统一社会信用代码", f_shipper_name: "托运人名称", f_consignee_code: "收货人统一社会信用代码",
    f_consignee_name: "收货人名称", f_origin: "起运地（区县）", f_destination: "目的地（区县）", ph_place: "如：洪山区",
    f_hs_code: "HS 编码", ph_cargo: "编码或名称，如：口罩", f_description: "品名", f_quantity: "数量", f_unit: "单位",
    ph_unit: "箱", f_plate: "车牌号", f_vehicle_type: "车型", ph_vehicle: "厢式货车", f_driver_name: "司机姓名",
    f_driver_phone: "司机手机号", f_driver_id: "司机身份证号", submit: "提交申请", submitting: "提交中…",
    binding_hint: "身份证号只在本机浏览器中加盐计算摘要后绑定到通行证，号码本身不会发送。",
    id_invalid: "身份证号无效：{0}。申请未提交。", id_shape: "应为 17 位数字加 1 位数字或 X", id_birth: "出生日期不存在",
    id_check: "校验位应为 {0}",
    binding_insecure: "此连接不安全（非 HTTPS），浏览器无法在本机计算摘要：身份证号将发送给网关，由网关处理。",
    driver_link: "司机手机通行证", driver_link_hint: "把此链接或二维码交给司机：手机上显示通行证二维码、实时状态、路线与各检查站等待时间，离线也能打开。持有链接者即可查看此通行证，请勿公开。",
    pass_title: "通行证", print_pdf: "打印 PDF", print_png: "下载图片", checkpoints: "检查站与预计到达时间",
    col_checkpoint: "检查站", col_eta: "预计到达", history: "状态记录", view_pass: "查看",
    t_plate: "车牌", t_priority: "优先级", t_status: "状态", t_valid: "有效期", t_trip: "行程", t_toll: "通行费",
    t_toll_yes: "免收", t_toll_no: "照常收取", t_distance: "里程", t_eta: "预计到达", t_shipment: "运单号", t_issuer: "签发地",
    submitted: "已提交：{0}，等待审核结果…", decided_dead_letter: "{0} 无法受理：系统无法处理该申请，不会有审核结果（原因见列表）", decided_approved: "{0} 已批准，通行证 {1}", decided_rejected: "{0} 未获批准",
    live_sse: "实时", live_poll: "轮询", live_off: "离线", signed_out: "已退出登录。", field: "字段",
    origin_map: "起点", destination_map: "终点",
    status: {pending: "审核中", approved: "已批准", rejected: "未批准", dead_letter: "无法受理", issued: "已签发", at_checkpoint: "在检查站",
             in_transit: "在途", held: "被拦停", delivered: "已送达", rerouted: "已改道", suspended: "已暂停",
             revoked: "已吊销", expired: "已过期"},
    errors: {
      unauthorized: "密钥无效或已被吊销，请重新登录。", not_acting_for: "贵企业未登记为该托运人承运：请联系运营方添加（greenchannel firms acts-for）。",
      invalid: "申请内容有误，请检查标出的字段。", conflict: "该运单号已用于另一份不同的申请：请换一个运单号。",
      rate_limited: "请求过于频繁，请 {0} 秒后再试。", too_large: "申请内容过大。", unavailable: "通道暂时无法接收申请，请稍后再次提交（不会重复）。",
      too_long: "有字段超出长度或条数上限，请检查标出的字段。", too_deep: "申请内容嵌套过深。", incomplete: "申请未完整送达，请重新提交。",
      not_json: "申请格式错误。", not_found: "未找到（或不属于贵企业）。", forbidden: "请求被拒绝：只能从本门户页面操作。",
      network: "无法连接网关，请检查网络。", other: "出错了：{0}",
    },
    reasons: {
      not_in_catalog: "货物不在任何优先类别目录中", no_key_enterprise: "该类货物要求托运人或收货人列入重点企业名单，二者均未列入",
      high_risk_region: "起点或终点为高风险地区，该类货物不予放行", no_safe_route: "起讫地之间的所有路线均经过高风险地区",
      no_signing_key: "暂无可签发该地通行证的密钥，请换一个运单号重新提交", serials_exhausted: "签发地通行证编号已用完，请换一个运单号重新提交",
      origin_unresolved: "无法识别起运地", destination_unresolved: "无法识别目的地",
      origin_not_county: "起运地须精确到区县", destination_not_county: "目的地须精确到区县",
      bad_credit_code: "统一社会信用代码无效", bad_hs_code: "HS 编码无效", bad_id_number: "身份证号无效",
      bad_phone: "手机号无效", bad_plate: "车牌号无效", invalid: "字段无效", missing: "缺少必填字段",
      too_long: "文字过长", too_many_lines: "货物行数过多", key_enterprise: "已列入重点企业名单",
      high_risk_region_allowed: "高风险地区，该类货物准予通行", medium_risk_short_validity: "中风险地区，有效期缩短",
      class_P0: "P0 医疗防护物资", class_P1: "P1 民生必需品与春耕物资", class_P2: "P2 重点产业链物资", class_P3: "P3 重大项目物资",
    },
  },
  en: {
    title: "Green Channel · For firms", nav_list: "My requests", nav_apply: "Apply for a pass", sign_out: "Sign out", lang: "中文",
    signin_title: "Sign in", sign_in: "Sign in", api_key: "API key",
    signin_hint: "Enter the API key the operators issued to your firm (gck_…). It only opens this session; the browser does not keep it.",
    list_title: "My requests and passes", list_empty: "No requests yet.", col_shipment: "Shipment", col_accepted: "Sent",
    col_status: "Status", col_pass: "Pass", col_reasons: "Notes", apply_title: "Apply for a pass",
    sec_shipment: "Shipment", sec_parties: "Shipper and consignee", sec_route: "From and to", sec_cargo: "Cargo",
    sec_vehicle: "Vehicle and driver", f_shipment_id: "Shipment id", f_trip: "Trip", trip_single: "Single",
    trip_multi: "Multiple", f_departure: "Departure", f_shipper_code: "Shipper's credit code", f_shipper_name: "Shipper's name",
    f_consignee_code: "Consignee's credit code", f_consignee_name: "Consignee's name", f_origin: "Origin (county)",
    f_destination: "Destination (county)", ph_place: "e.g. 洪山区", f_hs_code: "HS code", ph_cargo: "code or name, e.g. masks",
    f_description: "Description", f_quantity: "Quantity", f_unit: "Unit", ph_unit: "boxes", f_plate: "Plate",
    f_vehicle_type: "Vehicle type", ph_vehicle: "van", f_driver_name: "Driver's name", f_driver_phone: "Driver's mobile",
    f_driver_id: "Driver's ID number", submit: "Send the request", submitting: "Sending…",
    binding_hint: "The ID number is bound to the pass as a salted hash computed in this browser; the number itself is not sent.",
    id_invalid: "The driver's ID number is not valid: {0}. Nothing was sent.", id_shape: "17 digits and a digit or X",
    id_birth: "its date of birth does not exist", id_check: "its check digit should be {0}",
    binding_insecure: "This connection is not secure (not HTTPS), so the browser cannot hash here: the ID number goes to the gateway, which binds it.",
    driver_link: "The pass on the driver's phone", driver_link_hint: "Hand the driver this link or QR: the pass's QR, its status live, the route and the wait at each checkpoint, on a phone, offline too. Whoever has the link can see this pass: do not publish it.",
    pass_title: "Pass", print_pdf: "Print (PDF)", print_png: "Image (PNG)", checkpoints: "Checkpoints and ETAs",
    col_checkpoint: "Checkpoint", col_eta: "ETA", history: "Status history", view_pass: "Open",
    t_plate: "Plate", t_priority: "Priority", t_status: "Status", t_valid: "Valid", t_trip: "Trip", t_toll: "Tolls",
    t_toll_yes: "exempt", t_toll_no: "payable", t_distance: "Distance", t_eta: "Arrival", t_shipment: "Shipment", t_issuer: "Issued at",
    submitted: "Sent: {0}. Waiting for the decision…", decided_dead_letter: "{0} was not taken: the channel could not handle it and no decision will come (the reason is in the list)", decided_approved: "{0} approved: pass {1}", decided_rejected: "{0} not approved",
    live_sse: "live", live_poll: "polling", live_off: "offline", signed_out: "Signed out.", field: "field",
    origin_map: "origin", destination_map: "destination",
    status: {pending: "pending", approved: "approved", rejected: "rejected", dead_letter: "not taken", issued: "issued", at_checkpoint: "at a checkpoint",
             in_transit: "in transit", held: "held", delivered: "delivered", rerouted: "rerouted", suspended: "suspended",
             revoked: "revoked", expired: "expired"},
    errors: {
      unauthorized: "The key is unknown or revoked: sign in again.", not_acting_for: "Your firm is not registered to act for this shipper: ask the operators to add it (greenchannel firms acts-for).",
      invalid: "The request is not valid: see the marked fields.", conflict: "This shipment id was used for a different request: choose another id.",
      rate_limited: "Too many requests: try again in {0} s.", too_large: "The request is too large.",
      unavailable: "The channel cannot take the request now: send it again shortly (it will not be doubled).",
      too_long: "A field passes its length or count limit: see the marked fields.", too_deep: "The request nests too deep.",
      incomplete: "The request did not arrive whole: send it again.",
      not_json: "The request is malformed.", not_found: "Not found (or not your firm's).", forbidden: "Refused: only this portal's own page may do that.",
      network: "The gateway cannot be reached: check the connection.", other: "Something went wrong: {0}",
    },
    reasons: {
      not_in_catalog: "the cargo is in no priority class of the catalog", no_key_enterprise: "this class needs the shipper or the consignee on the key-enterprise list; neither is",
      high_risk_region: "the origin or destination is a high-risk region, closed to this class", no_safe_route: "every route between origin and destination crosses a high-risk region",
      no_signing_key: "no key may issue passes there now: send again under another shipment id", serials_exhausted: "the issuer has no pass number left: send again under another shipment id",
      origin_unresolved: "the origin could not be located", destination_unresolved: "the destination could not be located",
      origin_not_county: "the origin must be a county", destination_not_county: "the destination must be a county",
      bad_credit_code: "not a valid credit code", bad_hs_code: "not a valid HS code", bad_id_number: "not a valid ID number",
      bad_phone: "not a valid mobile number", bad_plate: "not a valid plate", invalid: "not valid", missing: "missing",
      too_long: "too long", too_many_lines: "too many cargo lines", key_enterprise: "on the key-enterprise list",
      high_risk_region_allowed: "a high-risk region, open to this class", medium_risk_short_validity: "a medium-risk region: shorter validity",
      class_P0: "P0 medical protective supplies", class_P1: "P1 livelihood necessities, spring planting", class_P2: "P2 key industrial chains", class_P3: "P3 major projects",
    },
  },
};

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const portal = window.portal = {lang: localStorage.getItem("gc-portal-lang") === "en" ? "en" : "zh", firm: null,
                                live: "off", requests: [], places: {}, events: null, poller: null, known: {}};

function t(key, ...args) {
  const path = key.split(".");
  let v = T[portal.lang];
  for (const p of path) v = v == null ? undefined : v[p];
  if (v == null) return null;
  return String(v).replace(/\{(\d)\}/g, (_, i) => args[+i] ?? "");
}

function translate() {
  document.documentElement.lang = portal.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-ph]").forEach((el) => { el.placeholder = t(el.dataset.i18nPh); });
  $("#lang").textContent = t("lang");
  paintLive();
  paintFlash();
}

// --- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status; this.body = body;
  }
}

async function api(path, opts = {}) {
  const headers = {"X-GC-Portal": "1", ...(opts.body ? {"Content-Type": "application/json"} : {})};
  let r;
  try {
    r = await fetch(path, {method: opts.method || "GET", headers, credentials: "same-origin",
                           body: opts.body ? JSON.stringify(opts.body) : undefined});
  } catch (e) {
    throw new ApiError(0, {error: "network", message: String(e)});
  }
  if (r.status === 204) return null;
  const body = await r.json().catch(() => ({error: "other", message: `HTTP ${r.status}`}));
  if (!r.ok) {
    if (r.status === 401 && path !== "/v1/session") signedOut();
    throw new ApiError(r.status, {...body, retryAfter: r.headers.get("Retry-After")});
  }
  return body;
}

// A gateway error in the page's language: the code's sentence, the server's words as the detail.
function explain(err) {
  const body = err.body || {error: "other", message: String(err)};
  const said = t(`errors.${body.error}`, body.retryAfter || "");
  return {text: said || t("errors.other", body.message), detail: said ? body.message : "", fields: body.fields || []};
}

// A worker's reason (code + text) in the page's language, its own text kept as the detail.
function reasonText(r) {
  const named = t(`reasons.${r.code}`);
  return named ? `${named}${r.field ? ` (${r.field})` : ""}` : r.text;
}

// A message at the top: a key of T and its arguments (said again in the other language on a switch),
// or a text as it is (a server's, already explained).
function flash(key, args = [], kind = "info") {
  portal.flashed = key ? {key, args, kind} : null;
  paintFlash();
}

function flashError(e) {
  const b = e.body || {};
  if (t(`errors.${b.error}`) != null) flash(`errors.${b.error}`, [b.retryAfter || ""], "error");
  else flash("errors.other", [b.message || String(e)], "error");
}

function paintFlash() {
  const el = $("#flash"), f = portal.flashed;
  el.hidden = !f;
  if (!f) return;
  el.textContent = f.key.startsWith("=") ? f.key.slice(1) : t(f.key, ...f.args);
  el.className = f.kind;
}

// --- sign in and out ------------------------------------------------------------------------------

async function signIn(ev) {
  ev.preventDefault();
  const input = $("#key"), error = $("#signin-error");
  error.hidden = true;
  try {
    portal.firm = await api("/v1/session", {method: "POST", body: {key: input.value.trim()}});
    input.value = "";  // the key is gone from the page: the cookie stands for it now
    started();
  } catch (e) {
    const x = explain(e);
    error.textContent = x.text; error.hidden = false;
  }
}

async function signOut() {
  await api("/v1/session", {method: "DELETE"}).catch(() => null);
  signedOut();
  flash("signed_out");
}

function signedOut() {
  portal.firm = null;
  stopLive();
  $("#firm").textContent = "";
  $("#nav").hidden = $("#signout").hidden = true;
  show("signin");
}

function started() {
  $("#firm").textContent = `${portal.firm.name} (${portal.firm.firm_id})`;
  $("#nav").hidden = $("#signout").hidden = false;
  flash(null);
  fillShippers();
  startLive();
  route();
}

// --- views ----------------------------------------------------------------------------------------

function show(name) {
  for (const v of ["signin", "list", "apply", "pass"]) $(`#view-${v}`).hidden = v !== name;
  portal.view = name;
}

function route() {
  if (!portal.firm) return show("signin");
  const hash = location.hash || "#/";
  const pass = hash.match(/^#\/pass\/([0-9]{1,12})$/);
  if (pass) { show("pass"); return loadPass(pass[1]); }
  if (hash === "#/apply") { show("apply"); return prepareForm(); }
  show("list");
  paintRequests();  // at once, in the page's language; then the gateway's view
  return loadRequests();
}

// Times in the browser's own zone, one unambiguous shape in both languages: 2026-12-07 21:44.
function fmtTime(s) {
  if (!s) return "—";
  const d = new Date(s), p = (n) => String(n).padStart(2, "0");
  if (isNaN(d)) return s;
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}
const badge = (status) => `<span class="badge ${esc(status)}">${esc(t(`status.${status}`) || status)}</span>`;

async function loadRequests() {
  const body = await api("/v1/requests?limit=100").catch((e) => { flashError(e); return null; });
  if (!body) return;
  for (const r of body.requests) announce(r);
  portal.requests = body.requests;
  paintRequests();
}

function paintRequests() {
  if (portal.view !== "list") return;
  const rows = portal.requests.map((r) => {
    const d = r.decision;
    const pass = d && d.pass_id ? `<a href="#/pass/${esc(d.pass_id)}" class="pass-link">${esc(d.pass_id)}</a>${
      r.pass_status ? ` ${badge(r.pass_status)}` : ""}` : "—";
    const notes = d ? d.reasons.filter((x) => d.decision !== "approved" || x.code.startsWith("class_"))
      .map((x) => `<li title="${esc(x.text)}">${esc(reasonText(x))}</li>`).join("")
      : r.error ? `<li>${esc(r.error)}</li>` : "";
    return `<tr data-shipment="${esc(r.shipment_id)}" data-status="${esc(r.status)}" data-pass-status="${esc(r.pass_status || "")}">
      <td>${esc(r.shipment_id)}</td><td>${esc(fmtTime(r.accepted_at))}</td><td>${badge(r.status)}${d && d.priority ? ` <b>${esc(d.priority)}</b>` : ""}</td>
      <td>${pass}</td><td><ul class="reasons">${notes}</ul></td></tr>`;
  });
  $("#requests tbody").innerHTML = rows.join("");
  $("#empty").hidden = portal.requests.length > 0;
}

// Say once when a request of this session is decided.
function announce(r) {
  const before = portal.known[r.shipment_id];
  portal.known[r.shipment_id] = r.status;
  if (before === "pending" && r.status !== "pending") {
    if (r.status === "approved") flash("decided_approved", [r.shipment_id, r.decision.pass_id], "ok");
    else if (r.status === "dead_letter") flash("decided_dead_letter", [r.shipment_id], "error");
    else flash("decided_rejected", [r.shipment_id], "error");
  }
}

// --- live status: the gateway's event stream, polling when there is none -------------------------

function startLive() {
  stopLive();
  if (!window.EventSource) return startPolling();
  const es = portal.events = new EventSource("/v1/events");
  es.onopen = () => { portal.live = "sse"; stopPolling(); paintLive(); refresh(); };
  es.addEventListener("decision", (m) => applyEvent(JSON.parse(m.data)));
  es.addEventListener("status", (m) => applyEvent(JSON.parse(m.data)));
  es.addEventListener("dead_letter", (m) => applyEvent(JSON.parse(m.data)));
  es.onerror = () => {  // no stream here, or it broke: poll meanwhile
    startPolling();
    if (es.readyState === EventSource.CLOSED) {  // the browser gave up (e.g. no /v1/events): retry later
      es.close(); portal.events = null;
      setTimeout(() => { if (portal.firm && !portal.events) startLive(); }, 60000);
    }
  };
}

// An event shows at once; the page then reads the gateway's own view again, which comes from the
// database the projector writes, a moment behind the topics the events come from.
function applyEvent(ev) {
  portal.eventsSeen = (portal.eventsSeen || 0) + 1;
  const d = ev.data || {};
  if (ev.type === "decision") {
    const view = {shipment_id: ev.shipment_id, status: d.decision, accepted_at: null, pass_status: null,
                  decision: {decision: d.decision, priority: d.priority, reasons: d.reasons || [],
                             rules_version: d.rules_version, decided_at: d.decided_at, pass_id: ev.pass_id}};
    const i = portal.requests.findIndex((r) => r.shipment_id === ev.shipment_id);
    if (i >= 0) portal.requests[i] = {...portal.requests[i], ...view, accepted_at: portal.requests[i].accepted_at};
    else portal.requests.unshift(view);
    announce(view);
  } else if (ev.type === "dead_letter") {
    const view = {shipment_id: ev.shipment_id, status: "dead_letter", error: d.error, decision: null, pass_status: null};
    const i = portal.requests.findIndex((r) => r.shipment_id === ev.shipment_id);
    if (i >= 0) portal.requests[i] = {...portal.requests[i], ...view};
    announce(view);
  } else if (ev.type === "status") {
    for (const r of portal.requests) if (r.decision && r.decision.pass_id === ev.pass_id) r.pass_status = d.status;
    if (portal.view === "pass" && portal.pass && portal.pass.pass_id === ev.pass_id) {
      const seen = (portal.pass.history || []).some((e) => e.status === d.status && e.at === d.at);
      if (!seen) paintPass({...portal.pass, status: d.status, history: [...(portal.pass.history || []), d]});
    }
  }
  paintRequests();
  settle();
}

// Read the gateway's view again a little later, and once more, until the projection has caught up.
function settle() {
  clearTimeout(portal.settling);
  portal.settling = setTimeout(() => { refresh(); portal.settling = setTimeout(refresh, 3000); }, 700);
}

function startPolling() {
  portal.live = "poll"; paintLive();
  if (portal.poller) return;
  portal.poller = setInterval(refresh, 3000);
}

function stopPolling() {
  clearInterval(portal.poller); portal.poller = null;
}

function stopLive() {
  if (portal.events) portal.events.close();
  portal.events = null; stopPolling();
  portal.live = "off"; paintLive();
}

function paintLive() {
  const el = $("#live");
  if (!el) return;
  el.textContent = portal.firm ? t(`live_${portal.live}`) : "";
  el.className = `live ${portal.live}`;
}

function refresh() {
  if (!portal.firm) return;
  if (portal.view === "list" || Object.values(portal.known).includes("pending")) loadRequests();
  if (portal.view === "pass" && portal.passId) loadPass(portal.passId);
}

// --- the form ---------------------------------------------------------------------------------------

function fillShippers() {
  const select = document.querySelector("[name='shipper.credit_code']");
  const codes = [portal.firm.credit_code, ...portal.firm.acts_for.filter((c) => c !== portal.firm.credit_code)];
  select.innerHTML = codes.map((c) => `<option value="${esc(c)}">${esc(c)}</option>`).join("");
}

function prepareForm() {
  const form = $("#apply");
  $("#apply-error").hidden = true;
  form.querySelectorAll(".field-error").forEach((el) => el.remove());
  if (!form.elements["shipment_id"].value) {
    const now = new Date();
    const stamp = now.toISOString().replace(/[-:T]/g, "").slice(0, 14);
    form.elements["shipment_id"].value = `SO-${stamp}`;
    const local = new Date(now.getTime() - now.getTimezoneOffset() * 60000 + 30 * 60000);
    form.elements["departure_at"].value = local.toISOString().slice(0, 16);
  }
  if (!window.isSecureContext || !(window.crypto && crypto.subtle)) $("#binding-hint").textContent = t("binding_insecure");
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

const completePlaces = (input, list) => debounce(async () => {
  const q = input.value.trim();
  if (!q || portal.places[q]) return;
  const hits = await api(`/v1/places?q=${encodeURIComponent(q)}`).catch(() => []);
  for (const h of hits) portal.places[h.name] = h;
  list.innerHTML = hits.map((h) => `<option value="${esc(h.name)}">${esc(h.adcode)}</option>`).join("");
}, 150);

const completeCargo = (input, list) => debounce(async () => {
  const q = input.value.trim();
  const hits = await api(`/v1/cargo?q=${encodeURIComponent(q)}`).catch(() => []);
  portal.cargo = Object.fromEntries(hits.map((h) => [h.hs_code, h]));
  list.innerHTML = hits.map((h) => `<option value="${esc(h.hs_code)}">${esc(h.priority)} ${esc(h.label)}</option>`).join("");
  const hit = portal.cargo[q];
  if (hit) {
    $("#cargo-class").textContent = `${hit.priority} · ${hit.label}`;
    const desc = $("#apply").elements["cargo.0.description"];
    if (!desc.value) desc.value = hit.label.replace(/^[^\u4e00-\u9fff]*/, "") || hit.label;
  }
}, 150);

function place(text) {
  const hit = portal.places[text.trim()];
  return hit ? {adcode: hit.adcode} : {address: text.trim()};
}

// The driver bound as models/credential.py DriverBinding does it: 6 random bytes of salt, the first
// 6 bytes of SHA-256(salt || ID number, upper-case X), both base64. Null where WebCrypto is not.
async function bindDriver(idNumber) {
  if (!window.isSecureContext || !(window.crypto && crypto.subtle)) return null;
  const number = idNumber.replace(/\s+/g, "").toUpperCase();
  const salt = crypto.getRandomValues(new Uint8Array(6));
  const data = new Uint8Array([...salt, ...new TextEncoder().encode(number)]);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data)).slice(0, 6);
  const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
  return {salt: b64(salt), id_hash: b64(digest)};
}

// What is wrong with a resident ID number (GB 11643-1999), as models/records.py check_id_number
// says it, or null. Checked here because a bound number reaches no one who could check it.
function idProblem(number) {
  if (!/^\d{17}[\dX]$/.test(number)) return t("id_shape");
  const [y, m, d] = [number.slice(6, 10), number.slice(10, 12), number.slice(12, 14)].map(Number);
  const born = new Date(Date.UTC(y, m - 1, d));
  if (born.getUTCFullYear() !== y || born.getUTCMonth() !== m - 1 || born.getUTCDate() !== d) return t("id_birth");
  const weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
  const total = weights.reduce((sum, w, i) => sum + w * Number(number[i]), 0);
  const expected = "10X98765432"[total % 11];
  return number[17] === expected ? null : t("id_check", expected);
}

class FormProblem extends Error {
  constructor(field, text) { super(text); this.field = field; }
}

async function buildRequest(form) {
  const v = (name) => form.elements[name].value.trim();
  const departure = new Date(v("departure_at"));
  const idNumber = v("driver.id_number");
  const driver = {name: v("driver.name"), phone: v("driver.phone")};
  const problem = idProblem(idNumber.replace(/\s+/g, "").toUpperCase());
  if (problem) throw new FormProblem("driver.id_number", problem);
  const binding = await bindDriver(idNumber);
  if (binding) driver.binding = binding; else driver.id_number = idNumber.replace(/\s+/g, "").toUpperCase();
  const cargo = {hs_code: v("cargo.0.hs_code"), quantity: Number(v("cargo.0.quantity"))};
  if (v("cargo.0.description")) cargo.description = v("cargo.0.description");
  if (v("cargo.0.unit")) cargo.unit = v("cargo.0.unit");
  const vehicle = {plate: v("vehicle.plate")};
  if (v("vehicle.type")) vehicle.type = v("vehicle.type");
  return {
    shipment_id: v("shipment_id"), submitted_at: new Date().toISOString(), trip: v("trip"),
    shipper: {credit_code: v("shipper.credit_code"), name: v("shipper.name")},
    consignee: {credit_code: v("consignee.credit_code"), name: v("consignee.name")},
    cargo: [cargo], vehicle, driver, origin: place(v("origin")), destination: place(v("destination")),
    departure_at: isNaN(departure) ? v("departure_at") : departure.toISOString(),
  };
}

async function submitRequest(ev) {
  ev.preventDefault();
  const form = $("#apply"), button = $("#submit"), error = $("#apply-error");
  error.hidden = true;
  form.querySelectorAll(".field-error").forEach((el) => el.remove());
  button.disabled = true; button.textContent = t("submitting");
  try {
    const body = await buildRequest(form);
    // Awaited from before it is sent: its decision's event may come before the POST's own answer.
    const added = !(body.shipment_id in portal.known);
    if (added) portal.known[body.shipment_id] = "pending";
    const accepted = await api("/v1/requests", {method: "POST", body}).catch((e) => {
      if (added) delete portal.known[body.shipment_id];
      throw e;
    });
    form.reset(); form.elements["shipment_id"].value = "";
    location.hash = "#/";
    flash("submitted", [accepted.shipment_id]);
  } catch (e) {
    if (e instanceof FormProblem) {
      showFormError(form, {text: t("id_invalid", e.message), detail: "", fields: [{field: e.field, message: e.message}]});
    }
    else showFormError(form, explain(e));
  } finally {
    button.disabled = false; button.textContent = t("submit");
  }
}

function showFormError(form, x) {
  const error = $("#apply-error");
  error.innerHTML = `${esc(x.text)}${x.detail ? `<small>${esc(x.detail)}</small>` : ""}`;
  error.hidden = false;
  for (const f of x.fields) {
    const name = f.field.replace(/^cargo\.(\d+)/, "cargo.$1").replace(/^driver\.binding.*/, "driver.id_number");
    const input = form.elements[name] || form.elements[name.split(".").slice(0, 2).join(".")] || form.elements[name.split(".")[0]];
    const note = document.createElement("p");
    note.className = "field-error";
    note.textContent = `${t("field")} ${f.field}: ${f.message}`;
    if (input && input.closest) input.closest("label").after(note); else error.append(note);
  }
  error.scrollIntoView({block: "center"});
}

// --- a pass -------------------------------------------------------------------------------------------

async function loadPass(passId) {
  portal.passId = passId;
  let p;
  try {
    p = await api(`/v1/passes/${encodeURIComponent(passId)}`);
  } catch (e) {
    flashError(e);
    return;
  }
  paintPass(p);
  driverLink(passId);
}

// The link the firm hands the driver (GET /v1/passes/{id}/driver-link), with its QR.
async function driverLink(passId) {
  const box = $("#driver-link");
  if (box.dataset.pass === passId) return;
  box.hidden = true;
  try {
    const link = await api(`/v1/passes/${encodeURIComponent(passId)}/driver-link`);
    $("#driver-qr").src = link.qr_svg_url;
    $("#driver-url").href = link.url;
    $("#driver-url").textContent = link.url;
    box.dataset.pass = passId;
    box.hidden = false;
  } catch (e) { console.warn("driver link", e); }
}

function paintPass(p) {
  portal.pass = p;
  $("#pass-id").textContent = p.pass_id;
  $("#print-pdf").href = p.print_pdf_url;
  $("#print-png").href = p.print_png_url;
  const r = p.route || {};
  const terms = [
    ["t_shipment", esc(p.shipment_id)], ["t_status", badge(p.status)], ["t_plate", esc(p.plate)],
    ["t_priority", esc(t(`reasons.class_${p.priority}`) || p.priority)], ["t_valid", `${esc(fmtTime(p.valid_from))} – ${esc(fmtTime(p.valid_until))}`],
    ["t_trip", esc(t(`trip_${p.trip}`) || p.trip)], ["t_toll", esc(t(p.toll_exempt ? "t_toll_yes" : "t_toll_no"))],
    ["t_distance", r.distance_km != null ? `${esc(r.distance_km)} km` : "—"], ["t_eta", esc(fmtTime(r.eta))],
  ];
  $("#pass-terms").innerHTML = terms.map(([k, v]) => `<dt>${esc(t(k))}</dt><dd>${v}</dd>`).join("");
  $("#checkpoints tbody").innerHTML = (r.checkpoints || []).map((c, i) =>
    `<tr><td>${i + 1}</td><td>${esc(c.name)} <small>${esc(c.checkpoint_id)}</small></td><td>${esc(fmtTime(c.eta))}</td></tr>`).join("");
  const named = Object.fromEntries((r.checkpoints || []).map((c) => [c.checkpoint_id, c.name]));
  const where = (id) => id ? ` · ${esc(named[id] || "")} <small>${esc(id)}</small>` : "";
  $("#history").innerHTML = (p.history || []).map((e) =>
    `<li>${badge(e.status)} ${esc(fmtTime(e.at))}${where(e.checkpoint_id)}${e.reason ? ` · ${esc(e.reason)}` : ""}</li>`).join("");
  const mapKey = `${p.pass_id} ${portal.lang} ${JSON.stringify(p.route && p.route.adcodes)}`;
  if (portal.mapKey !== mapKey) {  // drawn again for a reroute or the other language only
    portal.mapKey = mapKey;
    drawRoute(p).catch((e) => { portal.mapKey = null; console.warn("map", e); });
  }
}

async function chinaMap() {
  if (!portal.geo) {
    const geo = await (await fetch("/static/vendor/echarts-4.9.0/china-cities.json")).json();
    for (const f of geo.features) f.properties.name = f.id;  // regions keyed by adcode, as the dashboard's
    echarts.registerMap("gc-cities", geo);
    portal.geo = geo;
  }
  return portal.geo;
}

async function drawRoute(p) {
  if (!window.echarts || !p.route) return;
  await chinaMap();
  const codes = p.route.adcodes || [];
  const query = codes.map((c) => `adcode=${encodeURIComponent(c)}`).join("&");
  const found = codes.length ? await api(`/v1/places?${query}`) : [];
  const at = Object.fromEntries(found.map((h) => [h.adcode, [h.lon, h.lat]]));
  const path = codes.map((c) => at[c]).filter(Boolean);
  const stops = (p.route.checkpoints || []).map((c) => ({name: c.name, value: [c.lon, c.lat]}));
  const all = path.concat(stops.map((s) => s.value));
  if (!all.length) return;
  const lons = all.map((x) => x[0]), lats = all.map((x) => x[1]);
  const span = Math.max(Math.max(...lons) - Math.min(...lons), Math.max(...lats) - Math.min(...lats), 1);
  const ends = [path[0], path[path.length - 1]].filter(Boolean);
  const prefectures = [...new Set(codes.map((c) => c.slice(0, 4) + "00"))];
  const chart = portal.chart || (portal.chart = echarts.init($("#map")));
  chart.setOption({
    animation: false,
    tooltip: {trigger: "item", formatter: (x) => esc(x.name || "")},
    geo: {map: "gc-cities", roam: true, zoom: Math.min(12, Math.max(1.2, 40 / span)),
          center: [(Math.max(...lons) + Math.min(...lons)) / 2, (Math.max(...lats) + Math.min(...lats)) / 2],
          itemStyle: {areaColor: "#eef3ee", borderColor: "#c9d3c9", borderWidth: 0.5},
          regions: prefectures.map((c) => ({name: c, itemStyle: {areaColor: "#cfe8d2"}})),
          label: {show: false}, emphasis: {label: {show: false}}},
    series: [
      {type: "lines", coordinateSystem: "geo", polyline: true, data: [{coords: path}],
       lineStyle: {color: "#1b7f3b", width: 3, opacity: 0.9}, zlevel: 1},
      {type: "scatter", coordinateSystem: "geo", symbol: "diamond", symbolSize: 11, data: stops,
       itemStyle: {color: "#263238"}, label: {show: true, position: "right", formatter: "{b}", fontSize: 11}, zlevel: 2},
      {type: "effectScatter", coordinateSystem: "geo", symbolSize: 10, zlevel: 3,
       data: ends.map((v, i) => ({name: t(i ? "destination_map" : "origin_map"), value: v})), itemStyle: {color: "#d7301f"}},
    ],
  }, true);
  chart.resize();
  portal.mapDrawn = p.pass_id;
}

// --- start ----------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  translate();
  $("#signin").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", signOut);
  $("#apply").addEventListener("submit", submitRequest);
  $("#lang").addEventListener("click", () => {
    portal.lang = portal.lang === "zh" ? "en" : "zh";
    localStorage.setItem("gc-portal-lang", portal.lang);  // the language only; never the key
    translate();
    route();
  });
  const form = $("#apply");
  for (const name of ["origin", "destination"]) {
    form.elements[name].addEventListener("input", completePlaces(form.elements[name], $(`#${name}-list`)));
  }
  form.elements["cargo.0.hs_code"].addEventListener("input", completeCargo(form.elements["cargo.0.hs_code"], $("#cargo-list")));
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => portal.chart && portal.chart.resize());
  try {
    portal.firm = await api("/v1/session");
    started();
  } catch {
    signedOut();
  }
  portal.ready = true;
});
