"use strict";
// The genro-tasks dashboard. Served as a file (the page's CSP allows no inline script).
// Everything user-controlled is written with textContent: it is never parsed as HTML.
//
// How it stays correct: the event stream subscribes on the server and then sends
// "hello"; on every hello (first connect and each reconnect) and on "resync" (the
// server had to drop changes) the page reloads its listing, so nothing that
// happened before or during a gap is missed. How it stays fast: the table shows
// one server-side page (filtered, searched and sorted by the server), a change
// re-renders only its own row, at most ten times a second.
(() => {
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const PAGE = 100;
  const $ = (id) => document.getElementById(id);
  const state = {
    canCancel: false, canRequeue: false, canCancelGroup: false, statuses: [],
    groups: new Map(),    // group name -> its row (one row per group; members shown when expanded)
    expanded: new Set(), rank: {}, colour: {}, live: new Set(),
    offset: 0, total: 0,
    rows: new Map(),      // task_id -> row of the current page
    known: new Map(),     // task_id -> last status seen (to tell progress from membership changes)
    dirty: new Map(),     // task_id -> newest info not yet drawn
    selected: new Set(),
  };

  function el(tag, cls) { const e = document.createElement(tag); if (cls) e.className = cls; return e; }
  function api(path, options) { return fetch(base + path, options); }
  // The id goes in the query: a browser resolves ".." in a path, even percent-encoded.
  function taskPath(id, action) { return "task" + (action ? "/" + action : "") + "?id=" + encodeURIComponent(id); }

  function elapsed(t) {
    if (!t.started_at) return "";
    const end = t.completed_at ? Date.parse(t.completed_at) : Date.now();
    const s = Math.max(0, (end - Date.parse(t.started_at)) / 1000);
    return s < 60 ? s.toFixed(1) + "s" : Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  }

  // ------------------------------------------------------------------ rows
  function makeRow(id) {
    const tr = el("tr");
    tr.dataset.taskId = id;
    const cells = {};
    for (const name of ["select", "id", "name", "status", "progress", "msg", "elapsed", "worker", "action"]) {
      cells[name] = el("td", name);
      tr.appendChild(cells[name]);
    }
    const box = el("input"); box.type = "checkbox"; box.setAttribute("aria-label", "select");
    box.addEventListener("change", () => { if (box.checked) state.selected.add(id); else state.selected.delete(id); updateTools(); });
    cells.select.appendChild(box);
    const link = el("a"); link.href = "#"; link.addEventListener("click", (e) => { e.preventDefault(); openDetail(id); });
    cells.id.appendChild(link);
    const bar = el("div", "bar"); const fill = el("div"); bar.appendChild(fill);
    const pct = el("span", "pct");
    cells.progress.append(bar, pct);
    const status = el("span", "status"); cells.status.appendChild(status);
    const button = el("button", "cancel"); button.type = "button"; button.textContent = "cancel";
    button.addEventListener("click", () => cancelTasks([id]));
    cells.action.appendChild(button);
    return { tr, cells, box, link, fill, pct, status, button, task: null };
  }

  function draw(row, t) {
    const old = row.task;
    row.task = t;
    if (!old || old.status !== t.status) {
      row.tr.className = t.status;
      row.status.textContent = t.status.toUpperCase();
      row.status.style.color = state.colour[t.status] || "";
      row.fill.style.background = state.colour[t.status] || "";
      row.button.hidden = !(state.canCancel && state.live.has(t.status));
      row.box.disabled = !state.live.has(t.status);
    }
    if (!old) {
      row.link.textContent = t.task_id; row.cells.id.title = t.task_id; row.cells.name.textContent = t.name;
    }
    const p = t.progress == null ? (t.status === "completed" ? 1 : 0) : t.progress;
    const width = (p * 100).toFixed(1) + "%";
    if (row.fill.style.width !== width) { row.fill.style.width = width; row.pct.textContent = Math.round(p * 100) + "%"; }
    const msg = t.error || t.progress_message || "";
    if (row.cells.msg.textContent !== msg) { row.cells.msg.textContent = msg; row.cells.msg.title = msg; }
    row.cells.elapsed.textContent = elapsed(t);
    row.cells.worker.textContent = t.worker_pid == null ? "" : String(t.worker_pid);
  }

  // Within an attempt statuses only move forward; a retry or a requeue starts a later attempt.
  function newer(old, t) {
    const a = t.attempt || 1, b = old ? old.attempt || 1 : 0;
    return !old || a > b || (a === b && state.rank[t.status] >= state.rank[old.status]);
  }

  // ------------------------------------------------------------------ listing
  let loading = null, reloadAgain = false, reloadTimer = null;
  function query() {
    // A group's tasks live in its own row above (see loadGroups): the table lists the others.
    const q = new URLSearchParams({ limit: String(PAGE), offset: String(state.offset), sort: $("sort").value, ungrouped: "1" });
    if ($("filter-status").value) q.set("status", $("filter-status").value);
    if ($("filter-text").value.trim()) q.set("q", $("filter-text").value.trim());
    return q;
  }
  async function reload() {
    if (loading) { reloadAgain = true; return loading; }
    loading = (async () => {
      try {
        do {
          reloadAgain = false;
          const r = await api("tasks?" + query());
          if (!r.ok) throw new Error("listing answered " + r.status);
          showPage(await r.json());
        } while (reloadAgain);
      } finally { loading = null; }
    })();
    return loading;
  }
  // Throttled: a burst of membership changes costs one listing per second at most.
  function scheduleReload() { if (!reloadTimer) reloadTimer = setTimeout(() => { reloadTimer = null; reload().catch(() => {}); }, 1000); }

  function showPage(page) {
    if (page.offset > 0 && page.offset >= page.total) { state.offset = Math.max(0, page.total - PAGE); reloadAgain = true; }
    state.total = page.total;
    const body = $("rows");
    const keep = new Map();
    let i = 0;
    for (const t of page.tasks) {
      let row = state.rows.get(t.task_id);
      if (!row) row = makeRow(t.task_id);
      const pending = state.dirty.get(t.task_id);
      draw(row, pending && newer(t, pending) ? pending : (newer(row.task, t) ? t : row.task));
      state.dirty.delete(t.task_id);
      state.known.set(t.task_id, row.task.status);
      row.box.checked = state.selected.has(t.task_id);
      keep.set(t.task_id, row);
      if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
      i++;
    }
    for (const [id, row] of state.rows) if (!keep.has(id)) row.tr.remove();
    state.rows = keep;
    showCounts(page.counts);
    $("range").textContent = page.total ? `${page.offset + 1}-${page.offset + page.tasks.length} of ${page.total}` : "0 of 0";
    $("prev").disabled = page.offset === 0;
    $("next").disabled = page.offset + page.tasks.length >= page.total;
    $("empty").hidden = page.total > 0;
    updateTools();
  }

  function showCounts(counts) {
    const box = $("counts");
    box.textContent = "";
    for (const s of state.statuses) {
      const span = el("span"); span.dataset.status = s.name; span.textContent = s.name + " " + (counts[s.name] || 0); box.appendChild(span);
    }
  }

  // ------------------------------------------------------------------ groups
  // One row per group (counts, aggregate progress, time left); a click expands it to its tasks.
  let groupTimer = null, groupsLoading = false;
  function scheduleGroups() { if (!groupTimer) groupTimer = setTimeout(() => { groupTimer = null; loadGroups().catch(() => {}); }, 500); }
  function duration(s) { return s == null ? "" : s < 60 ? s.toFixed(0) + "s" : Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s"; }
  async function loadGroups() {
    if (groupsLoading) { scheduleGroups(); return; }
    groupsLoading = true;
    try {
      const r = await api("groups");
      if (!r.ok) return;
      const list = (await r.json()).groups;
      const body = $("group-rows");
      const keep = new Map();
      for (const g of list) {
        let row = state.groups.get(g.group);
        if (!row) row = makeGroupRow(g.group);
        drawGroup(row, g);
        keep.set(g.group, row);
        body.appendChild(row.tr);
        for (const m of row.members) body.appendChild(m);
        if (state.expanded.has(g.group)) loadMembers(row).catch(() => {});
      }
      for (const [name, row] of state.groups) if (!keep.has(name)) { row.tr.remove(); for (const m of row.members) m.remove(); state.expanded.delete(name); }
      state.groups = keep;
      $("groups").hidden = keep.size === 0;
    } finally { groupsLoading = false; }
  }
  function makeGroupRow(name) {
    const tr = el("tr", "group"); tr.dataset.group = name;
    const cells = {};
    for (const c of ["toggle", "gname", "counts", "status", "progress", "eta", "x1", "x2", "action"]) { cells[c] = el("td", c); tr.appendChild(cells[c]); }
    const bar = el("div", "bar"); const fill = el("div"); bar.appendChild(fill); const pct = el("span", "pct");
    cells.progress.append(bar, pct);
    const button = el("button", "cancel"); button.type = "button"; button.textContent = "cancel group";
    button.addEventListener("click", (e) => { e.stopPropagation(); cancelGroup(name).catch(() => {}); });
    cells.action.appendChild(button);
    cells.gname.textContent = name; cells.gname.title = name;
    const row = { tr, cells, fill, pct, button, members: [] };
    tr.addEventListener("click", () => {
      if (state.expanded.has(name)) { state.expanded.delete(name); for (const m of row.members) m.remove(); row.members = []; cells.toggle.textContent = "▸"; }
      else { state.expanded.add(name); cells.toggle.textContent = "▾"; loadMembers(row).catch(() => {}); }
    });
    cells.toggle.textContent = state.expanded.has(name) ? "▾" : "▸";
    return row;
  }
  function drawGroup(row, g) {
    const done = g.completed + g.failed + g.cancelled;
    const live = g.pending + g.running > 0;
    row.tr.className = "group " + (live ? "live" : "finished");
    row.cells.counts.textContent = `${done}/${g.total} done`;
    const parts = [];
    for (const s of ["running", "pending", "failed", "cancelled"]) if (g[s]) parts.push(g[s] + " " + s);
    row.cells.status.textContent = parts.join(" · ") || "completed";
    row.fill.style.width = (g.progress * 100).toFixed(1) + "%";
    row.fill.style.background = state.colour[live ? "running" : (g.failed ? "failed" : "completed")] || "";
    row.pct.textContent = Math.round(g.progress * 100) + "%";
    row.cells.eta.textContent = live ? duration(g.eta) : "";
    row.button.hidden = !(state.canCancelGroup && live);
  }
  async function loadMembers(row) {
    const name = row.tr.dataset.group;
    const r = await api("tasks?" + new URLSearchParams({ group: name, limit: String(PAGE), sort: "created_at" }));
    if (!r.ok || !state.expanded.has(name)) return;
    const page = await r.json();
    for (const m of row.members) m.remove();
    row.members = [];
    let after = row.tr;
    for (const t of page.tasks) {
      const tr = el("tr", "member " + t.status); tr.dataset.taskId = t.task_id;
      const cells = [el("td"), el("td", "id"), el("td", "name"), el("td", "status"), el("td", "progress"), el("td", "msg"), el("td", "elapsed"), el("td", "worker"), el("td")];
      const link = el("a"); link.href = "#"; link.textContent = t.task_id; link.addEventListener("click", (e) => { e.preventDefault(); openDetail(t.task_id); });
      cells[1].appendChild(link); cells[2].textContent = t.name;
      cells[3].textContent = t.status.toUpperCase(); cells[3].style.color = state.colour[t.status] || "";
      const p = t.progress == null ? (t.status === "completed" ? 1 : 0) : t.progress;
      cells[4].textContent = Math.round(p * 100) + "%";
      cells[5].textContent = t.error || t.progress_message || "";
      cells[6].textContent = elapsed(t);
      cells[7].textContent = t.worker_pid == null ? "" : String(t.worker_pid);
      tr.append(...cells);
      after.after(tr); after = tr;
      row.members.push(tr);
    }
    if (page.total > page.tasks.length) {
      const tr = el("tr", "member more"); const td = el("td"); td.colSpan = 9; td.textContent = `… ${page.total - page.tasks.length} more`; tr.appendChild(td);
      after.after(tr); row.members.push(tr);
    }
  }
  async function cancelGroup(name) {
    if (!confirm("Cancel every queued and running task of group " + name + "? Running jobs are hard-killed.")) return;
    const r = await api("group/cancel?name=" + encodeURIComponent(name), { method: "POST", headers: { "X-Genro-Tasks": "1" } });
    if (!r.ok) alert((await r.json()).error || "cancel failed");
    await loadGroups();
  }

  // ------------------------------------------------------------------ live changes
  let frameQueued = false;
  function change(t) {
    const row = state.rows.get(t.task_id);
    const was = state.known.get(t.task_id);
    if (was !== t.status) {  // a new task or a new status: counts and page membership change
      if (state.known.size > 50000) state.known.clear();
      state.known.set(t.task_id, t.status);
      scheduleReload();
    }
    if (t.group != null) { scheduleGroups(); return; }  // shown in its group's row
    if (!row) return;
    const queued = state.dirty.get(t.task_id);
    if (!newer(queued || row.task, t)) return;
    state.dirty.set(t.task_id, t);
    // At most ten redraws a second, each in an animation frame: smooth to the eye, cheap for the page.
    if (!frameQueued) { frameQueued = true; setTimeout(() => requestAnimationFrame(flush), 100); }
  }
  function flush() {
    frameQueued = false;
    for (const [id, t] of state.dirty) { const row = state.rows.get(id); if (row) draw(row, t); }
    state.dirty.clear();
    if (openId !== null && state.rows.has(openId)) fillDetail(state.rows.get(openId).task);
  }

  let source = null, retries = 0, retryTimer = null;
  function connect() {
    const conn = $("conn");
    source = new EventSource(base + "events");
    source.addEventListener("hello", () => { retries = 0; conn.className = "live"; conn.textContent = "live"; reload().catch(() => {}); loadGroups().catch(() => {}); });
    source.addEventListener("resync", () => { reload().catch(() => {}); loadGroups().catch(() => {}); });
    source.addEventListener("task", (e) => change(JSON.parse(e.data)));
    source.addEventListener("end", () => { source.close(); conn.className = "down"; conn.textContent = "server stopped"; });
    source.addEventListener("error", () => {
      // EventSource retries by itself only after a dropped 200; after a non-200 answer
      // (503 at the stream cap, a proxy's 502) it gives up. Either way: we retry, with back-off.
      source.close();
      conn.className = "down"; conn.textContent = "reconnecting";
      const delay = Math.min(15000, 500 * 2 ** retries) * (0.75 + Math.random() / 2);
      retries = Math.min(retries + 1, 10);
      clearTimeout(retryTimer);
      retryTimer = setTimeout(connect, delay);
    });
  }

  // ------------------------------------------------------------------ actions
  async function cancelTasks(ids) {
    const live = ids.filter((id) => { const r = state.rows.get(id); return !r || state.live.has(r.task.status); });
    if (!live.length) return;
    const what = live.length === 1 ? "task " + live[0] : live.length + " tasks";
    if (!confirm("Cancel " + what + "? A running job is killed (its worker is hard-killed).")) return;
    for (const id of live) {
      const row = state.rows.get(id);
      if (row) row.button.disabled = true;
      try {
        const r = await api(taskPath(id, "cancel"), { method: "POST", headers: { "X-Genro-Tasks": "1" } });
        const body = await r.json();
        if (body.task) change(body.task);
        else if (!r.ok) alert(body.error || "cancel failed");
      } finally { if (row) row.button.disabled = false; state.selected.delete(id); }
    }
    updateTools();
  }

  async function requeue(id) {
    if (id === null || !confirm("Run task " + id + " again (a new attempt under the same id)?")) return;
    const r = await api(taskPath(id, "requeue"), { method: "POST", headers: { "X-Genro-Tasks": "1" } });
    const body = await r.json();
    if (!r.ok) { alert(body.error || "requeue failed"); return; }
    change(body.task);
    fillDetail(body.task);
  }

  async function clearFinished() {
    if (!confirm("Forget every finished task?")) return;
    const r = await api("clear", { method: "POST", headers: { "X-Genro-Tasks": "1" } });
    if (!r.ok) alert((await r.json()).error || "clear failed");
    await reload();
  }

  function updateTools() {
    $("cancel-selected").hidden = !(state.canCancel && state.selected.size);
    $("cancel-selected").textContent = "cancel selected (" + state.selected.size + ")";
  }

  // ------------------------------------------------------------------ detail view
  let openId = null;
  const FIELDS = [["status", "status"], ["attempt", "attempt"], ["group", "group"], ["job", "name"], ["worker pid", "worker_pid"], ["priority", "priority"],
    ["timeout", "timeout"], ["created", "created_at"], ["started", "started_at"], ["ended", "completed_at"]];
  function span(a, b) { if (!a) return ""; const s = ((b ? Date.parse(b) : Date.now()) - Date.parse(a)) / 1000; return s.toFixed(3) + " s"; }
  function fillDetail(t) {
    $("detail-title").textContent = t.task_id;
    const dl = $("detail-fields"); dl.textContent = "";
    const add = (k, v) => { const dt = el("dt"); dt.textContent = k; const dd = el("dd"); dd.textContent = v == null ? "" : String(v); dl.append(dt, dd); };
    for (const [label, key] of FIELDS) add(label, t[key]);
    add("queued for", span(t.created_at, t.started_at || t.completed_at));
    add("running for", span(t.started_at, t.completed_at));
    add("progress", t.progress == null ? "" : Math.round(t.progress * 100) + "% " + (t.progress_message || ""));
    add("metadata", JSON.stringify(t.metadata));
    const earlier = (t.previous_errors || []).map((e, i) => `attempt ${i + 1}: ${e}`).join("\n");
    $("detail-error").textContent = (t.error || "") + (t.traceback ? "\n\n" + t.traceback : "") + (earlier ? "\n\nearlier attempts:\n" + earlier : "");
    $("detail").dataset.status = t.status;
    $("detail-requeue").hidden = !(state.canRequeue && !state.live.has(t.status));
  }
  async function openDetail(id) {
    openId = id;
    $("detail").hidden = false;
    $("detail-result").textContent = "";
    const r = await api(taskPath(id));
    const t = await r.json();
    if (!r.ok) { $("detail-title").textContent = id; $("detail-error").textContent = t.error; return; }
    fillDetail(t);
    if (t.status === "completed") {
      const res = await api(taskPath(id, "result"));
      const body = await res.json();
      const text = res.ok ? JSON.stringify(body.result, null, 2) : body.error;
      $("detail-result").textContent = text.length > 4000 ? text.slice(0, 4000) + "\n…" : text;
    }
  }

  // ------------------------------------------------------------------ pool view
  let lastStats = null;
  async function pool() {
    try {
      const r = await api("stats");
      if (!r.ok) return;
      const s = await r.json();
      const now = performance.now();
      const rate = lastStats ? (s.tasks_completed + s.tasks_failed + s.tasks_cancelled - lastStats.done) / ((now - lastStats.at) / 1000) : 0;
      lastStats = { at: now, done: s.tasks_completed + s.tasks_failed + s.tasks_cancelled };
      const box = $("pool"); box.textContent = "";
      const items = [["workers", s.workers_total], ["idle", s.workers_idle], ["busy", s.workers_busy], ["queued", s.tasks_queued],
        ["running", s.tasks_running], ["tasks/s", rate.toFixed(1)], ["restarts", s.worker_restarts], ["crashes", s.worker_crashes]];
      for (const [k, v] of items) { const e = el("span"); e.dataset.stat = k; const b = el("b"); b.textContent = String(v); e.append(k + " ", b); box.appendChild(e); }
    } catch (e) { /* the stream's reconnect shows the outage */ }
  }

  // ------------------------------------------------------------------ start
  async function main() {
    const cfg = await (await api("config")).json();
    state.canCancel = cfg.can_cancel === true;
    state.canRequeue = cfg.can_requeue === true;
    state.canCancelGroup = cfg.can_cancel_group === true;
    state.statuses = cfg.statuses;
    const filter = $("filter-status");
    for (const s of cfg.statuses) {
      state.rank[s.name] = s.rank; state.colour[s.name] = s.colour;
      if (!s.terminal) state.live.add(s.name);
      const o = el("option"); o.value = s.name; o.textContent = s.name; filter.appendChild(o);
    }
    $("clear-finished").hidden = cfg.can_clear !== true;
    const again = () => { state.offset = 0; reload().catch(() => {}); };
    filter.addEventListener("change", again);
    $("sort").addEventListener("change", again);
    let typing = null;
    $("filter-text").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(again, 200); });
    $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); reload().catch(() => {}); });
    $("next").addEventListener("click", () => { state.offset += PAGE; reload().catch(() => {}); });
    $("select-all").addEventListener("change", (e) => {
      for (const [id, row] of state.rows) if (state.live.has(row.task.status)) { row.box.checked = e.target.checked; if (e.target.checked) state.selected.add(id); else state.selected.delete(id); }
      updateTools();
    });
    $("cancel-selected").addEventListener("click", () => cancelTasks([...state.selected]));
    $("clear-finished").addEventListener("click", () => clearFinished().catch(() => {}));
    $("detail-close").addEventListener("click", () => { $("detail").hidden = true; openId = null; });
    $("detail-requeue").addEventListener("click", () => requeue(openId).catch(() => {}));
    loadGroups().catch(() => {});
    reload().catch(() => {});  // show something even while the stream is refused (e.g. at the server's cap)
    connect();  // and the listing is reloaded on each hello, i.e. after the server subscribed
    pool(); setInterval(pool, 2000);
    setInterval(() => { for (const row of state.rows.values()) if (row.task && row.task.status === "running") row.cells.elapsed.textContent = elapsed(row.task); }, 500);
  }
  main();
})();
