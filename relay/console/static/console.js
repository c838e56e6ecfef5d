// The console works without this script; it only makes forms nicer to use:
// sections shown for the choices that need them, copy buttons, live agent status,
// and focus on what needs attention after a submit.
"use strict";

function valueOf(form, name) {
  const controls = form.querySelectorAll('[name="' + name + '"]');
  for (const c of controls) {
    if (c.type === "radio") { if (c.checked) return c.value; }
    else return c.value;
  }
  return "";
}

function grantOf(form) {
  const select = form.querySelector('[name="http.auth.oauth2.iclient_id"]');
  if (!select || select.selectedIndex < 0) return "";
  return select.options[select.selectedIndex].dataset.grant || "";
}

function refresh(form) {
  for (const el of form.querySelectorAll("[data-show-when]")) {
    const [name, wanted] = el.dataset.showWhen.split("=");
    let show = wanted.split(",").includes(valueOf(form, name));
    if (show && el.dataset.grantOnly) show = grantOf(form) === el.dataset.grantOnly;
    el.hidden = !show;
  }
}

function copy(button) {
  const target = document.getElementById(button.dataset.copyTarget);
  if (!target) return;
  const done = () => {
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(target.value).then(done, () => { target.select(); });
  } else {
    target.select();
    document.execCommand("copy");
    done();
  }
}

function pollAgents(table) {
  const update = async () => {
    try {
      const response = await fetch(table.dataset.poll, { credentials: "same-origin" });
      if (!response.ok) return;
      const data = await response.json();
      for (const a of data.agents) {
        const row = table.querySelector('tr[data-agent="' + a.id + '"]');
        if (!row) continue;
        const status = row.querySelector('[data-col="status"]');
        status.querySelector(".dot").className = "dot dot-" + a.status;
        status.querySelector(".status-text").textContent = a.status === "online" ? "Online" : "Offline";
        row.querySelector('[data-col="version"]').textContent =
          (a.version || "—") + (a.outdated ? " (outdated)" : "");
        row.querySelector('[data-col="last_seen"]').textContent = a.last_seen || "never";
        row.querySelector('[data-col="sessions"]').textContent = String(a.sessions);
      }
    } catch (e) { /* the next poll tries again */ }
  };
  setInterval(update, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form")) {
    if (!form.querySelector("[data-show-when]")) continue;
    refresh(form);
    form.addEventListener("change", () => refresh(form));
  }
  for (const button of document.querySelectorAll("[data-copy-target]")) {
    button.addEventListener("click", () => copy(button));
  }
  for (const table of document.querySelectorAll("table[data-poll]")) pollAgents(table);
  const attention = document.querySelector('[aria-invalid="true"]') ||
    document.getElementById("test-result") || document.getElementById("form-error");
  if (attention) attention.focus();
});
