// The privacy portal. The customer's token arrives in the URL fragment (/portal#token=…), which
// browsers never send to a server; it is read once, removed from the address bar and history,
// and kept in this closure's memory only (never in storage or a cookie). Every call goes to this
// origin's customer API with the token as a bearer header. Values are written to the page with
// textContent only, never parsed as HTML.
"use strict";

(function () {
  let token = null;
  let catalogue = { purposes: {}, recipients: {}, fields: [] };
  let profile = null;

  const $ = (id) => document.getElementById(id);
  const VIEWS = ["view-loading", "view-signed-out", "view-expired", "view-erased", "view-portal"];
  const ERASE_PHRASE = "erase my data";

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function show(view) {
    for (const v of VIEWS) $(v).hidden = v !== view;
    $("sign-out").hidden = view !== "view-portal";
    const heading = $(view).querySelector("h1");
    if (heading) heading.focus();
  }

  function say(message, isError) {
    const s = $("status");
    s.textContent = message;
    s.classList.toggle("error", !!isError);
  }

  // Ends the session: the token is dropped from memory and every shown value from the page.
  function signOut(view) {
    token = null;
    profile = null;
    for (const id of ["fields", "payment-methods", "consents", "objections", "restriction", "history-list"]) {
      $(id).replaceChildren();
    }
    say("");
    show(view || "view-signed-out");
  }

  class Expired extends Error {}

  // A call to the customer API. 401 means the link expired (or was never valid).
  async function api(method, path, body) {
    if (!token) throw new Expired();
    const headers = { Authorization: "Bearer " + token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
    });
    if (res.status === 401) throw new Expired();
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (!res.ok) {
      const e = new Error((data && data.message) || "the request failed (" + res.status + ")");
      e.status = res.status;
      e.code = data && data.error;
      throw e;
    }
    return data;
  }

  // Runs an action; shows its error, or the expired page when the token no longer works.
  async function attempt(action) {
    try {
      return await action();
    } catch (e) {
      if (e instanceof Expired) signOut("view-expired");
      else if (e.status === 404 && e.code === "not_found" && !profile) signOut("view-signed-out");
      else say(e.message, true);
      return undefined;
    }
  }

  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const t = params.get("token");
    // Drop the fragment from the address bar and the history entry.
    history.replaceState(null, "", location.pathname);
    return t;
  }

  // The token's `exp`, read without verifying (the server verifies); null if unreadable.
  function expiry(t) {
    try {
      const payload = JSON.parse(atob(t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      return typeof payload.exp === "number" ? payload.exp : null;
    } catch (_) {
      return null;
    }
  }

  async function loadCatalogue() {
    const res = await fetch("/v1/transparency", { cache: "no-store", credentials: "omit" });
    if (!res.ok) return;
    const report = await res.json();
    for (const a of report.record.activities) catalogue.purposes[a.purpose] = a;
    for (const r of report.record.recipients) catalogue.recipients[r.recipient] = r;
    catalogue.fields = report.record.fields.filter((f) => f.type !== "payment_methods");
  }

  // ---- Your data ------------------------------------------------------------------------

  const ADDRESS_PARTS = [
    ["line1", "Address line 1", true], ["line2", "Address line 2", false], ["city", "City", true],
    ["postal_code", "Postal code", true], ["region", "Region", false], ["country", "Country (two letters, e.g. DE)", true],
  ];

  function label(name) {
    const words = name.replace(/_/g, " ");
    return words[0].toUpperCase() + words.slice(1);
  }

  function shown(value, type) {
    if (value === undefined || value === null) return null;
    if (type === "address" && typeof value === "object") {
      return ADDRESS_PARTS.map(([k]) => value[k]).filter(Boolean).join(", ");
    }
    return String(value);
  }

  function renderFields() {
    const box = $("fields");
    box.replaceChildren();
    // The declared fields come from the public report; without it, the stored ones still show.
    const declared = catalogue.fields.length ? catalogue.fields
      : Object.keys(profile.fields).map((k) => ({ field: k, type: typeof profile.fields[k] === "object" ? "address" : "string" }));
    for (const f of declared) {
      const value = profile.fields[f.field];
      const text = shown(value, f.type);
      const row = el("div", { class: "field", id: "field-" + f.field });
      const valueNode = el("div", { class: text === null ? "value empty" : "value", text: text === null ? "not stored" : text });
      const edit = el("button", { type: "button", class: "secondary", "aria-expanded": "false", text: "Correct",
        "aria-label": "Correct " + label(f.field).toLowerCase() });
      row.append(el("div", { class: "name", text: label(f.field) }), valueNode, edit);
      edit.addEventListener("click", () => {
        const open = row.querySelector("form");
        if (open) { open.remove(); edit.setAttribute("aria-expanded", "false"); edit.focus(); return; }
        edit.setAttribute("aria-expanded", "true");
        row.append(editForm(f, value, row, edit));
        row.querySelector("input").focus();
      });
      box.append(row);
    }
    const pms = $("payment-methods");
    pms.replaceChildren();
    if (!profile.payment_methods.length) pms.append(el("li", { class: "meta", text: "No payment methods stored." }));
    for (const pm of profile.payment_methods) {
      const what = pm.brand ? `${label(pm.brand)} ending in ${pm.last4}` : "Payment provider token";
      const exp = pm.exp_month ? `, expires ${String(pm.exp_month).padStart(2, "0")}/${pm.exp_year}` : "";
      pms.append(el("li", { class: "card", text: what + exp }));
    }
  }

  function editForm(f, value, row, opener) {
    const id = "edit-" + f.field;
    const error = el("p", { class: "field-error", id: id + "-error", role: "alert" });
    const form = el("form", { novalidate: true, "aria-describedby": id + "-error" });
    const inputs = {};
    if (f.type === "address") {
      const fieldset = el("fieldset", {}, el("legend", { text: "New " + label(f.field).toLowerCase() }));
      for (const [part, text, required] of ADDRESS_PARTS) {
        const input = el("input", { id: id + "-" + part, name: part, autocomplete: "off" });
        input.value = (value && value[part]) || "";
        inputs[part] = input;
        fieldset.append(el("label", { for: input.id, text: text + (required ? "" : " (optional)") }), input);
      }
      form.append(fieldset);
    } else {
      const type = { email: "email", phone: "tel", date: "date" }[f.type] || "text";
      const input = el("input", { id, name: f.field, type, autocomplete: "off" });
      input.value = value === undefined || value === null ? "" : String(value);
      inputs.value = input;
      form.append(el("label", { for: id, text: "New " + label(f.field).toLowerCase() }), input);
    }
    const cancel = el("button", { type: "button", class: "secondary", text: "Cancel" });
    form.append(error, el("div", { class: "actions" }, el("button", { type: "submit", text: "Save" }), cancel));
    cancel.addEventListener("click", () => { form.remove(); opener.setAttribute("aria-expanded", "false"); opener.focus(); });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let newValue;
      if (f.type === "address") {
        newValue = {};
        for (const [part] of ADDRESS_PARTS) {
          const v = inputs[part].value.trim();
          if (v) newValue[part] = v;
        }
      } else {
        newValue = inputs.value.value;
      }
      error.textContent = "";
      try {
        await api("PATCH", "/v1/me", { fields: { [f.field]: newValue } });
      } catch (e) {
        if (e instanceof Expired) return signOut("view-expired");
        // The API's own message, e.g. "field `email` must be an email address".
        error.textContent = e.message;
        return;
      }
      await refreshProfile();
      say(label(f.field) + " saved.");
      const again = document.querySelector(`#field-${f.field} button`);
      if (again) again.focus();
    });
    return form;
  }

  // ---- Your choices ---------------------------------------------------------------------

  function purposeText(name) {
    const p = catalogue.purposes[name];
    return p && p.description ? p.description : label(name);
  }

  function renderChoices() {
    const consents = $("consents");
    consents.replaceChildren();
    const latest = {};
    for (const c of profile.consents) latest[c.purpose] = c;
    for (const p of Object.values(catalogue.purposes).filter((p) => p.legal_basis === "consent")) {
      const c = latest[p.purpose];
      const granted = !!(c && c.granted);
      const state = granted ? "Given" : c ? "Withdrawn" : "Not given";
      const detail = c ? ` (version ${c.version}${c.notice ? ", notice " + c.notice : ""}, ${c.time.slice(0, 10)})` : "";
      const button = el("button", { type: "button", class: granted ? "secondary" : "",
        text: granted ? "Withdraw consent" : "Give consent",
        "aria-label": (granted ? "Withdraw consent to " : "Give consent to ") + label(p.purpose).toLowerCase() });
      button.addEventListener("click", () => attempt(async () => {
        await api("PUT", "/v1/me/consents/" + encodeURIComponent(p.purpose),
          { granted: !granted, source: "privacy-portal", notice: p.notice || undefined });
        await refreshProfile();
        say(granted ? `Consent to ${label(p.purpose).toLowerCase()} withdrawn.` : `Consent to ${label(p.purpose).toLowerCase()} given.`);
        focusChoice("consent-" + p.purpose);
      }));
      consents.append(el("li", { id: "consent-" + p.purpose },
        el("strong", { text: label(p.purpose) }), el("div", { class: "meta", text: purposeText(p.purpose) }),
        el("p", {}, el("span", { class: granted ? "state-on" : "state-off", text: state }), detail), button));
    }
    const objections = $("objections");
    objections.replaceChildren();
    for (const p of Object.values(catalogue.purposes).filter((p) => p.objection_possible)) {
      const objected = profile.objections.includes(p.purpose);
      const button = el("button", { type: "button", class: objected ? "secondary" : "",
        text: objected ? "Lift my objection" : "Object",
        "aria-label": (objected ? "Lift my objection to " : "Object to ") + label(p.purpose).toLowerCase() });
      button.addEventListener("click", () => attempt(async () => {
        await api("PUT", "/v1/me/objections/" + encodeURIComponent(p.purpose), { objected: !objected });
        await refreshProfile();
        say(objected ? "Objection lifted." : `You object to ${label(p.purpose).toLowerCase()}.`);
        focusChoice("objection-" + p.purpose);
      }));
      objections.append(el("li", { id: "objection-" + p.purpose },
        el("strong", { text: label(p.purpose) }), el("div", { class: "meta", text: purposeText(p.purpose) }),
        el("p", {}, el("span", { class: objected ? "state-on" : "state-off", text: objected ? "You object" : "No objection" })),
        button));
    }
    const restricted = profile.restricted;
    const button = el("button", { type: "button", class: restricted ? "secondary" : "",
      text: restricted ? "Lift the restriction" : "Restrict processing" });
    button.addEventListener("click", () => attempt(async () => {
      await api("PUT", "/v1/me/restriction", { restricted: !restricted });
      await refreshProfile();
      say(restricted ? "Restriction lifted." : "Processing restricted.");
      focusChoice("restriction");
    }));
    $("restriction").replaceChildren(
      el("p", {}, el("span", { class: restricted ? "state-on" : "state-off", text: restricted ? "Restricted" : "Not restricted" }),
        " — while restricted, your data is used only where the law requires it (GDPR Art. 18)."),
      button);
  }

  function focusChoice(id) {
    const b = document.querySelector("#" + id + " button");
    if (b) b.focus();
  }

  // ---- Who used your data ---------------------------------------------------------------

  async function loadHistory() {
    const events = [];
    let after = null;
    for (;;) {
      const page = await api("GET", "/v1/me/events?limit=1000" + (after === null ? "" : "&after=" + after));
      events.push(...page.events);
      if (page.next_after === null || page.next_after === undefined) break;
      after = page.next_after;
    }
    const list = $("history-list");
    list.replaceChildren();
    // Counts renders, so a reader (or a test) can tell a fresh list from the one it replaced.
    list.dataset.renders = String(Number(list.dataset.renders || 0) + 1);
    for (const event of events.reverse()) {
      const words = window.CustodiaWords.describe(event, catalogue);
      const verdict = el("p", { class: "verdict", role: "status", "aria-live": "polite" });
      const check = el("button", { type: "button", class: "secondary", text: "Check",
        "aria-label": "Check entry " + event.seq + " against the signed log" });
      check.addEventListener("click", () => verify(event, verdict, check));
      // The customer's own reads of this portal are real accesses, logged like any other, but
      // they drown the shop's; they are listed only on request.
      const own = event.actor && event.actor.role === "customer" && (event.action === "customer.read" || event.action === "audit.read");
      list.append(el("li", { id: "entry-" + event.seq, "data-seq": String(event.seq), "data-action": event.action,
        "data-own": own ? "true" : null, hidden: own && !$("history-own").checked },
        el("time", { datetime: event.time, text: words.when }), " — ", el("span", { class: "what", text: words.text }),
        " ", check, verdict));
    }
  }

  // Checks the entry as listed (`event`), not merely the copy the receipt carries.
  async function verify(event, verdict, button) {
    verdict.className = "verdict";
    verdict.textContent = "Checking…";
    button.disabled = true;
    try {
      const receipt = await api("GET", "/v1/me/events/" + event.seq + "/receipt");
      const result = await window.CustodiaVerify.verifyReceipt(receipt, event);
      if (result.ok) {
        verdict.classList.add("ok");
        verdict.textContent = `✓ Verified in log of size ${result.size}, signed by ${result.keyName}+${result.keyId}.`;
      } else if (result.unsupported) {
        verdict.textContent = "Could not be checked: " + result.reason + ".";
      } else {
        verdict.classList.add("bad");
        verdict.textContent = "✗ Does not verify: " + result.reason + ".";
      }
    } catch (e) {
      if (e instanceof Expired) return signOut("view-expired");
      verdict.classList.add("bad");
      verdict.textContent = "✗ Could not be checked: " + e.message + ".";
    } finally {
      button.disabled = false;
    }
  }

  // ---- Download and erase ---------------------------------------------------------------

  async function download() {
    const data = await api("GET", "/v1/me/export");
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: "my-data.json" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    say("Your data was downloaded as my-data.json.");
  }

  async function erase(ev) {
    ev.preventDefault();
    if ($("erase-confirm").value.trim().toLowerCase() !== ERASE_PHRASE) return;
    await api("DELETE", "/v1/me");
    $("erase-confirm").value = "";
    signOut("view-erased");
  }

  // ---- Start ----------------------------------------------------------------------------

  async function refreshProfile() {
    profile = await api("GET", "/v1/me");
    renderFields();
    renderChoices();
    await loadHistory();
  }

  async function start() {
    $("sign-out").addEventListener("click", () => signOut("view-signed-out"));
    $("history-refresh").addEventListener("click", () => attempt(loadHistory));
    $("history-own").addEventListener("change", (e) => {
      for (const li of document.querySelectorAll("#history-list li[data-own]")) li.hidden = !e.target.checked;
    });
    $("download-button").addEventListener("click", () => attempt(download));
    $("erase-confirm").addEventListener("input", (e) => {
      $("erase-button").disabled = e.target.value.trim().toLowerCase() !== ERASE_PHRASE;
    });
    $("erase-form").addEventListener("submit", (ev) => attempt(() => erase(ev)));

    token = tokenFromFragment();
    if (!token) return show("view-signed-out");
    const exp = expiry(token);
    if (exp !== null && exp * 1000 <= Date.now()) { token = null; return show("view-expired"); }
    await attempt(async () => {
      await loadCatalogue();
      profile = await api("GET", "/v1/me");
      renderFields();
      renderChoices();
      show("view-portal");
      await loadHistory();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
