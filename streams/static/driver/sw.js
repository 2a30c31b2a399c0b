// The driver's page offline: its assets kept at install, the page and its state network-first (the
// cached copy when there is no network), the event stream never cached. Scope /d/.
"use strict";

const CACHE = "gc-driver-v1";
const ASSETS = [
  "/driver/driver.js",
  "/driver/driver.css",
  "/static/vendor/echarts-4.9.0/echarts.min.js",
  "/static/vendor/echarts-4.9.0/china.json",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(ASSETS)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((names) => Promise.all(names.filter((n) => n.startsWith("gc-driver-") && n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== self.location.origin || url.pathname.endsWith("/events")) return;
  if (url.pathname.startsWith("/d/") && url.pathname !== "/d/sw.js") {
    event.respondWith(networkFirst(req, url));
  } else if (ASSETS.includes(url.pathname)) {
    event.respondWith(caches.match(req).then((hit) => hit || fetch(req).then((r) => keepCopy(req, r))));
  }
});

async function networkFirst(req, url) {
  const cache = await caches.open(CACHE);
  try {
    const r = await fetch(req);
    if (r.status === 404) await cache.delete(url.pathname);  // a link no longer valid: nothing kept of it
    if (r.ok && !url.pathname.endsWith("/state")) await cache.put(url.pathname, r.clone());
    if (r.ok && url.pathname.endsWith("/state")) {  // kept with the time the phone saw it
      const body = await r.clone().text();
      await cache.put(url.pathname, new Response(body, {
        headers: {"Content-Type": "application/json", "X-GC-Seen-At": String(Date.now())}}));
    }
    return r;
  } catch (e) {
    const hit = await cache.match(url.pathname);
    if (hit) return hit;
    throw e;
  }
}

async function keepCopy(req, r) {
  if (r.ok) (await caches.open(CACHE)).put(req, r.clone());
  return r;
}
