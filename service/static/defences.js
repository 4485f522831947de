// kdaudit web UI: the "Compare defences" form (POST /v1/defences). Uses app.js's API plumbing
// (window.kdaudit); the comparison then shows in "Your audits" like any audit.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("defend-form");
  if (!form || !window.kdaudit) return;
  const ui = window.kdaudit;
  const $ = (id) => document.getElementById(id);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    ui.clear($("defend-error"));
    const teacherId = $("audit-teacher").value;
    if (!teacherId) return ui.showError($("defend-error"), "Upload a teacher first, then choose it in step 2.");
    const body = { teacher_id: teacherId };
    const defences = $("defend-defences").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (defences.length) body.defences = defences;
    for (const [id, name] of [["defend-seeds", "seeds"], ["defend-epochs", "epochs"]]) {
      const raw = $(id).value.trim();
      if (!raw) continue;
      const v = parseInt(raw, 10);
      if (!Number.isFinite(v)) return ui.showError($("defend-error"), `${name} must be a number.`);
      body[name] = v;
    }
    const button = $("defend-button");
    button.disabled = true;
    try {
      const a = await ui.api("POST", "/v1/defences", { json: body, headers: { "Idempotency-Key": ui.randomKey() } });
      ui.flash(`Defence comparison ${a.id} queued: ${a.progress.runs_total} runs to train.`);
      await ui.refreshAudits();
    } catch (e) {
      if (e.status === 401) return ui.signOut(e);
      ui.showError($("defend-error"), e);
    } finally {
      button.disabled = false;
    }
  });
});
