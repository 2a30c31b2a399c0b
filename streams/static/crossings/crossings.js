// The public crossing times: the feed /public/v1/crossings as a map and a table, fetched again every
// refresh_seconds the feed names (its ETag makes an unchanged answer a 304). Chinese by default.
"use strict";

const T = {
  zh: {
    title: "绿色通道 · 卡口通行时间", lang: "English",
    about: "各检查站车辆从到达到放行的停留时间（中位数与 90% 分位数），以及每小时通行车辆数。开放数据，不含车牌、通行证号或企业信息。",
    legend_ok: "最近一小时中位停留 < {0} 分钟", legend_near: "{0}–{1} 分钟", legend_over: "超过 {0} 分钟目标",
    legend_none: "车辆过少，不公布",
    how_title: "数据说明", feed_link: "JSON 开放数据接口", docs_link: "接口文档",
    col_checkpoint: "检查站", col_hour: "最近一小时", col_day: "最近一天", col_before: "此前（中位数）", col_trend: "趋势",
    col_median: "中位", col_p90: "90%", col_rate: "辆/时", col_over: "超时", col_yesterday: "前一天", col_week: "一周前",
    as_of: "数据截至 {0}", clock_channel: "（通道时钟：最新一次通行）", clock_wall: "",
    minutes: "{0} 分", too_few: "过少", none: "无",
    trend_up: "↑ 变长", trend_down: "↓ 缩短", trend_steady: "→ 持平",
    note_windows: "“最近一小时”为截至时间所在的 {0} 分钟时段及此前五个时段；“最近一天”为此前 24 小时；“前一天”“一周前”为相同的 24 小时提前一天、七天。",
    note_resolution: "停留时间按整分钟向下取整；中位数取偶数个时的较大者，90% 分位数取第 ⌈0.9n⌉ 个。",
    note_threshold: "为保护个人信息，某时段通行少于 {0} 辆时不公布该时段的数字。",
    note_target: "超时：停留超过 {0} 分钟目标的车辆占比。趋势：最近一天与前一天的中位数相差 2 分钟及以上。",
    note_refresh: "每 {0} 秒更新。",
    tip_hour: "最近一小时", tip_day: "最近一天", tip_median: "中位", tip_p90: "90%", tip_rate: "辆/时",
    error: "暂时无法获取数据（{0}），稍后自动重试。",
  },
  en: {
    title: "Green Channel · Crossing times", lang: "中文",
    about: "How long vehicles stay at each checkpoint, from arrival to departure (median and 90th percentile), and how many cross per hour. Open data: no plates, pass numbers or firms.",
    legend_ok: "median of the last hour < {0} min", legend_near: "{0}–{1} min", legend_over: "over the {0}-minute target",
    legend_none: "too few vehicles to publish",
    how_title: "About the figures", feed_link: "JSON open-data feed", docs_link: "API docs",
    col_checkpoint: "Checkpoint", col_hour: "Last hour", col_day: "Last day", col_before: "Before (median)", col_trend: "Trend",
    col_median: "median", col_p90: "90%", col_rate: "veh/h", col_over: "over", col_yesterday: "day before", col_week: "week ago",
    as_of: "as of {0}", clock_channel: " (channel's clock: the latest crossing)", clock_wall: "",
    minutes: "{0} min", too_few: "too few", none: "none",
    trend_up: "↑ longer", trend_down: "↓ shorter", trend_steady: "→ steady",
    note_windows: "The last hour: the {0}-minute slot of “as of” and the five before it; the last day: the 24 hours to it; the day before and a week ago: the same 24 hours one and seven days earlier.",
    note_resolution: "Dwell times in whole minutes, rounded down; the median is the upper one of an even count, the 90th percentile the ⌈0.9n⌉-th smallest.",
    note_threshold: "To protect personal data, a window where fewer than {0} vehicles crossed shows no figure.",
    note_target: "Over: the share of vehicles that stayed longer than the {0}-minute target. Trend: the last day's median against the day before's, by 2 minutes or more.",
    note_refresh: "Updated every {0} seconds.",
    tip_hour: "last hour", tip_day: "last day", tip_median: "median", tip_p90: "90%", tip_rate: "veh/h",
    error: "The figures cannot be fetched now ({0}); trying again shortly.",
  },
};

const pub = window.crossings = {
  lang: new URLSearchParams(location.search).get("lang") === "en" || localStorage.getItem("gc-public-lang") === "en" ? "en" : "zh",
  feed: null, etag: null, fetches: 0, chart: null, geo: false, ready: false, timer: null,
};
const $ = (s) => document.querySelector(s);

function t(key, ...args) {
  const v = T[pub.lang][key] ?? T.zh[key] ?? key;
  return v.replace(/\{(\d)\}/g, (_, i) => args[Number(i)]);
}

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// --- the figures --------------------------------------------------------------------------------------

function level(f, target) {
  const m = f && f.median_dwell_minutes;
  if (m === null || m === undefined) return "none";
  if (m >= target) return "over";
  return m >= target * 2 / 3 ? "near" : "ok";
}

function minutes(v) { return v === null || v === undefined ? "" : t("minutes", v); }

function cells(f) {
  if (f.withheld) {
    const why = f.withheld === "no_crossings" ? t("none") : t("too_few");
    return `<td class="withheld" colspan="4">${esc(why)}</td>`;
  }
  return `<td>${esc(minutes(f.median_dwell_minutes))}</td><td>${esc(minutes(f.p90_dwell_minutes))}</td>` +
    `<td>${esc(f.vehicles_per_hour)}</td><td>${esc(Math.round(f.share_over_target * 100))}%</td>`;
}

function before(f) {
  return f.withheld ? `<td class="withheld">${esc(f.withheld === "no_crossings" ? t("none") : t("too_few"))}</td>`
    : `<td>${esc(minutes(f.median_dwell_minutes))}</td>`;
}

function drawTable(feed) {
  const rows = feed.checkpoints.map((c) => {
    const lvl = level(c.last_hour, feed.target_minutes);
    const trend = c.trend ? `<span class="trend-${c.trend}">${esc(t("trend_" + c.trend))}</span>` : "";
    return `<tr data-checkpoint="${esc(c.checkpoint_id)}" data-level="${lvl}">` +
      `<td><span class="dot ${lvl}"></span>${esc(c.name || c.checkpoint_id)}<small>${esc(c.place)} · ${esc(c.checkpoint_id)}</small></td>` +
      cells(c.last_hour) + cells(c.last_day) + before(c.yesterday) + before(c.week_ago) + `<td>${trend}</td></tr>`;
  });
  $("#crossings tbody").innerHTML = rows.join("");
}

function drawNotes(feed) {
  const target = feed.target_minutes;
  $("#notes").innerHTML = [
    t("note_windows", feed.slot_minutes), t("note_resolution"), t("note_threshold", feed.min_crossings),
    t("note_target", target), t("note_refresh", feed.refresh_seconds),
  ].map((n) => `<li>${esc(n)}</li>`).join("");
  const at = new Date(feed.as_of);
  const local = at.toLocaleString(pub.lang === "zh" ? "zh-CN" : "en-GB", {timeZone: "Asia/Shanghai", dateStyle: "medium", timeStyle: "short"});
  $("#asof").textContent = t("as_of", local + (pub.lang === "zh" ? "（北京时间）" : " (Beijing)")) + t("clock_" + feed.clock);
  $("#asof").dataset.asOf = feed.as_of;
}

// --- the map ------------------------------------------------------------------------------------------

const COLOURS = {ok: "#2e9e4f", near: "#f0a500", over: "#d7301f", none: "#9e9e9e"};

async function drawMap(feed) {
  if (!window.echarts) return;
  if (!pub.geo) {
    const geo = await (await fetch("/static/vendor/echarts-4.9.0/china-cities.json")).json();
    for (const f of geo.features) f.properties.name = f.id;  // regions keyed by adcode, as the dashboard's
    echarts.registerMap("gc-cities", geo);
    pub.geo = true;
  }
  const cps = feed.checkpoints;
  const data = cps.map((c) => {
    const lvl = level(c.last_hour, feed.target_minutes);
    return {name: c.name || c.checkpoint_id, value: [c.lon, c.lat, c.last_hour.median_dwell_minutes], cp: c,
            itemStyle: {color: COLOURS[lvl]}, symbolSize: lvl === "none" ? 8 : 13};
  });
  const first = !pub.chart;
  const chart = pub.chart || (pub.chart = echarts.init($("#map")));
  const option = {
    animation: false,
    tooltip: {trigger: "item", formatter: tooltip},
    series: [{type: "scatter", coordinateSystem: "geo", data, zlevel: 2,
              label: {show: cps.length <= 12, position: "right", formatter: "{b}", fontSize: 11, color: "#263238"}}],
  };
  if (first && cps.length) {
    const lons = cps.map((c) => c.lon), lats = cps.map((c) => c.lat);
    const span = Math.max(Math.max(...lons) - Math.min(...lons), Math.max(...lats) - Math.min(...lats), 1);
    option.geo = {map: "gc-cities", roam: true, layoutCenter: ["50%", "50%"], layoutSize: "100%",
                  zoom: Math.min(10, Math.max(1, 45 / span)),
                  center: [(Math.max(...lons) + Math.min(...lons)) / 2, (Math.max(...lats) + Math.min(...lats)) / 2],
                  itemStyle: {areaColor: "#eef3ee", borderColor: "#c9d3c9", borderWidth: 0.5},
                  label: {show: false}, emphasis: {label: {show: false}, itemStyle: {areaColor: "#dfeadf"}}};
  }
  chart.setOption(option);
  pub.mapPoints = data.length;
}

function tooltip(p) {
  const c = p.data && p.data.cp;
  if (!c) return "";
  const line = (label, f) => f.withheld
    ? `${esc(label)}: ${esc(f.withheld === "no_crossings" ? t("none") : t("too_few"))}`
    : `${esc(label)}: ${esc(t("tip_median"))} ${esc(minutes(f.median_dwell_minutes))}, ${esc(t("tip_p90"))} ${esc(minutes(f.p90_dwell_minutes))}, ${esc(f.vehicles_per_hour)} ${esc(t("tip_rate"))}`;
  return `<b>${esc(c.name)}</b><br>${esc(c.place)}<br>${line(t("tip_hour"), c.last_hour)}<br>${line(t("tip_day"), c.last_day)}`;
}

// --- fetch, draw, again -------------------------------------------------------------------------------

function translate() {
  document.documentElement.lang = pub.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  $("#lang").textContent = t("lang");
  drawLegend(pub.feed ? pub.feed.target_minutes : 15);
}

function drawLegend(target) {
  const near = Math.round(target * 2 / 3);
  const legend = {ok: [near], near: [near, target], over: [target], none: []};
  for (const [k, args] of Object.entries(legend)) $(`[data-i18n=legend_${k}]`).textContent = t(`legend_${k}`, ...args);
}

function draw() {
  const feed = pub.feed;
  if (!feed) return;
  drawNotes(feed);
  drawLegend(feed.target_minutes);
  drawTable(feed);
  drawMap(feed).catch((e) => console.warn("map", e));
}

async function refresh() {
  try {
    const r = await fetch("/public/v1/crossings", {headers: pub.etag ? {"If-None-Match": pub.etag} : {}, cache: "no-cache"});
    pub.fetches += 1;
    if (r.status === 200) {
      pub.feed = await r.json();
      pub.etag = r.headers.get("ETag");
      draw();
    } else if (r.status !== 304) {
      throw new Error(`HTTP ${r.status}`);
    }
    $("#error").hidden = true;
  } catch (e) {
    $("#error").textContent = t("error", e.message);
    $("#error").hidden = false;
  }
  const every = (pub.feed && pub.feed.refresh_seconds) || 60;
  clearTimeout(pub.timer);
  pub.timer = setTimeout(refresh, (pub.refreshSeconds || every) * 1000);
}
pub.refresh = refresh;

document.addEventListener("DOMContentLoaded", async () => {
  translate();
  $("#lang").addEventListener("click", () => {
    pub.lang = pub.lang === "zh" ? "en" : "zh";
    localStorage.setItem("gc-public-lang", pub.lang);
    translate();
    draw();
  });
  window.addEventListener("resize", () => pub.chart && pub.chart.resize());
  await refresh();
  pub.ready = true;
});
