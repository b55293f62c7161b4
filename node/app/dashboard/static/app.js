"use strict";
// The smartregion hub dashboard: read-only views over the hub's JSON API.
const COLORS = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"];
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function when(ms) {
  if (!ms) return "–";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(path) {
  const response = await fetch(`/api/${path}`, { credentials: "same-origin" });
  if (response.status === 401) throw new Error("unauthenticated");
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function table(id, headers, rows) {
  const t = $(id);
  t.replaceChildren();
  const head = el("tr");
  headers.forEach((h) => head.append(el("th", {}, h)));
  t.append(head);
  if (!rows.length) {
    const empty = el("tr");
    empty.append(el("td", { colspan: headers.length, class: "muted" }, "none yet"));
    t.append(empty);
  }
  for (const cells of rows) {
    const tr = el("tr");
    for (const cell of cells) {
      const td = el("td", cell && cell.cls ? { class: cell.cls } : {});
      td.textContent = cell && typeof cell === "object" ? cell.text : cell ?? "–";
      tr.append(td);
    }
    t.append(tr);
  }
}

function renderIdentity(o) {
  $("hub-name").textContent = `${o.municipality_name} hub`;
  $("hub-id").textContent = o.hub_id;
  $("health").textContent = o.health;
  $("health").className = `pill state-${o.health}`;
  const readings = o.counts.reduce((sum, c) => sum + c.readings, 0);
  const rejected = Object.values(o.rejections).reduce((a, b) => a + b, 0);
  const cards = [["Municipality", `${o.municipality_name} (${o.municipality})`], ["County", o.county],
    ["Sensors", `${o.sensors_active} active, ${o.sensors_revoked} revoked`], ["Readings stored", readings.toLocaleString("en")],
    ["Frames rejected", rejected], ["gRPC", o.grpc_address], ["TLS", o.tls ? "on" : "OFF"], ["Version", o.version]];
  const cert = o.certificate;
  if (cert) cards.push(["TLS certificate", `${Math.floor(cert.days_left)} days left`]);
  if (cert) cards.push(["TLS issuer (sensors trust it)", cert.issuer_days_left === null
    ? "none yet: the next renewal creates it" : `${Math.floor(cert.issuer_days_left / 365)} years left`]);
  $("certificate-warning").hidden = !(cert && cert.warning);
  $("certificate-warning").textContent = cert && cert.warning ? cert.warning : "";
  $("identity").replaceChildren(...cards.map(([label, value]) => {
    const card = el("div", { class: "card" });
    card.append(el("div", { class: "value" }, String(value)), el("div", { class: "label" }, label));
    return card;
  }));
}

function renderChart(chart) {
  $("chart-title").textContent = chart.title + (chart.partial ? " — partial: some hubs did not answer" : "");
  const W = 720, H = 320, L = 44, R = 12, T = 12, B = 34;
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": chart.title, "data-series": chart.series.length });
  const values = chart.series.flatMap((s) => s.values.filter((v) => v !== null));
  const max = Math.max(1, ...values) * 1.1;
  const x = (i) => L + (chart.buckets.length < 2 ? 0 : (i * (W - L - R)) / (chart.buckets.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    svg.append(el("svg:line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#dfe5ea" }));
    svg.append(el("svg:text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#667788" }, v.toFixed(0)));
  }
  chart.buckets.forEach((b, i) => svg.append(el("svg:text", { x: x(i), y: H - 12, "text-anchor": "middle", "font-size": 11, fill: "#667788" }, b.slice(5) || b)));
  chart.series.forEach((s, n) => {
    const points = s.values.map((v, i) => (v === null ? null : `${x(i)},${y(v)}`)).filter(Boolean).join(" ");
    svg.append(el("svg:polyline", { points, fill: "none", stroke: COLORS[n % COLORS.length], "stroke-width": 2, class: "series", "data-group": s.group }));
  });
  $("chart").replaceChildren(svg);
  $("legend").replaceChildren(...chart.series.map((s, n) => {
    const item = el("span");
    item.append(el("span", { class: `swatch sw${n % COLORS.length}` }), document.createTextNode(s.name));
    return item;
  }));
}

function renderMap(map) {
  const W = 360, H = 470, pad = 10, bottom = 50;  // room below for labels pushed down
  const pts = map.municipalities;
  const lats = pts.map((p) => p.lat), lons = pts.map((p) => p.lon);
  const [minLat, maxLat, minLon, maxLon] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);  // equirectangular, scaled at mid latitude
  const scale = Math.min((W - 2 * pad) / ((maxLon - minLon) * k), (H - pad - bottom) / (maxLat - minLat));
  const px = (p) => pad + (p.lon - minLon) * k * scale, py = (p) => H - bottom - (p.lat - minLat) * scale;
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Municipalities of Norway and this region's hubs" });
  for (const p of pts.filter((p) => !p.role)) svg.append(el("svg:circle", { cx: px(p), cy: py(p), r: 1.6, fill: "#c5cfd8" }));
  // Hubs sit close together in the south-east: place labels top-down, pushing each below any
  // label it would overlap, with a leader line back to its dot.
  const placed = [];
  const hubs = pts.filter((p) => p.role).sort((a, b) => py(a) - py(b));
  for (const p of hubs) {
    const color = p.role === "self" ? "#0b6e99" : p.state === "reachable" ? "#2e7d32" : "#b3261e";
    const dot = el("svg:circle", { cx: px(p), cy: py(p), r: p.role === "self" ? 6 : 5, fill: color, class: "hub-dot", "data-number": p.number });
    dot.append(el("svg:title", {}, `${p.name} (${p.number}) — ${p.role === "self" ? "this hub" : p.state}`));
    const box = { x: px(p) + 10, y: py(p) + 4, w: p.name.length * 6.6 };
    while (placed.some((q) => Math.abs(q.y - box.y) < 13 && box.x < q.x + q.w && q.x < box.x + box.w)) box.y += 13;
    placed.push(box);
    if (box.y !== py(p) + 4) svg.append(el("svg:line", { x1: px(p), y1: py(p), x2: box.x - 2, y2: box.y - 4, stroke: "#99a5b1" }));
    svg.append(dot, el("svg:text", { x: box.x, y: box.y, "font-size": 11, fill: "#1d2733" }, p.name));
  }
  $("map").replaceChildren(svg);
}

// The lifetime budget from the provider's ledger; a consumer hub does not keep it.
function privacyBudget(a) {
  if (!a.dp_budget) return "–";
  if (a.dp_remaining === null) return `ε ${a.dp_budget} (ledger at the provider)`;
  return `ε ${a.dp_spent} of ${a.dp_budget} spent, ${a.dp_remaining} left`;
}

async function load() {
  const [overview, peers, agreements, sensors, audit] = await Promise.all(["overview", "peers", "agreements", "sensors", "audit"].map(api));
  renderIdentity(overview);
  table("peers", ["municipality", "hub id", "state", "last contact", "latency", "pending", "last error"], peers.map((p) => [
    `${p.municipality_name} (${p.municipality})`, { text: p.hub_id, cls: "mono" }, { text: p.state_text || p.state, cls: `state-${p.state}` },
    when(p.last_contact_ms), p.latency_ms ? `${p.latency_ms.toFixed(1)} ms` : "–", p.pending_deliveries, p.last_error || ""]));
  table("agreements", ["agreement", "role", "counterparty", "purpose", "data", "state", "signatures verified", "queries today", "privacy budget (lifetime)", "valid until"],
    agreements.map((a) => [{ text: a.agreement_id.replace("urn:uuid:", "").slice(0, 8) + "…", cls: "mono" }, a.role, a.counterparty,
      a.purpose, `${a.datasets.join(",")}: ${a.metrics.join(",")}`, { text: a.state, cls: `state-${a.state}` },
      a.fully_signed ? "both ✓" : `${a.signatures_verified.length} of 2`, `${a.queries_today} / ${a.queries_per_day}`,
      privacyBudget(a), when(a.valid_until_ms)]));
  table("sensors", ["sensor", "label", "dataset", "confidentiality", "readings", "last seen", "rejected", "state"], sensors.map((s) => [
    { text: s.sensor_id, cls: "mono" }, s.label, s.dataset,
    { text: s.lorawan_dev_eui ? `${s.confidentiality} (LoRaWAN)` : s.confidentiality, cls: `state-${s.confidentiality}` },
    s.readings.toLocaleString("en"), when(s.last_seen_ms), s.frames_rejected,
    { text: s.active ? "active" : "revoked", cls: s.active ? "state-active" : "state-revoked" }]));
  table("audit", ["when", "who", "action", "on", "outcome", "detail"], audit.map((e) => [
    when(e.at_ms), { text: e.actor.slice(0, 12), cls: "mono" }, e.action, { text: (e.subject || "").replace("urn:uuid:", "").slice(0, 8), cls: "mono" },
    { text: e.outcome, cls: e.outcome === "ok" ? "state-ok" : "state-denied" }, e.detail]));
  const [chart, map] = await Promise.all([api("chart"), api("map")]);
  renderChart(chart);
  renderMap(map);
  document.body.dataset.loaded = "true";
}

async function show() {
  const session = await (await fetch("/api/session", { credentials: "same-origin" })).json();
  $("login").hidden = session.authenticated;
  $("dashboard").hidden = !session.authenticated;
  $("logout").hidden = !session.authenticated || session.read_only;
  if (session.authenticated) await load();
}

async function login(token) {
  const response = await fetch("/api/login", { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }) });
  if (!response.ok) {
    $("login-error").textContent = (await response.json()).message;
    return;
  }
  $("login-error").textContent = "";
  await show();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => { event.preventDefault(); login($("token").value.trim()); });
  $("logout").addEventListener("click", async () => { await fetch("/api/logout", { method: "POST", credentials: "same-origin" }); show(); });
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {  // a login link: the token never reaches the server's logs
    history.replaceState(null, "", location.pathname);
    login(fragment.get("token"));
  } else {
    show().catch((error) => { $("login-error").textContent = String(error); });
  }
  setInterval(() => { if (!$("dashboard").hidden) load().catch(() => {}); }, 30000);
});
