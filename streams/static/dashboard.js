// The operators' live page: the state arrives as the first server-sent event, then each panel's
// changes as events of their own (streams/dashboard.py). No page reloads, no CDN.
"use strict";
// By rank (models.records.LEVEL_RANK): the server sends ranks, never level names to compare.
const LEVEL = [{label: "低 low", color: "#b7dfb9"}, {label: "中 medium", color: "#f6b54a"}, {label: "高 high", color: "#d7301f"}];
// The page's token is in its HttpOnly cookie (set by the first visit with ?token=…), sent with
// every same-origin request; the script never sees it.
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const minutes = (s) => s == null ? "—" : `${(s / 60).toFixed(1)} min`;

const gc = window.gc = {ready: false, levels: {}, labels: {}, board: [], sort: {key: "vehicles_present", desc: true},
                        lastLevels: null, charts: {}};

async function drawMap() {
  const geo = await (await fetch("static/vendor/echarts-4.9.0/china-cities.json")).json();
  for (const f of geo.features) {  // regions keyed by adcode: the page and the server speak adcodes
    gc.labels[f.id] = f.properties.name;
    f.properties.name = f.id;
  }
  gc.features = geo.features.map((f) => f.id);
  echarts.registerMap("gc-cities", geo);
  gc.map = echarts.init($("#map"));
  gc.map.setOption({
    animation: false,
    tooltip: {trigger: "item", formatter: tooltip},
    visualMap: {type: "piecewise", seriesIndex: 0, orient: "vertical", left: 12, bottom: 12,
                pieces: LEVEL.map((l, i) => ({value: i, label: l.label, color: l.color})),
                textStyle: {fontSize: 12}},
    geo: {map: "gc-cities", roam: true, layoutCenter: ["50%", "54%"], layoutSize: "128%",
          itemStyle: {borderColor: "#ffffff", borderWidth: 0.5, areaColor: LEVEL[0].color},
          emphasis: {itemStyle: {areaColor: "#8ecae6"}, label: {show: false}}},
    series: [
      {name: "risk", type: "map", geoIndex: 0, data: gc.features.map((id) => ({name: id, value: 0}))},
      {name: "passes", type: "scatter", coordinateSystem: "geo", data: [], zlevel: 1,
       symbolSize: (v) => Math.min(24, 3 + Math.sqrt(v[2]) * 0.9),  // rings: the region's colour shows through
       itemStyle: {color: "rgba(31, 111, 235, 0.12)", borderColor: "#1f6feb", borderWidth: 1.2}},
      {name: "checkpoints", type: "scatter", coordinateSystem: "geo", symbol: "diamond", symbolSize: 6, data: [],
       zlevel: 2, itemStyle: {color: "#263238"}},
    ],
  });
  window.addEventListener("resize", () => Object.values(gc.charts).concat([gc.map]).forEach((c) => c.resize()));
}

function tooltip(p) {
  if (p.seriesName === "risk" || p.componentType === "geo") {
    const level = gc.levels[p.name] || 0;
    return `${esc(gc.labels[p.name] || p.name)} <small>${esc(p.name)}</small><br>${LEVEL[level].label}`;
  }
  if (p.seriesName === "passes") return `${p.value[2]} active passes here`;
  return `${esc(p.data.id)}<br>${esc(p.data.label)}`;
}

function paintLevels(changed) {
  Object.assign(gc.levels, changed);
  gc.map.setOption({series: [{name: "risk", data: gc.features.map((id) => ({name: id, value: gc.levels[id] || 0}))}]});
}

function paintDeclared(declared) {
  $("#declared").innerHTML = declared.filter((d) => d.rank > 0).map((d) =>
    `<li><b style="color:${LEVEL[d.rank].color}">${esc(d.level)}</b>${esc(d.name)} <small>${esc(d.adcode)}</small></li>`
  ).join("") || "<li>no region above low risk</li>";
}

function paintPlaces(passes, checkpoints) {
  const update = [];
  if (passes) update.push({name: "passes", data: passes});
  if (checkpoints) update.push({name: "checkpoints", data: checkpoints.map(([id, label, lon, lat]) => ({id, label, value: [lon, lat]}))});
  gc.map.setOption({series: update});
  if (passes) {
    gc.activePasses = passes.reduce((n, p) => n + p[2], 0);
    paintTotals();
  }
}

function paintBoard(rows) {
  if (rows) gc.board = rows;
  const {key, desc} = gc.sort;
  const sorted = [...gc.board].sort((a, b) => {
    const x = a[key] ?? -1, y = b[key] ?? -1;
    return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1);
  });
  $("#board tbody").innerHTML = sorted.map((r) => `
    <tr data-checkpoint="${esc(r.checkpoint_id)}" class="${r.over_target ? "flagged" : ""}">
      <td>${esc(r.checkpoint_id)}<span class="sub">${esc(r.name)}</span></td>
      <td class="num waiting">${r.vehicles_present}</td>
      <td class="num dwell">${minutes(r.median_dwell_seconds)}${r.over_target ? " ⚠" : ""}</td>
      <td class="num">${r.recent_departures}</td>
    </tr>`).join("");
  document.querySelectorAll("#board th").forEach((th) => {
    th.className = (th.dataset.key === key ? (desc ? "sorted-desc" : "sorted-asc") : "") + (th.classList.contains("num") ? " num" : "");
  });
}

document.querySelectorAll("#board th").forEach((th) => th.addEventListener("click", () => {
  gc.sort = {key: th.dataset.key, desc: gc.sort.key === th.dataset.key ? !gc.sort.desc : true};
  paintBoard();
}));

function chart(id) {
  return gc.charts[id] || (gc.charts[id] = echarts.init($(`#${id}`)));
}

function paintFlow(flow) {
  if (!flow || !flow.hours) return;
  const hours = [...new Set(flow.hours.map((h) => h[0]))];
  const classes = ["P0", "P1", "P2", "P3", "rejected"];
  const colours = ["#0f5132", "#2e8b57", "#5aa9e6", "#7a6ff0", "#d7301f"];
  const series = classes.map((c, i) => ({
    name: c, type: "bar", stack: "all", itemStyle: {color: colours[i]},
    data: hours.map((h) => flow.hours.filter((r) => r[0] === h && (c === "rejected" ? r[1] === "rejected" : r[1] === "approved" && r[2] === c))
      .reduce((n, r) => n + r[3], 0)),
  }));
  const small = {left: 44, right: 10, top: 28, bottom: 34};
  chart("hours").setOption({animation: false, tooltip: {trigger: "axis"}, legend: {top: 0, itemWidth: 10, itemHeight: 8, textStyle: {fontSize: 11}},
    grid: small, xAxis: {type: "category", data: hours.map((h) => h.slice(5, 16).replace("T", " ")), axisLabel: {fontSize: 10}},
    yAxis: {type: "value", axisLabel: {fontSize: 10}}, series}, true);
  const reasons = Object.entries(flow.rejections || {}).slice(0, 8).reverse();
  chart("rejections").setOption({animation: false, tooltip: {}, grid: {left: 130, right: 30, top: 6, bottom: 20},
    xAxis: {type: "value", axisLabel: {fontSize: 10}}, yAxis: {type: "category", data: reasons.map((r) => r[0]), axisLabel: {fontSize: 11}},
    series: [{type: "bar", data: reasons.map((r) => r[1]), itemStyle: {color: "#d7301f"}, label: {show: true, position: "right", fontSize: 10}}],
    graphic: reasons.length ? [] : [{type: "text", left: "center", top: "middle", style: {text: "no rejections", fill: "#889", fontSize: 13}}]}, true);
  const statuses = Object.entries(flow.statuses || {}).sort((a, b) => b[1] - a[1]);
  chart("statuses").setOption({animation: false, tooltip: {}, grid: {left: 90, right: 40, top: 6, bottom: 20},
    xAxis: {type: "value", axisLabel: {fontSize: 10}}, yAxis: {type: "category", data: statuses.map((s) => s[0]).reverse(), axisLabel: {fontSize: 11}},
    series: [{type: "bar", data: statuses.map((s) => s[1]).reverse(), itemStyle: {color: "#0f5132"}, label: {show: true, position: "right", fontSize: 10}}]}, true);
  gc.flow = flow;
  paintTotals();
}

function paintTotals() {
  const flow = gc.flow || {hours: []};
  const sum = (pred) => flow.hours.filter(pred).reduce((n, r) => n + r[3], 0);
  $("#totals").innerHTML = [
    ["decisions", sum(() => true)], ["approved", sum((r) => r[1] === "approved")],
    ["rejected", sum((r) => r[1] === "rejected")], ["active passes", gc.activePasses ?? 0],
  ].map(([k, v]) => `<div>${k} <b>${v.toLocaleString()}</b></div>`).join("");
}

function paintLag(lag) {
  $("#lag").innerHTML = "<tr><th>topic</th><th class=num>worker</th><th class=num>projector</th></tr>" +
    [...new Set(Object.values(lag || {}).flatMap((t) => Object.keys(t)))].map((topic) => {
      const [worker, projector] = Object.values(lag);
      const cell = (g) => g && topic in g ? g[topic] : "";
      return `<tr><td>${esc(topic)}</td><td class=num>${cell(worker)}</td><td class=num>${cell(projector)}</td></tr>`;
    }).join("");
}

function paintDead(dead) {
  const total = Object.values(dead.by_topic).reduce((a, b) => a + b, 0);
  $("#dead-count").textContent = total ? `(${total}: ${Object.entries(dead.by_topic).map(([t, n]) => `${t} ${n}`).join(", ")})` : "(none)";
  $("#dead").innerHTML = dead.latest.slice(0, 6).map((d) =>
    `<tr><td>${esc(d.topic)}<span class="sub">${esc(d.key)}</span></td><td class="err">${esc(d.error)}</td></tr>`).join("");
}

function connect() {
  const source = new EventSource("events");
  source.onopen = () => $("#live").className = "live on";
  source.onerror = () => $("#live").className = "live off";  // EventSource reconnects by itself
  source.addEventListener("state", (e) => {
    const s = JSON.parse(e.data);
    gc.levels = {};
    paintLevels(s.levels); paintDeclared(s.declared); paintPlaces(s.passes, s.checkpoints);
    paintBoard(s.board); paintFlow(s.flow); paintLag(s.lag); paintDead(s.dead);
    gc.ready = true;
    gc.firstPaint = performance.now();
  });
  source.addEventListener("levels", (e) => {
    const m = JSON.parse(e.data);
    paintLevels(m.changed); paintDeclared(m.declared);
    const seen = gc.lastLevels = {received: Date.now() / 1000, sent: m.sent, changed: m.changed};
    requestAnimationFrame(() => { seen.painted = Date.now() / 1000; });  // the frame that shows it
  });
  source.addEventListener("passes", (e) => paintPlaces(JSON.parse(e.data), null));
  source.addEventListener("checkpoints", (e) => paintPlaces(null, JSON.parse(e.data)));
  source.addEventListener("board", (e) => paintBoard(JSON.parse(e.data)));
  source.addEventListener("flow", (e) => paintFlow(JSON.parse(e.data)));
  source.addEventListener("lag", (e) => paintLag(JSON.parse(e.data)));
  source.addEventListener("dead", (e) => paintDead(JSON.parse(e.data)));
}

// --- search: a pass's timeline ------------------------------------------------------------------
$("#search").addEventListener("submit", async (e) => {
  e.preventDefault();
  const q = $("#q").value.trim();
  if (!q) return;
  const answer = await (await fetch(`search?q=${encodeURIComponent(q)}`)).json();
  $("#result").innerHTML = answer.found.length ? answer.found.map(story).join("") : `<p>nothing found for <b>${esc(q)}</b></p>`;
  $("#result-panel").classList.remove("hidden");
});
$("#close").addEventListener("click", () => $("#result-panel").classList.add("hidden"));

function story(s) {
  const p = s.pass, d = s.shipment;
  const head = p ? `<div class="big">${esc(p.pass_id)}</div>
      <div>${esc(p.plate)} · class ${esc(p.priority)} · ${esc(p.trip)} trip · <span class="badge">${esc(p.status)}</span></div>
      <div>valid ${esc(p.valid_from)} → ${esc(p.valid_until)}</div>
      <div>route ${p.route.map(esc).join(" → ")} (${p.distance_km} km)</div>` : "";
  const decision = d ? `<div>shipment ${esc(d.shipment_id)} · <span class="badge ${d.decision === "rejected" ? "rejected" : ""}">${esc(d.decision)}</span> ${esc(d.decided_at)}
      <ul>${d.reasons.map((r) => `<li>${esc(r)}</li>`).join("")}</ul></div>` : "";
  const events = s.events.map((e) => `<li class="${e.dwell_exceeded || e.status === "held" || e.status === "suspended" ? "warn" : ""}">
      <span class="status">${esc(e.status)}</span> ${esc(e.at)}
      ${e.checkpoint_id ? `at ${esc(e.checkpoint_id)}` : ""}
      ${e.dwell_seconds != null ? `· dwell <b>${minutes(e.dwell_seconds)}</b>${e.dwell_exceeded ? " ⚠ over 15 min" : ""}` : ""}
      ${e.reason ? `<span class="sub">${esc(e.reason)}</span>` : ""}</li>`).join("");
  return `<div class="pass-card">${head}${decision}<ol class="timeline">${events}</ol></div>`;
}

drawMap().then(connect);
