// kdaudit web UI: plain JavaScript against the JSON API (/v1). The API key lives in
// sessionStorage (this tab only) and goes out as `Authorization: Bearer <key>`.
"use strict";

(function () {
  const KEY = "kdaudit.apiKey";
  const FINISHED = ["succeeded", "failed", "cancelled"];
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------ API plumbing

  class ApiError extends Error {
    constructor(message, status, problem) {
      super(message);
      this.status = status;
      this.problem = problem || {};
    }
  }

  function getKey() {
    try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; }
  }
  function setKey(k) {
    try { k ? sessionStorage.setItem(KEY, k) : sessionStorage.removeItem(KEY); } catch (e) { /* private mode */ }
  }

  // A problem+json answer as one readable message (plus the field errors, if any).
  function problemMessage(status, body, fallback) {
    if (body && typeof body === "object") {
      let msg = body.detail || body.title || fallback;
      if (status === 413 && body.max_bytes) msg += ` (limit ${formatBytes(body.max_bytes)})`;
      return msg;
    }
    return fallback;
  }

  async function api(method, path, opts) {
    opts = opts || {};
    const headers = Object.assign({ Accept: opts.accept || "application/json" }, opts.headers || {});
    const key = opts.key !== undefined ? opts.key : getKey();
    if (key) headers.Authorization = "Bearer " + key;
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.form) {
      body = opts.form; // the browser sets the multipart boundary
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
    } catch (e) {
      throw new ApiError("Cannot reach the kdaudit server. Check your connection and try again.", 0);
    }
    if (!res.ok) {
      let problem = null;
      try { problem = await res.json(); } catch (e) { /* not JSON */ }
      const fallback = `${res.status} ${res.statusText || "error"}`;
      throw new ApiError(problemMessage(res.status, problem, fallback), res.status, problem);
    }
    if (opts.raw) return res;
    const type = res.headers.get("content-type") || "";
    return type.includes("json") ? res.json() : res.text();
  }

  function showError(el, err) {
    el.replaceChildren();
    const p = document.createElement("p");
    p.style.margin = "0";
    p.textContent = err instanceof ApiError ? err.message : String(err && err.message ? err.message : err);
    el.appendChild(p);
    const errors = err && err.problem && Array.isArray(err.problem.errors) ? err.problem.errors : [];
    if (errors.length > 1) {
      const ul = document.createElement("ul");
      for (const e of errors.slice(0, 8)) {
        const li = document.createElement("li");
        li.textContent = `${(e.loc || []).filter((x) => x !== "body").join(".")}: ${e.msg}`;
        ul.appendChild(li);
      }
      el.appendChild(ul);
    }
    el.hidden = false;
  }
  function clear(el) { el.hidden = true; el.replaceChildren(); }

  function formatBytes(n) {
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
    return n + " bytes";
  }
  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function randomKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) if (c) node.appendChild(c);
    return node;
  }

  function signOut(message) {
    setKey("");
    if (document.body.dataset.page === "index") {
      stopPolling();
      $("app").hidden = true;
      $("signin").hidden = false;
      $("account").hidden = true;
      if (message) showError($("signin-error"), message);
      $("api-key").focus();
    } else {
      window.location.href = "/";
    }
  }

  // ------------------------------------------------------------ index page

  let teachers = new Map();
  let pollTimer = null;

  function stopPolling() {
    if (pollTimer) clearTimeout(pollTimer);
    pollTimer = null;
  }

  function flash(text) {
    const f = $("flash");
    f.textContent = text;
    f.hidden = false;
  }

  async function enterApp() {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("account").hidden = false;
    await Promise.all([loadTeachers(), refreshAudits()]);
  }

  async function loadTeachers(selectId) {
    const select = $("audit-teacher");
    try {
      const doc = await api("GET", "/v1/teachers?limit=100");
      teachers = new Map(doc.items.map((t) => [t.id, t]));
      const keep = selectId || select.value;
      select.replaceChildren();
      if (!doc.items.length) {
        select.appendChild(el("option", { value: "", text: "— upload a teacher first —" }));
      }
      for (const t of doc.items) {
        const opt = el("option", { value: t.id, text: `${t.filename} · ${t.architecture || t.format} · ${t.dataset} · ${t.id.slice(0, 8)}` });
        select.appendChild(opt);
      }
      if (keep && teachers.has(keep)) select.value = keep;
    } catch (e) {
      if (e.status === 401) return signOut(e);
      showError($("audit-error"), e);
    }
  }

  function progressText(a) {
    const p = a.progress || {};
    let t = `${p.runs_done || 0}/${p.runs_total || 0} runs`;
    if (a.status === "running" && p.current_run) {
      t += ` · ${p.current_run}`;
      if (p.epoch != null && p.epochs) t += ` epoch ${p.epoch}/${p.epochs}`;
    }
    if (a.cancel_requested && !FINISHED.includes(a.status)) t += " · cancelling";
    return t;
  }

  function auditItem(a) {
    const t = teachers.get(a.teacher_id);
    const cfg = a.config || {};
    const what = [
      a.kind === "defend" ? `defence comparison (${(cfg.defences || []).join(", ")})` : null,
      t ? `${t.architecture || t.format} (${t.filename})` : `teacher ${a.teacher_id.slice(0, 8)}`,
      cfg.dataset,
      cfg.students ? `students ${cfg.students.join(", ")}` : null,
      cfg.seeds ? `${cfg.seeds} seed${cfg.seeds > 1 ? "s" : ""}` : null,
      cfg.schedule && cfg.schedule.epochs ? `${cfg.schedule.epochs} epochs` : null,
      cfg.threat && cfg.threat.output && cfg.threat.output !== "logits" ? `thief sees ${cfg.threat.output}` : null,
      cfg.threat && cfg.threat.query_budget ? `budget ${cfg.threat.query_budget} queries/run` : null,
      cfg.panel ? `${cfg.panel} panel` : null,
    ].filter(Boolean).join(" · ");
    const frac = (a.progress && a.progress.fraction) || 0;
    const bar = el("progress", { max: "1", value: String(frac), "aria-label": `Progress of audit ${a.id}` });
    const actions = el("div", { class: "actions" });
    if (FINISHED.includes(a.status)) {
      // deleting removes the report, runs and checkpoints for good: ask first
      const d = el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete audit ${a.id}` });
      d.addEventListener("click", async () => {
        if (!window.confirm(`Delete audit ${a.id.slice(0, 8)} and its report? This cannot be undone.`)) return;
        d.disabled = true;
        try {
          await api("DELETE", `/v1/audits/${encodeURIComponent(a.id)}`);
          flash(`Audit ${a.id.slice(0, 8)} deleted.`);
        } catch (e) {
          showError($("audits-error"), e);
        }
        refreshAudits();
      });
      actions.appendChild(d);
    }
    if (a.status === "succeeded") {
      actions.appendChild(el("a", { href: `/audits/${encodeURIComponent(a.id)}/report`, class: "report-link", text: "Open report" }));
    } else if (!FINISHED.includes(a.status) && !a.cancel_requested) {
      const b = el("button", { type: "button", class: "danger", text: "Cancel", "aria-label": `Cancel audit ${a.id}` });
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          await api("POST", `/v1/audits/${encodeURIComponent(a.id)}/cancel`);
        } catch (e) {
          showError($("audits-error"), e);
        }
        refreshAudits();
      });
      actions.appendChild(b);
    }
    const li = el("li", { class: "audit", "data-audit-id": a.id, "data-status": a.status }, [
      el("div", {}, [
        el("div", { class: "id" }, [el("code", { text: a.id })]),
        el("div", { class: "meta", text: `${what} · started ${when(a.created_at)}` }),
      ]),
      el("div", {}, [el("span", { class: `status ${a.status}`, text: a.status })]),
      el("div", { class: "progress-cell" }, [bar, el("div", { class: "progress-text", text: progressText(a) })]),
      actions,
    ]);
    if (a.error) li.appendChild(el("p", { class: "err", text: `Error: ${a.error}` }));
    return li;
  }

  async function refreshAudits() {
    stopPolling();
    let delay = 10000;
    try {
      const doc = await api("GET", "/v1/audits?limit=50");
      clear($("audits-error"));
      if (doc.items.some((a) => !teachers.has(a.teacher_id))) await loadTeachers();
      $("audit-list").replaceChildren(...doc.items.map(auditItem));
      $("audits-empty").hidden = doc.items.length > 0;
      const active = doc.items.filter((a) => !FINISHED.includes(a.status)).length;
      $("audits-summary").textContent =
        `${doc.total} audit${doc.total === 1 ? "" : "s"}` + (active ? `, ${active} in progress (updating live)` : "");
      if (active) delay = 1500;
    } catch (e) {
      if (e.status === 401) return signOut(e);
      showError($("audits-error"), e);
      delay = 5000;
    }
    if (getKey()) pollTimer = setTimeout(refreshAudits, document.hidden ? Math.max(delay, 10000) : delay);
  }

  function initIndex() {
    $("signin-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clear($("signin-error"));
      const key = $("api-key").value.trim();
      if (!key) return showError($("signin-error"), "Enter your API key.");
      const button = ev.submitter || $("signin-form").querySelector("button");
      button.disabled = true;
      try {
        await api("GET", "/v1/audits?limit=1", { key });
        setKey(key);
        $("api-key").value = "";
        await enterApp();
      } catch (e) {
        showError($("signin-error"), e);
      } finally {
        button.disabled = false;
      }
    });

    $("upload-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = ev.target;
      clear($("upload-error"));
      clear($("upload-result"));
      const file = $("teacher-file").files[0];
      const arch = $("teacher-arch").value.trim();
      if (!file) return showError($("upload-error"), "Choose a checkpoint file to upload.");
      const isOnnx = file && file.name.toLowerCase().endsWith(".onnx");
      if (!arch && !isOnnx) return showError($("upload-error"), "Enter the teacher's architecture, e.g. cnn-32-64-64-128 (not needed for ONNX).");
      const data = new FormData();
      data.append("file", file, file.name);
      if (arch) data.append("architecture", arch);
      data.append("dataset", $("teacher-dataset").value);
      data.append("preprocess", $("teacher-preprocess").value);
      const expected = $("teacher-expected").value.trim();
      if (expected) data.append("expected_accuracy", expected);
      const button = $("upload-button");
      button.disabled = true;
      button.textContent = "Uploading…";
      try {
        const t = await api("POST", "/v1/teachers", { form: data });
        const r = $("upload-result");
        r.textContent = `Uploaded teacher ${t.id}: ${t.architecture || "black box"}, ${t.format}, ` +
          `${t.parameters.toLocaleString()} parameters, ${formatBytes(t.size_bytes)}.`;
        r.hidden = false;
        form.reset();
        await loadTeachers(t.id);
      } catch (e) {
        if (e.status === 401) return signOut(e);
        showError($("upload-error"), e.status === 422 ? new ApiError(`Upload rejected: ${e.message}`, 422, e.problem) : e);
      } finally {
        button.disabled = false;
        button.textContent = "Upload";
      }
    });

    $("teacher-delete").addEventListener("click", async () => {
      clear($("audit-error"));
      const t = teachers.get($("audit-teacher").value);
      if (!t) return showError($("audit-error"), "Choose the teacher to delete.");
      const ok = window.confirm(
        `Delete teacher ${t.filename} (${t.id.slice(0, 8)}) with all its audits and reports? ` +
        "Its running audits are stopped and its file is erased from the server. This cannot be undone.");
      if (!ok) return;
      try {
        await api("DELETE", `/v1/teachers/${encodeURIComponent(t.id)}?cancel=true`);
        flash(`Teacher ${t.filename} deleted.`);
      } catch (e) {
        if (e.status === 401) return signOut(e);
        return showError($("audit-error"), e);
      }
      await loadTeachers();
      refreshAudits();
    });

    $("audit-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clear($("audit-error"));
      const teacherId = $("audit-teacher").value;
      if (!teacherId) return showError($("audit-error"), "Upload a teacher first, then choose it here.");
      const body = { teacher_id: teacherId };
      const attacks = Array.from(document.querySelectorAll('#audit-form input[name="attacks"]:checked'), (x) => x.value);
      if (!attacks.length) return showError($("audit-error"), "Choose at least one attack.");
      body.attacks = attacks;
      const students = $("audit-students").value.split(",").map((s) => s.trim()).filter(Boolean);
      if (students.length) body.students = students;
      for (const [id, name, parse] of [["audit-seeds", "seeds", parseInt], ["audit-epochs", "epochs", parseInt], ["audit-fraction", "fraction", parseFloat]]) {
        const raw = $(id).value.trim();
        if (!raw) continue;
        const v = parse(raw, 10);
        if (!Number.isFinite(v)) return showError($("audit-error"), `${name} must be a number.`);
        body[name] = v;
      }
      if ($("audit-device").value) body.device = $("audit-device").value;
      const threat = {};
      if ($("audit-output").value) threat.output = $("audit-output").value;
      const budget = $("audit-budget").value.trim();
      if (budget) {
        const v = parseInt(budget, 10);
        if (!Number.isFinite(v) || v < 1) return showError($("audit-error"), "The query budget must be a positive whole number.");
        threat.query_budget = v;
      }
      if (Object.keys(threat).length) body.threat = threat;
      if ($("audit-panel").checked) body.panel = "standard";
      const button = $("audit-button");
      button.disabled = true;
      try {
        const a = await api("POST", "/v1/audits", { json: body, headers: { "Idempotency-Key": randomKey() } });
        flash(`Audit ${a.id} queued: ${a.progress.runs_total} runs to train.`);
        await refreshAudits();
      } catch (e) {
        if (e.status === 401) return signOut(e);
        showError($("audit-error"), e);
      } finally {
        button.disabled = false;
      }
    });

    $("refresh").addEventListener("click", refreshAudits);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && getKey() && !$("app").hidden) refreshAudits();
    });

    if (getKey()) {
      enterApp();
    } else {
      $("signin").hidden = false;
    }
  }

  // ------------------------------------------------------------ report page

  async function initReport() {
    const id = document.body.dataset.auditId;
    const status = $("report-status");
    if (!getKey()) {
      status.hidden = true;
      $("signin-needed").hidden = false;
      return;
    }
    $("account").hidden = false;
    const frame = $("report-frame");
    const fit = () => {
      try {
        const doc = frame.contentDocument;
        if (doc && doc.documentElement) frame.style.height = doc.documentElement.scrollHeight + 4 + "px";
      } catch (e) { /* not same-origin: keep the CSS height */ }
    };
    try {
      const html = await api("GET", `/v1/audits/${encodeURIComponent(id)}/report.html`, { accept: "text/html" });
      frame.addEventListener("load", fit);
      window.addEventListener("resize", fit);
      frame.srcdoc = html;
      frame.hidden = false;
      status.textContent = `Report of audit ${id}.`;
      const dl = $("download");
      dl.href = URL.createObjectURL(new Blob([html], { type: "text/html" }));
      dl.hidden = false;
      const dj = $("download-json");
      dj.hidden = false;
      dj.addEventListener("click", async (ev) => {
        if (dj.dataset.ready) return;
        ev.preventDefault();
        try {
          const doc = await api("GET", `/v1/audits/${encodeURIComponent(id)}/report`);
          dj.href = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" }));
          dj.dataset.ready = "1";
          dj.click();
        } catch (e) {
          showError($("report-error"), e);
        }
      });
    } catch (e) {
      if (e.status === 401) return signOut(e);
      status.hidden = true;
      showError($("report-error"), e);
    }
  }

  // for the pages' other scripts (static/defences.js): the same plumbing, not a copy
  window.kdaudit = { api, clear, flash, randomKey, refreshAudits, showError, signOut };

  document.addEventListener("DOMContentLoaded", () => {
    const out = $("sign-out");
    if (out) out.addEventListener("click", () => signOut());
    if (document.body.dataset.page === "index") initIndex();
    else if (document.body.dataset.page === "report") initReport();
  });
})();
