// Audit events in plain words, from the policy descriptions the transparency report publishes:
// "2026-11-30 14:02 UTC — Acme Shipping received your name and shipping address to pack and
// ship what the customer ordered (contract)".
"use strict";

(function () {
  const BASIS = {
    consent: "your consent",
    contract: "contract",
    legal_obligation: "legal obligation",
    vital_interests: "vital interests",
    public_task: "public task",
    legitimate_interests: "legitimate interests",
  };

  const REASONS = {
    consent_missing: "you have not given consent",
    consent_withdrawn: "you withdrew your consent",
    notice_outdated: "your consent names an older notice",
    objected: "you objected",
    restricted: "you restricted processing",
    retention_expired: "the data is past its retention",
    no_grant: "the recipient may not receive it",
    purpose_not_allowed_for_field: "the data may not be used for that",
    unknown_field: "unknown data",
    not_found: "not found",
  };

  // "acme-shipping" → "Acme Shipping".
  function title(name) {
    return name.split(/[-_]/).filter(Boolean).map((w) => w[0].toUpperCase() + w.slice(1)).join(" ");
  }

  function list(items) {
    if (items.length <= 1) return items.join("");
    return items.slice(0, -1).join(", ") + " and " + items[items.length - 1];
  }

  // Field names as words; a payment method's `payment_methods/<token>` is "a payment method".
  function fields(names) {
    const words = [];
    for (const n of names || []) {
      const w = n.startsWith("payment_methods") ? "payment methods" : n.replace(/_/g, " ");
      if (!words.includes(w)) words.push(w);
    }
    return words.length ? "your " + list(words) : "no data";
  }

  function when(time) {
    return time.slice(0, 10) + " " + time.slice(11, 16) + " UTC";
  }

  function reasons(event) {
    const codes = (event.reason || []).map((r) => r.split(":").pop());
    const words = [...new Set(codes.map((c) => REASONS[c] || c.replace(/_/g, " ")))];
    return words.length ? " (" + words.join("; ") + ")" : "";
  }

  /**
   * `catalogue`: {purposes: {name: {description, legal_basis}}, recipients: {name: {description}}}.
   * Returns {when, text}.
   */
  function describe(event, catalogue) {
    const p = event.purpose && catalogue.purposes[event.purpose];
    const why = p && p.description
      ? " to " + p.description[0].toLowerCase() + p.description.slice(1) + " (" + (BASIS[p.legal_basis] || p.legal_basis) + ")"
      : event.purpose ? " for " + event.purpose.replace(/_/g, " ") : "";
    const purposeName = event.purpose ? event.purpose.replace(/_/g, " ") : "";
    const role = event.actor && event.actor.role;
    const who = { merchant: "The shop", customer: "You", auditor: "An auditor", system: "Custodia" }[role] || "Someone";
    const recipient = event.recipient ? title(event.recipient) : "A third party";
    const ok = event.outcome === "allowed";
    const has = (code) => (event.reason || []).includes(code);
    let text;
    switch (event.action) {
      case "disclosure":
        text = ok ? `${recipient} received ${fields(event.fields)}${why}.`
          : `${recipient} asked for ${fields(event.fields)}${why}; it was refused${reasons(event)}.`;
        break;
      case "customer.read":
        text = role === "customer" ? "You looked at your data."
          : ok ? `${who} read ${fields(event.fields)}${why}.` : `${who} was refused ${fields(event.fields)}${why}${reasons(event)}.`;
        break;
      case "customer.create": text = `${who} created your account with ${fields(event.fields)}.`; break;
      case "customer.update":
        text = ok ? `${who === "You" ? "You" : who} corrected ${fields(event.fields)}.` : `A change of ${fields(event.fields)} was refused${reasons(event)}.`;
        break;
      case "customer.lookup": text = `${who} found your account by ${fields(event.fields)}${why}.`; break;
      case "customer.export": text = "You downloaded a copy of your data."; break;
      case "customer.erase": text = `${who} erased your account.`; break;
      case "payment_method.create": text = `${who} added a payment method.`; break;
      case "payment_method.list": text = `${who} listed your payment methods${why}.`; break;
      case "payment_method.delete": text = `${who} removed a payment method.`; break;
      case "consent.update":
        text = has("withdrawn") ? `${who} withdrew consent to ${purposeName}.`
          : has("granted") ? `${who} gave consent to ${purposeName}.`
          : has("unchanged") ? `${who} confirmed the consent to ${purposeName} unchanged.`
          : `${who} changed the consent to ${purposeName}${reasons(event)}.`;
        break;
      case "objection.update":
        text = has("lifted") ? `${who} lifted the objection to ${purposeName}.` : `${who} objected to ${purposeName}.`;
        break;
      case "restriction.update":
        text = has("lifted") ? `${who} lifted the restriction of processing.` : `${who} restricted processing.`;
        break;
      case "audit.read":
        text = role === "customer" ? "You looked at this access history." : `${who} reviewed the log entries about you.`;
        break;
      case "retention.purge": text = `${fields(event.fields)} were deleted: their retention period ended.`; text = text[0].toUpperCase() + text.slice(1); break;
      default: text = `${who}: ${event.action.replace(/[._]/g, " ")}${why}.`;
    }
    if (event.outcome !== "allowed" && !/refused/.test(text)) text += ` Refused${reasons(event)}.`;
    return { when: when(event.time), text };
  }

  window.CustodiaWords = { describe, title, when };
})();
