// The ReDy Grid dashboard page: one snapshot from /api/state, then one per change over /events.
"use strict";

const fmt = (v, digits = 1) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));
let priceChart = null;
let balanceChart = null;

function chart(el, label, stroke, data) {
  const opts = {
    width: 420, height: 160,
    scales: { x: { time: false } },
    axes: [{ label: "epochs before the latest" }, {}],
    series: [{ label: "epoch" }, { label, stroke, width: 2, points: { show: true } }],
  };
  return new uPlot(opts, data, el);
}

function renderTable(nodes) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren(...nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.dataset.node = n.node;
    tr.className = n.liveness;
    const cells = [
      [n.node, "text"], [n.kind || "-", "text"], [fmt(n.production_kw)], [fmt(n.consumption_kw)],
      [fmt(n.net_kw)], [fmt(n.price_eur_mwh, 2)], [n.status || "-", "text"],
      [`${n.units_online}/${n.units_total}`],
      [n.health ? `${n.health.epochs_cleared}/${n.health.epochs_missed}` : "-"],
      [n.liveness, "text liveness"],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function renderOverlay(snap) {
  const svg = document.getElementById("overlay");
  const ns = "http://www.w3.org/2000/svg";
  const live = Object.fromEntries(snap.nodes.map((n) => [n.node, n.liveness]));
  const pos = {};
  snap.vertices.forEach((v, i) => {
    const a = (2 * Math.PI * i) / snap.vertices.length - Math.PI / 2;
    pos[v] = [130 * Math.cos(a), 130 * Math.sin(a)];
  });
  const items = [];
  for (const [a, b] of snap.edges) {
    const l = document.createElementNS(ns, "line");
    [["x1", pos[a][0]], ["y1", pos[a][1]], ["x2", pos[b][0]], ["y2", pos[b][1]]]
      .forEach(([k, v]) => l.setAttribute(k, v));
    items.push(l);
  }
  for (const v of snap.vertices) {
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", pos[v][0]); c.setAttribute("cy", pos[v][1]);
    c.setAttribute("r", snap.vertices.length > 40 ? 2.5 : 5);
    c.setAttribute("class", live[v] || "unknown");
    const t = document.createElementNS(ns, "title"); t.textContent = v; c.appendChild(t);
    items.push(c);
    if (snap.vertices.length <= 40) {
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", pos[v][0] + 6); label.setAttribute("y", pos[v][1] + 2);
      label.textContent = v;
      items.push(label);
    }
  }
  svg.replaceChildren(...items);
}

function renderCharts(epochs) {
  // epoch numbers are large (UNIX time / epoch length): count back from the latest instead
  const last = epochs.length ? epochs[epochs.length - 1].epoch : 0;
  const x = epochs.map((e) => e.epoch - last);
  const price = [x, epochs.map((e) => e.price_eur_mwh)];
  const balance = [x, epochs.map((e) => e.balance_kw)];
  if (priceChart === null) {
    priceChart = chart(document.getElementById("price-chart"), "EUR/MWh", "#1f77b4", price);
    balanceChart = chart(document.getElementById("balance-chart"), "kW", "#c0392b", balance);
  } else {
    priceChart.setData(price);
    balanceChart.setData(balance);
  }
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
let planPriceChart = null;
let planNodesChart = null;
let planNodes = "";

function renderPlan(plan) {
  const summary = document.getElementById("plan-summary");
  if (!plan) { summary.textContent = "(no plan: plan_intervals not set)"; return; }
  summary.textContent = `from interval ${plan.start}, ${plan.offers} offers,`
    + ` held by ${plan.agree} of ${plan.of} nodes (digest ${plan.digest.slice(0, 12)})`;
  const price = [plan.hours, plan.price_eur_mwh];
  const names = Object.keys(plan.injection_kw).sort();
  const nodes = [plan.hours, ...names.map((n) => plan.injection_kw[n])];
  const axes = [{ label: "hours ahead" }, {}];
  if (planPriceChart === null) {
    planPriceChart = new uPlot({
      width: 420, height: 160, scales: { x: { time: false } }, axes,
      series: [{ label: "h" }, { label: "EUR/MWh", stroke: "#1f77b4", width: 2 }],
    }, price, document.getElementById("plan-price-chart"));
  } else {
    planPriceChart.setData(price);
  }
  if (planNodesChart === null || planNodes !== names.join(",")) {
    if (planNodesChart !== null) planNodesChart.destroy();
    planNodes = names.join(",");
    planNodesChart = new uPlot({
      width: 420, height: 200, scales: { x: { time: false } }, axes,
      series: [{ label: "h" }, ...names.map((n, i) => (
        { label: n, stroke: PALETTE[i % PALETTE.length], width: 1.5 }))],
    }, nodes, document.getElementById("plan-nodes-chart"));
  } else {
    planNodesChart.setData(nodes);
  }
}

function render(snap) {
  const cp = snap.common_price;
  document.getElementById("common-price").textContent = cp
    ? `${fmt(cp.price_eur_mwh, 2)} EUR/MWh (epoch ${cp.epoch}, ${cp.agree} of ${cp.of} nodes)`
    : "-";
  document.getElementById("grid-balance").textContent =
    snap.grid_balance_kw === null ? "-" : `${fmt(snap.grid_balance_kw)} kW`;
  renderTable(snap.nodes);
  renderOverlay(snap);
  renderCharts(snap.epochs);
  renderPlan(snap.plan);
  document.body.dataset.version = snap.version;
}

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("/events");
  source.onopen = () => { status.textContent = "live"; status.className = "up"; };
  source.onerror = () => { status.textContent = "reconnecting"; status.className = "stale"; };
  source.onmessage = (ev) => render(JSON.parse(ev.data));
}

fetch("/api/state").then((r) => r.json()).then(render).finally(connect);
