// The driver's pass on a phone: the pass's QR in its verdict colour, what to do, the route and the wait
// at each checkpoint. Live by server-sent events (a poll when they fail); offline from the service
// worker's cache, saying how old what it shows is. No key, no cookie: the address is the capability.
"use strict";

const CACHE = "gc-driver-v1";  // the service worker's (sw.js)
const base = location.pathname.replace(/\/+$/, "");
const STATE_URL = `${base}/state`;
const POLL_MS = 30000;

const I18N = {
  zh: {
    title: "绿色通道 · 通行证", missing: "此链接无效或已停用。请向承运企业索取新的链接。", pass_no: "通行证号",
    route: "路线与检查站", wait_hint: "等待时间：各检查站最近 50 辆车从到达到放行所用时间的中位数。",
    valid: "有效", invalid: "无效", plate: "车牌", class: "类别", valid_time: "有效期", trip: "行程", toll: "通行费",
    trip_single: "单次有效", trip_multi: "多次有效", toll_yes: "免收（三不一优先）", toll_no: "照常收取",
    distance: "里程", eta: "预计到达", wait: "当前等待", wait_none: "暂无数据", minutes: "分钟",
    live: "实时 · 数据时间 {at}", checked: "数据时间 {at} · {ago}", ago_now: "刚刚", ago_min: "{n} 分钟前",
    ago_h: "{h} 小时 {m} 分钟前", offline: "离线 · 以下为{ago}保存的状态（数据时间 {at}），请联网更新。",
    polling: "定时刷新 · 数据时间 {at}", bj: "北京时间",
    status: {issued: "已签发", at_checkpoint: "在检查站", in_transit: "在途", held: "被拦停", delivered: "已送达",
             rerouted: "已改道", suspended: "已暂停", revoked: "已撤销", expired: "已过期"},
    do: {
      go: "按下列路线行驶，到检查站出示二维码。",
      new_route: "路线已变更：请按下方新路线行驶，勿走原路线。",
      stop: "通行证已暂停：请在安全地点停车等候，勿继续前往检查站。",
      held: "您已在检查站被拦停：请听从检查人员指示。",
      done: "本次运输已送达，通行证已用完。",
      not_yet: "通行证尚未生效：请在有效期开始后再出发。",
      not_valid: "通行证无效，不得凭此通行。",
      not_valid_time: "通行证已超出有效期，不得凭此通行。",
    },
    why: "原因：", reasons: {
      high_risk_region: "起点或终点已列为高风险地区", no_safe_route: "前方已无避开高风险地区的路线",
      route_crossed_high_risk_region: "原路线经过新列为高风险的地区", reinstated_safe_route: "已有安全路线，恢复通行",
      key_enterprise_removed: "企业已移出重点企业名单", no_signing_key: "暂无可用签发密钥，请联系承运企业",
      key_withdrawn: "签发密钥已撤回", validity_ended: "有效期已结束", plate_mismatch: "车牌与通行证不符",
      arrived_at_destination: "已到达目的地", trip_completed: "本趟已完成",
    },
  },
  en: {
    title: "Green channel · Pass", missing: "This link is not valid or no longer in use. Ask your carrier for a new one.",
    pass_no: "Pass No.", route: "Route and checkpoints",
    wait_hint: "Wait: the median time from arrival to release of the last 50 vehicles at each checkpoint.",
    valid: "VALID", invalid: "NOT VALID", plate: "Plate", class: "Class", valid_time: "Valid", trip: "Trip", toll: "Tolls",
    trip_single: "single trip", trip_multi: "multi-trip", toll_yes: "exempt (三不一优先)", toll_no: "charged",
    distance: "Distance", eta: "ETA", wait: "wait now", wait_none: "no data yet", minutes: "min",
    live: "Live · as of {at}", checked: "As of {at} · {ago}", ago_now: "just now", ago_min: "{n} minutes ago",
    ago_h: "{h} h {m} min ago", offline: "Offline: as of {at}, saved {ago}. Go online to update.",
    polling: "Refreshed every 30 s · as of {at}", bj: "Beijing time",
    status: {issued: "issued", at_checkpoint: "at a checkpoint", in_transit: "in transit", held: "held",
             delivered: "delivered", rerouted: "rerouted", suspended: "suspended", revoked: "revoked", expired: "expired"},
    do: {
      go: "Drive the route below; show the QR at each checkpoint.",
      new_route: "Your route has changed: follow the new route below, not the old one.",
      stop: "Pass suspended: stop somewhere safe and wait; do not go on to a checkpoint.",
      held: "You are held at a checkpoint: follow the officer's instructions.",
      done: "Delivered: this pass has been used.",
      not_yet: "Not valid yet: set off once its validity begins.",
      not_valid: "This pass is not valid: do not travel on it.",
      not_valid_time: "This pass is past its validity: do not travel on it.",
    },
    why: "Why: ", reasons: {
      high_risk_region: "the origin or destination is now a high-risk region",
      no_safe_route: "no route ahead avoids the high-risk regions", route_crossed_high_risk_region:
      "the old route crossed a region now high-risk", reinstated_safe_route: "a safe route again: back on the road",
      key_enterprise_removed: "the firm left the key-enterprise list", no_signing_key: "no signing key now: call your carrier",
      key_withdrawn: "the signing key was withdrawn", validity_ended: "its validity ended", plate_mismatch:
      "the plate does not match the pass", arrived_at_destination: "arrived at the destination", trip_completed: "trip completed",
    },
  },
};

const driver = window.driver = {
  lang: localStorage.getItem("gc-driver-lang") || "zh",
  state: null, seenAt: 0, asOfAt: 0, live: "", eventsSeen: 0, offline: false, mapDrawn: null, chart: null,
};

const $ = (s) => document.querySelector(s);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
function t(path, vars) {
  let v = path.split(".").reduce((o, k) => (o == null ? o : o[k]), I18N[driver.lang]);
  if (v == null) v = path.split(".").reduce((o, k) => (o == null ? o : o[k]), I18N.zh);
  return typeof v === "string" && vars ? v.replace(/\{(\w+)\}/g, (_, k) => vars[k]) : v;
}
function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const s = d.toLocaleString(driver.lang === "zh" ? "zh-CN" : "en-GB", {
    timeZone: "Asia/Shanghai", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false});
  return s;
}
function ago(ms) {
  const n = Math.max(0, Math.floor(ms / 60000));
  if (n < 1) return t("ago_now");
  return n < 60 ? t("ago_min", {n}) : t("ago_h", {h: Math.floor(n / 60), m: n % 60});
}

// --- what the page shows ---------------------------------------------------------------------------------

// The channel's time now, as the phone can tell it: the state's time plus what the phone's clock ran since.
function channelNow() {
  return Date.parse(driver.state.as_of) + (Date.now() - driver.asOfAt);
}

// The server's verdict, made grey here when the phone's reckoning passes the end of validity (offline).
function currentVerdict(s) {
  const ended = s.valid_until && channelNow() >= Date.parse(s.valid_until);
  return {verdict: ended ? "grey" : s.verdict, instruction: ended && s.instruction !== "done" ? "not_valid_time" : s.instruction};
}

function render() {
  const s = driver.state;
  document.documentElement.lang = driver.lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  $("#lang").textContent = driver.lang === "zh" ? "EN" : "中文";
  if (!s) return;
  $("#pass").hidden = false;
  const now = currentVerdict(s);
  const box = $("#verdict");
  box.className = `verdict ${now.verdict}`;
  box.dataset.verdict = now.verdict;
  $("#verdict-word").textContent = t(now.verdict === "green" ? "valid" : "invalid");
  $("#status-word").textContent = t(`status.${s.status}`) || s.status || "";
  if ($("#qr").getAttribute("src") !== s.qr) $("#qr").src = s.qr;
  $("#qr").alt = s.pass_id;
  $("#pass-id").textContent = s.pass_id;
  const doing = $("#instruction");
  doing.className = `instruction ${now.instruction === "not_valid_time" ? "not_valid" : now.instruction}`;
  doing.dataset.instruction = now.instruction;
  const why = s.reason && ["stop", "new_route", "held", "not_valid"].includes(now.instruction)
    ? `<small>${esc(t("why"))}${esc(t(`reasons.${s.reason}`) || s.reason)}</small>` : "";
  doing.innerHTML = `${esc(t(`do.${now.instruction}`))}${why}`;
  const r = s.route || {};
  const terms = [
    ["plate", `<span class="plate">${esc(s.plate)}</span>`],
    ["class", `${esc(s.priority)} ${esc(driver.lang === "zh" ? s.class_zh : s.class_en)}`],
    ["valid_time", `${esc(fmtTime(s.valid_from))} – ${esc(fmtTime(s.valid_until))} <small>(${esc(t("bj"))})</small>`],
    ["trip", esc(t(s.trip === "multi" ? "trip_multi" : "trip_single"))],
    ["toll", esc(t(s.toll_exempt ? "toll_yes" : "toll_no"))],
    ["distance", r.distance_km != null ? `${esc(r.distance_km)} km · ${esc(t("eta"))} ${esc(fmtTime(r.eta))}` : "—"],
  ];
  $("#terms").innerHTML = terms.map(([k, v]) => `<dt>${esc(t(k))}</dt><dd>${v}</dd>`).join("");
  $("#checkpoints").innerHTML = (r.checkpoints || []).map((c) => {
    const m = c.median_wait_seconds;
    const wait = m == null ? `<span class="wait none">${esc(t("wait_none"))}</span>`
      : `<span class="wait ${m > 900 ? "over" : "ok"}">${esc(t("wait"))} ${Math.round(m / 60)} ${esc(t("minutes"))}</span>`;
    const here = c.checkpoint_id === s.checkpoint_id ? " here" : "";
    return `<li class="cp${here}" data-checkpoint="${esc(c.checkpoint_id)}"><span class="name">${esc(c.name)}</span> ` +
      `<span class="id">${esc(c.checkpoint_id)}</span><div class="meta">${esc(t("eta"))} ${esc(fmtTime(c.eta))} ${wait}</div></li>`;
  }).join("");
  freshness();
  const mapKey = `${s.pass_id} ${driver.lang} ${JSON.stringify(r.path)} ${JSON.stringify((r.checkpoints || []).map((c) => c.checkpoint_id))}`;
  if (driver.mapKey !== mapKey) {
    driver.mapKey = mapKey;
    drawRoute(s).catch((e) => { driver.mapKey = null; console.warn("map", e); });
  }
}

function freshness() {
  const s = driver.state;
  if (!s) return;
  const el = $("#freshness");
  const at = `${fmtTime(s.as_of)}`;
  el.className = "freshness";
  if (driver.offline) {
    el.classList.add("stale");
    el.textContent = t("offline", {ago: ago(Date.now() - driver.seenAt), at});
  } else if (driver.live === "sse") {
    el.classList.add("live");
    el.textContent = t("live", {at});
  } else if (driver.live === "poll") {
    el.textContent = t("polling", {at});
  } else {
    el.textContent = t("checked", {at, ago: ago(Date.now() - driver.seenAt)});
  }
  el.dataset.age = String(Math.floor((Date.now() - driver.seenAt) / 60000));
}

async function chinaMap() {
  if (!driver.geo) {
    driver.geo = await (await fetch("/static/vendor/echarts-4.9.0/china.json")).json();
    echarts.registerMap("gc-china", driver.geo);
  }
}

async function drawRoute(s) {
  if (!window.echarts) return;
  await chinaMap();
  const r = s.route || {};
  const path = r.path || [];
  const stops = (r.checkpoints || []).map((c) => ({name: c.name, value: [c.lon, c.lat]}));
  const all = path.concat(stops.map((x) => x.value));
  if (!all.length) return;
  const lons = all.map((x) => x[0]), lats = all.map((x) => x[1]);
  const span = Math.max(Math.max(...lons) - Math.min(...lons), Math.max(...lats) - Math.min(...lats), 1);
  const chart = driver.chart || (driver.chart = echarts.init($("#map")));
  chart.setOption({
    animation: false,
    geo: {map: "gc-china", roam: true, zoom: Math.min(14, Math.max(1.2, 30 / span)),
          center: [(Math.max(...lons) + Math.min(...lons)) / 2, (Math.max(...lats) + Math.min(...lats)) / 2],
          itemStyle: {areaColor: "#eef3ee", borderColor: "#b9c7b9", borderWidth: 0.6},
          label: {show: false}, emphasis: {label: {show: false}}},
    series: [
      {type: "lines", coordinateSystem: "geo", polyline: true, data: [{coords: path}],
       lineStyle: {color: s.status === "rerouted" ? "#e0a400" : "#1b7f3b", width: 4, opacity: 0.95}, zlevel: 1},
      {type: "scatter", coordinateSystem: "geo", symbol: "diamond", symbolSize: 12, data: stops,
       itemStyle: {color: "#263238"}, label: {show: true, position: "right", formatter: "{b}", fontSize: 11}, zlevel: 2},
      {type: "scatter", coordinateSystem: "geo", symbolSize: 11, zlevel: 3, itemStyle: {color: "#d7301f"},
       data: [path[0], path[path.length - 1]].filter(Boolean).map((v) => ({value: v}))},
    ],
  }, true);
  chart.resize();
  driver.mapDrawn = `${s.pass_id}:${(r.checkpoints || []).map((c) => c.checkpoint_id).join(",")}`;
}

// --- where the state comes from ----------------------------------------------------------------------

function take(state, seenAt, offline) {
  if (driver.state && seenAt < driver.seenAt) return;  // an older copy than the one shown
  driver.state = state;
  driver.seenAt = seenAt;
  driver.asOfAt = seenAt;
  driver.offline = offline;
  render();
  if (!offline) keep(state, seenAt);
}

// The last state in the service worker's cache, with when the phone saw it: what opens offline.
async function keep(state, seenAt) {
  if (!window.caches) return;
  try {
    const cache = await caches.open(CACHE);
    await cache.put(STATE_URL, new Response(JSON.stringify(state), {
      headers: {"Content-Type": "application/json", "X-GC-Seen-At": String(seenAt)}}));
  } catch (e) { console.warn("cache", e); }
}

async function load() {
  let r;
  try {
    r = await fetch(STATE_URL, {cache: "no-store"});
  } catch {
    r = window.caches ? await caches.match(STATE_URL) : undefined;  // no network and no service worker yet
  }
  if (r && r.status === 404) {
    $("#missing").hidden = false;
    $("#pass").hidden = true;
    if (window.caches) (await caches.open(CACHE)).delete(STATE_URL);
    return false;
  }
  if (!r || !r.ok) { driver.offline = true; freshness(); return false; }
  const cached = r.headers.get("X-GC-Seen-At");
  take(await r.json(), cached ? Number(cached) : Date.now(), Boolean(cached));
  if (cached) { driver.offline = true; freshness(); }  // the service worker's copy: no network
  return !cached;
}

function listen() {
  if (!window.EventSource) return poll();
  const es = new EventSource(`${base}/events`);
  driver.es = es;
  es.addEventListener("open", () => { driver.live = "sse"; driver.offline = false; stopPolling(); freshness(); });
  es.addEventListener("state", (e) => { driver.eventsSeen += 1; driver.live = "sse"; take(JSON.parse(e.data), Date.now(), false); });
  es.addEventListener("error", () => {
    // The browser connects again by itself (unless the answer was an error: CLOSED); meanwhile, a poll.
    driver.live = "";
    freshness();
    poll();
  });
}

function stopPolling() {
  if (driver.polling) clearInterval(driver.polling);
  driver.polling = null;
}

function poll() {
  if (driver.polling) return;
  const tick = async () => {
    if (await load() && driver.live !== "sse") driver.live = "poll";
    freshness();
  };
  driver.polling = setInterval(tick, POLL_MS);
  tick();
}

// The page itself in the cache too (the service worker may not yet have seen it: the first visit).
async function cachePage() {
  if (!("serviceWorker" in navigator)) return;
  try {
    await navigator.serviceWorker.register("/d/sw.js", {scope: "/d/"});
    await navigator.serviceWorker.ready;
    const cache = await caches.open(CACHE);
    if (!(await cache.match(location.pathname))) await cache.add(location.pathname);
    driver.cached = true;
  } catch (e) { console.warn("service worker", e); }
}

document.addEventListener("DOMContentLoaded", async () => {
  render();
  $("#lang").addEventListener("click", () => {
    driver.lang = driver.lang === "zh" ? "en" : "zh";
    localStorage.setItem("gc-driver-lang", driver.lang);
    render();
  });
  window.addEventListener("resize", () => driver.chart && driver.chart.resize());
  window.addEventListener("online", async () => {  // back on the network: the state now, and live again
    await load();
    if (!driver.es || driver.es.readyState === EventSource.CLOSED) listen();
  });
  window.addEventListener("offline", () => { driver.offline = true; freshness(); });
  setInterval(() => { if (driver.state) render(); }, 30000);  // the age, and the verdict at the validity's end
  const fresh = await load();
  cachePage();
  if (fresh || navigator.onLine) listen();
  driver.ready = true;
});
