// Renders GET /v1/transparency. Everything is written with textContent: the policy texts are
// the shop's own, but nothing here is ever parsed as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function words(name) {
    return name.replace(/_/g, " ");
  }

  // A table with a caption, header cells and rows of cell texts.
  function table(caption, headers, rows) {
    if (!rows.length) return el("p", { class: "meta", text: caption + ": none." });
    return el("table", {},
      el("caption", { class: "meta", text: caption }),
      el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { text: String(c) }))))));
  }

  function retention(days) {
    return days === null || days === undefined ? "until the customer is erased" : days + " days after the last change";
  }

  function monthName(month) {
    const [y, m] = month.split("-").map(Number);
    if (!y || !m) return month;
    return new Date(Date.UTC(y, m - 1, 1)).toLocaleString("en", { month: "long", year: "numeric", timeZone: "UTC" });
  }

  function renderMonths(months) {
    const box = $("months");
    if (!months.length) {
      box.append(el("p", { text: "No month is complete yet." }));
      return;
    }
    for (const m of months) {
      const section = el("section", { "aria-labelledby": "m-" + m.month },
        el("h3", { id: "m-" + m.month, text: monthName(m.month) }));
      section.append(
        table("Disclosures to third parties", ["Recipient", "Purpose", "Outcome", "Count"],
          m.disclosures.map((d) => [d.recipient, words(d.purpose), d.outcome, d.count])),
        table("Requests refused, by reason", ["Reason", "Count"], m.denials.map((d) => [words(d.reason), d.count])),
        table("Consents", ["Purpose", "Change", "Count"], m.consents.map((c) => [words(c.purpose), c.change, c.count])),
        table("Objections", ["Purpose", "Change", "Count"], m.objections.map((c) => [words(c.purpose), c.change, c.count])),
        table("Restrictions of processing", ["Change", "Count"], m.restrictions.map((c) => [c.change, c.count])),
        table("Erasures", ["What", "Count"], [["Accounts erased", m.erasures], ["Retention purges", m.retention_purges]]));
      box.append(section);
    }
  }

  function renderRecord(record) {
    const box = $("activities");
    for (const a of record.activities) {
      box.append(el("section", { "aria-labelledby": "p-" + a.purpose },
        el("h3", { id: "p-" + a.purpose, text: words(a.purpose) }),
        el("p", { text: a.description }),
        el("p", { class: "meta", text: `Legal basis: ${words(a.legal_basis)} (${a.legal_basis_article})` +
          (a.notice ? `; consent notice ${a.notice}` : "") + (a.objection_possible ? "; you may object" : "") }),
        table("Data used", ["Data", "Category", "Kept"], a.data.map((d) => [words(d.field), d.category, retention(d.retention_days)])),
        table("Recipients", ["Recipient", "Who", "Receives"], a.recipients.map((r) =>
          [r.recipient, r.description, r.fields.map((f) => words(f.field) + (f.mask === "none" ? "" : ` (${f.mask})`)).join(", ")]))));
    }
    $("fields").append(table("Fields", ["Data", "Category", "Used for", "Kept"],
      record.fields.map((f) => [words(f.field), f.category, f.purposes.map(words).join(", "), retention(f.retention_days)])));
    $("recipients").append(table("Recipients", ["Recipient", "Who", "Purposes"],
      record.recipients.map((r) => [r.recipient, r.description, r.grants.map((g) => words(g.purpose)).join(", ")])));
  }

  async function start() {
    try {
      const res = await fetch("/v1/transparency", { cache: "no-store", credentials: "omit" });
      if (!res.ok) throw new Error("the report could not be loaded (" + res.status + ")");
      const report = await res.json();
      $("basis").textContent = `Computed from the first ${report.tree_size} entries of the audit log, ` +
        `as signed in checkpoint ${report.tree_size} (generated ${report.generated_at.slice(0, 16).replace("T", " ")} UTC).`;
      $("note").textContent = report.checkpoint ? report.checkpoint.note : "(the log is empty)";
      $("key").textContent = report.key.verifier_key;
      if (report.in_progress) {
        $("in-progress").textContent = `${monthName(report.in_progress)}: in progress, not published until the month is over.`;
        $("in-progress").hidden = false;
      }
      renderMonths(report.months);
      renderRecord(report.record);
    } catch (e) {
      $("status").textContent = String(e.message || e);
      $("status").classList.add("error");
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
