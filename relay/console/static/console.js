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
    button.setAttribute("aria-live", "polite");
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
  let busy = false;
  let timer = null;
  const update = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(table.dataset.poll, {
        credentials: "same-origin", redirect: "manual",
      });
      if (response.type === "opaqueredirect" || response.status === 401 ||
          response.status === 403) {
        clearInterval(timer);  // signed out: stop asking
        return;
      }
      if (!response.ok) return;  // a passing failure: the next poll tries again
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
    } catch (e) { /* the next poll tries again */ } finally { busy = false; }
  };
  timer = setInterval(update, 2000);
}

// Test connection without leaving the page: the form, and the secrets typed in it,
// stay as they are; only the result block is fetched and put in place.
function testInline(form) {
  const slot = document.getElementById("test-result-slot");
  if (!slot) return;
  let running = false;
  form.addEventListener("submit", async (event) => {
    if (!event.submitter || event.submitter.value !== "test") return;
    event.preventDefault();
    if (running) return;
    running = true;
    const data = new FormData(form);
    data.set("action", "test");
    slot.innerHTML = '<p class="test-result" role="status">Testing…</p>';
    try {
      const response = await fetch(form.getAttribute("action"), {
        method: "POST", body: data, credentials: "same-origin",
        headers: { "X-Console-Fragment": "test-result" },
      });
      if (response.headers.get("X-Console-Fragment") !== "test-result") {
        // Not a test result (signed out, the connection gone, an error page): go
        // where the relay sent us, with a plain GET.
        window.location.assign(response.redirected ? response.url : window.location.href);
        return;
      }
      // Server-rendered and escaped by the console's own templates.
      slot.innerHTML = await response.text();
      const result = document.getElementById("test-result");
      if (result) result.focus();
    } catch (e) {
      slot.innerHTML = '<p class="test-result failed" role="alert">The relay did not answer.</p>';
    } finally {
      running = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form")) {
    if (form.hasAttribute("data-test-inline")) testInline(form);
    if (!form.querySelector("[data-show-when]")) continue;
    refresh(form);
    form.addEventListener("change", () => refresh(form));
  }
  for (const button of document.querySelectorAll("[data-copy-target]")) {
    button.addEventListener("click", () => copy(button));
  }
  for (const table of document.querySelectorAll("table[data-poll]")) pollAgents(table);
  const visible = (el) => el && el.offsetParent !== null;
  const invalid = Array.from(document.querySelectorAll('[aria-invalid="true"]')).find(visible);
  const attention = invalid || [document.getElementById("test-result"),
    document.getElementById("form-error")].find(visible);
  if (attention) attention.focus();
});
