// The console's shell: sign-in, the header, and the hash router (#/, #/d/NAME, #/d/NAME/chat).

import { api, key, ApiError } from "/console/api.js";
import { h, fill, errorBox } from "/console/ui.js";
import { deploymentsView } from "/console/deployments.js";
import { deploymentView } from "/console/deployment.js";
import { playgroundView } from "/console/playground.js";

const main = document.getElementById("main");
const top = document.getElementById("top");
let cleanup = null;

function signInView(reason) {
  top.hidden = true;
  const err = errorBox();
  if (reason) err.show(reason);
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, placeholder: "sk-...", "aria-describedby": "api-key-hint",
  });
  const button = h("button", { type: "submit", class: "btn btn-primary btn-block" }, "Sign in");
  const form = h("form", { class: "signin-form", novalidate: true },
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"),
      input,
      h("small", { class: "hint", id: "api-key-hint" },
        "A key of your workspace (", h("code", {}, "berth keys create"), ", or ",
        h("code", {}, "berth-data/dev-key"), "). It stays in this browser tab only.")),
    err.el, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.clear();
    const k = input.value.trim();
    if (!k) {
      err.show(new ApiError(0, "Enter an API key.", "InvalidApiKey"));
      input.focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Signing in…";
    try {
      await api("GET", "/api/v1/deployments?page_no=1&page_size=1", undefined, { key: k });
      key.set(k);
      route();
    } catch (e2) {
      err.show(e2);
      input.select();
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
  });
  fill(main, h("section", { class: "signin" },
    h("div", { class: "signin-card" },
      h("div", { class: "brand brand-lg" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "berth"),
      h("h1", {}, "Sign in to the console"),
      h("p", { class: "muted" }, "Deploy models, watch them come up, and try them."),
      form)));
  input.focus();
  return null;
}

let signOutReason = null;

/** Forgets the key. `reason`: why (the API refused the key), shown on the sign-in form. */
function signOut(reason) {
  key.clear();
  signOutReason = reason instanceof Error ? reason : null;
  if (location.hash && location.hash !== "#/") location.hash = "#/"; // routes again
  else route();
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  document.querySelectorAll("dialog").forEach((d) => d.close());
  if (!key.get()) {
    cleanup = signInView(signOutReason);
    signOutReason = null;
    document.title = "Sign in · berth console";
    return;
  }
  top.hidden = false;
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").map(decodeURIComponent);
  const onAuthError = () =>
    signOut(new ApiError(401, "The API refused this key (revoked, or of another berth). Sign in again.", "InvalidApiKey"));
  let view;
  if (parts[0] === "d" && parts[1]) {
    view = parts[2] === "chat"
      ? playgroundView(main, parts[1], { onAuthError })
      : deploymentView(main, parts[1], { onAuthError });
  } else {
    view = deploymentsView(main, { onAuthError });
  }
  cleanup = view;
  for (const a of top.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href") === "#/" && parts[0] !== "d");
  }
  main.focus({ preventScroll: true });
}

function header() {
  fill(top,
    h("div", { class: "top-inner" },
      h("a", { class: "brand", href: "#/" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "berth"),
      h("nav", { "aria-label": "Main" }, h("a", { href: "#/" }, "Deployments")),
      h("span", { class: "spacer" }),
      h("button", { type: "button", class: "btn btn-quiet", id: "sign-out", onclick: () => signOut() }, "Sign out")));
}

header();
window.addEventListener("hashchange", route);
route();
