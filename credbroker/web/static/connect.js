// credbroker's hosted connect page. Opened top-level from a connect link
// (/connect?session_token=...), the token is taken from the address and dropped from it at once;
// embedded by @nangohq/frontend's openConnectUI(), it speaks that SDK's postMessage protocol:
// post {type: "ready"}, take {type: "session_token"}, then post {type: "connect" | "error" |
// "close"}. Everything shown is set with textContent (markup in names and messages stays text);
// secrets typed here go to this server only and are never shown back. The server decides what is
// valid: patterns are shown as hints, not enforced here.
"use strict";

(() => {
  const app = document.getElementById("app");
  const embedded = window.parent !== window;
  let token = null;
  let parentOrigin = null; // the embedding page's origin, once checked against the session
  let session = null;
  let closed = false;

  // --- small DOM helpers (no innerHTML anywhere)

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (name === "text") node.textContent = value;
      else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function show(...children) {
    app.replaceChildren(...children.filter((child) => child));
    app.setAttribute("aria-busy", "false");
  }

  function post(message) {
    if (embedded && parentOrigin) window.parent.postMessage(message, parentOrigin);
  }

  function close() {
    if (closed) return;
    closed = true;
    if (embedded && parentOrigin) {
      post({ type: "close" });
      return;
    }
    window.close();
    show(el("h1", { text: "You can close this page" }));
  }

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && embedded && parentOrigin) close();
  });

  // --- what errors mean to an end user

  function providerName(integration) {
    return (integration && (integration.display_name || integration.provider_display_name)) || "The service";
  }

  function explain(code, integration) {
    const provider = providerName(integration);
    switch (code) {
      case "connection_test_failed":
        return `${provider} did not accept these credentials. Check them and try again.`;
      case "provider_unavailable":
        return `${provider} could not be reached to check these credentials. Try again in a moment.`;
      case "destination_not_allowed":
        return `These credentials cannot be checked with ${provider} from this server. Contact the app's support.`;
      case "connect_session_expired":
        return "This connect link has expired. Go back to the app and start again to get a new one.";
      case "connect_session_consumed":
        return "This connect link was already used. Go back to the app if you need to connect again.";
      case "unknown_connect_session_token":
      case "missing_auth_header":
      case "malformed_auth_header":
      case "invalid_connect_session_token_format":
        return "This connect link is not valid. Go back to the app and start again.";
      case "too_many_request":
        return "Too many failed attempts with this link. Go back to the app and start again.";
      case "integration_not_allowed":
        return "This link does not allow connecting this service.";
      case "origin_not_allowed":
        return "This page was opened from a site that may not use this connect link.";
      case "invalid_auth_mode":
        return `${provider} takes another kind of credentials.`;
      case "network":
        return "The connection service could not be reached. Check your network and try again.";
      default:
        return "Something went wrong. Check what you entered and try again.";
    }
  }

  const FATAL = new Set([
    "connect_session_expired", "connect_session_consumed", "unknown_connect_session_token",
    "missing_auth_header", "malformed_auth_header", "invalid_connect_session_token_format",
    "too_many_request", "origin_not_allowed",
  ]);

  function fatal(code, detail) {
    const message = explain(code);
    post({ type: "error", payload: { errorType: code, errorMessage: detail || message } });
    show(
      el("h1", { text: "Cannot connect" }),
      el("p", { class: "error", role: "alert", "data-error-code": code, text: message }),
      embedded && parentOrigin ? el("div", { class: "actions" },
        el("button", { type: "button", onclick: close, text: "Close" })) : null,
    );
  }

  // --- talking to the server (same origin; the token travels in a header, never in a URL)

  async function api(method, path, body) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: Object.assign(
          { authorization: `Bearer ${token}` },
          body === undefined ? {} : { "content-type": "application/json" },
        ),
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
        referrerPolicy: "no-referrer",
      });
    } catch (_) {
      return { ok: false, status: 0, error: { code: "network", message: "network error" } };
    }
    let document = null;
    try { document = await response.json(); } catch (_) { document = null; }
    if (response.ok) return { ok: true, status: response.status, data: document };
    const error = (document && document.error) || { code: "server_error", message: "" };
    return { ok: false, status: response.status, error };
  }

  // --- views

  function greeting() {
    const user = session.end_user;
    if (!user) return null;
    const name = user.display_name || user.email || user.id;
    return el("p", { class: "greeting", text: `Connecting for ${name}` });
  }

  function showList() {
    const choices = session.integrations.map((integration) =>
      el("li", {}, el("button", {
        type: "button",
        "data-integration": integration.integration_id,
        onclick: () => showForm(integration),
        text: providerName(integration),
      })));
    if (!choices.length) {
      fatal("integration_not_allowed");
      return;
    }
    show(
      el("h1", { text: "Connect an account" }),
      greeting(),
      el("h2", { text: "Choose a service" }),
      el("ul", { class: "choices" }, ...choices),
      el("p", { class: "muted", text: "Your credentials go to the connection service only, not to the app." }),
    );
    app.querySelector("button").focus();
  }

  function field(name, title, { secret = false, hint = "", optional = false, value = "" } = {}) {
    const id = `field-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    const hintId = `${id}-hint`;
    const errorId = `${id}-error`;
    const input = el("input", {
      id, name, type: secret ? "password" : "text", autocomplete: "off", spellcheck: "false",
      autocapitalize: "off", "aria-required": optional ? "false" : "true",
      "aria-describedby": `${hint ? hintId : ""} ${errorId}`.trim(), value: value || null,
    });
    return el("div", { class: "field" },
      el("label", { for: id, text: optional ? `${title} (optional)` : title }),
      input,
      hint ? el("p", { id: hintId, class: "hint", text: hint }) : null,
      el("p", { id: errorId, class: "field-error", hidden: true }),
    );
  }

  function configHint(config) {
    const parts = [];
    if (config.description) parts.push(config.description);
    if (config.example) parts.push(`Example: ${config.example}`);
    else if (config.pattern) parts.push(`Expected format: ${config.pattern}`);
    return parts.join(" ");
  }

  function showForm(integration) {
    const inputs = integration.credentials.map((c) =>
      field(c.name, c.title, { secret: c.secret }));
    const config = session.isReconnecting ? [] : integration.connection_config.map((c) =>
      field(`params[${c.name}]`, c.title, {
        secret: c.secret, hint: configHint(c), optional: c.optional, value: c.default,
      }));
    const message = el("p", { id: "form-message", class: "error", role: "alert", hidden: true });
    const submit = el("button", { type: "submit", class: "primary", text: session.isReconnecting ? "Update" : "Connect" });
    const form = el("form", { novalidate: true, "aria-describedby": "form-message" },
      ...inputs, ...config, message,
      el("div", { class: "actions" }, submit));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submitForm(integration, form, submit, message);
    });
    const back = session.integrations.length > 1 && !session.isReconnecting
      ? el("button", { type: "button", class: "link", onclick: showList, text: "← Other services" })
      : null;
    show(
      back,
      el("h1", { text: session.isReconnecting ? `Update your ${providerName(integration)} credentials` : `Connect ${providerName(integration)}` }),
      greeting(),
      integration.docs ? el("p", { class: "hint" }, el("a", {
        href: integration.docs, target: "_blank", rel: "noopener noreferrer",
        text: "Where do I find these?",
      })) : null,
      form,
    );
    form.querySelector("input").focus();
  }

  function clearErrors(form, message) {
    message.hidden = true;
    message.textContent = "";
    for (const input of form.querySelectorAll("input")) input.removeAttribute("aria-invalid");
    for (const p of form.querySelectorAll(".field-error")) { p.hidden = true; p.textContent = ""; }
  }

  function markFields(form, errors) {
    let first = null;
    for (const problem of errors || []) {
      const input = form.querySelector(`input[name="${CSS.escape(problem.path)}"]`);
      if (!input) continue;
      input.setAttribute("aria-invalid", "true");
      const note = document.getElementById(`${input.id}-error`);
      note.textContent = problem.message;
      note.hidden = false;
      first = first || input;
    }
    return first;
  }

  async function submitForm(integration, form, submit, message) {
    clearErrors(form, message);
    const body = {};
    const query = [];
    for (const input of form.querySelectorAll("input")) {
      if (input.name.startsWith("params[")) {
        if (input.value !== "") {
          query.push(`${encodeURIComponent(input.name)}=${encodeURIComponent(input.value)}`);
        }
      } else {
        body[input.name] = input.value;
      }
    }
    const kind = integration.auth_mode === "BASIC" ? "basic" : "api-key";
    const path = `/api-auth/${kind}/${encodeURIComponent(integration.integration_id)}` +
      (query.length ? `?${query.join("&")}` : "");
    submit.disabled = true;
    const label = submit.textContent;
    submit.textContent = `Checking with ${providerName(integration)}…`;
    app.setAttribute("aria-busy", "true");
    const result = await api("POST", path, body);
    app.setAttribute("aria-busy", "false");
    submit.disabled = false;
    submit.textContent = label;
    if (result.ok) {
      showSuccess(integration, result.data);
      return;
    }
    const code = result.error.code;
    post({ type: "error", payload: { errorType: code, errorMessage: explain(code, integration) } });
    if (FATAL.has(code)) {
      fatal(code);
      return;
    }
    const fields = (result.error.errors || []).length;
    message.textContent = (code === "invalid_body" || code === "invalid_query_params") && fields
      ? "Some of what you entered needs a fix (see the notes above)."
      : explain(code, integration);
    message.dataset.errorCode = code;
    message.hidden = false;
    const first = markFields(form, result.error.errors);
    (first || form.querySelector("input")).focus();
  }

  function showSuccess(integration, data) {
    post({ type: "connect", payload: { providerConfigKey: data.providerConfigKey, connectionId: data.connectionId } });
    show(
      el("h1", { text: "Connected" }),
      el("p", { class: "success", role: "status", text: `${providerName(integration)} is connected. You can close this window.` }),
      el("div", { class: "actions" }, el("button", { type: "button", class: "primary", onclick: close, text: "Done" })),
    );
    app.querySelector("button").focus();
  }

  // --- start

  async function load() {
    const result = await api("GET", "/connect/session");
    if (!result.ok) {
      fatal(result.error.code);
      return;
    }
    session = result.data.data;
    if (embedded && !session.allowed_origins.includes(parentOrigin)) {
      const refused = parentOrigin;
      parentOrigin = null; // never message a page that may not use this session
      fatal("origin_not_allowed", `origin ${refused} is not allowed`);
      return;
    }
    if (session.isReconnecting && session.reconnect) {
      const target = session.integrations.find((i) => i.integration_id === session.reconnect.integration_id);
      if (target) { showForm(target); return; }
    }
    if (session.integrations.length === 1) showForm(session.integrations[0]);
    else showList();
  }

  const fromAddress = new URLSearchParams(window.location.search).get("session_token");
  if (fromAddress || !embedded) {
    // Top-level: take the token, then drop it (and every other parameter) from the address bar.
    window.history.replaceState(null, "", window.location.pathname);
  }
  const ancestors = window.location.ancestorOrigins;
  if (fromAddress && !embedded) {
    token = fromAddress;
    load();
  } else if (fromAddress && ancestors && ancestors.length) {
    // A connect link framed directly (not through the SDK): the framing page is its parent.
    token = fromAddress;
    parentOrigin = ancestors[0];
    load();
  } else if (embedded) {
    window.addEventListener("message", (event) => {
      if (event.source !== window.parent || token !== null) return;
      const data = event.data;
      if (!data || typeof data !== "object" || data.type !== "session_token") return;
      if (typeof data.sessionToken !== "string" || !data.sessionToken) return;
      token = data.sessionToken;
      parentOrigin = event.origin;
      load();
    });
    window.parent.postMessage({ type: "ready" }, "*"); // carries nothing secret
  } else {
    fatal("missing_auth_header");
  }
})();
