// Drives berth's web console in Debian's Chromium (headless) against a running `berth serve`:
// sign in (a wrong key first), create a deployment and watch it reach RUNNING without a reload,
// chat and see a streamed answer, run the copied snippets, scale to 2 and see two ready replicas,
// the calls in the charts, delete and see it go.
//
//   BERTH_URL=http://127.0.0.1:8080 BERTH_KEY=sk-... BERTH_MODEL=smollm2-135m-instruct node console.mjs
//
// BERTH_CONSOLE_SCREENSHOTS=DIR also writes 1280x800 PNGs of the main screens there.
// Run by tests/e2e/test_console.py, which starts berth with the real model.

import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const BASE = process.env.BERTH_URL;
const KEY = process.env.BERTH_KEY;
const MODEL = process.env.BERTH_MODEL || "smollm2-135m-instruct";
const SHOTS = process.env.BERTH_CONSOLE_SCREENSHOTS;
const CHROMIUM = process.env.BERTH_CHROMIUM || "/usr/bin/chromium";
const PYTHON = process.env.BERTH_PYTHON || "python3";
const TABS = ["curl", "Python (dashscope)", "Python (openai)"];
if (!BASE || !KEY) throw new Error("set BERTH_URL and BERTH_KEY");

const SUFFIX = "web";
const NAME = `${MODEL}-${SUFFIX}`;
const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** What the API itself answers, to compare with what the console shows. */
async function apiCall(method, path, body) {
  const res = await fetch(BASE + path, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

const profile = mkdtempSync(join(tmpdir(), "berth-console-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
});
const outside = [];
const consoleErrors = [];
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(15000);
  // Nothing may be loaded from anywhere but berth.
  page.on("request", (r) => {
    if (!r.url().startsWith(BASE)) outside.push(r.url());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of (401|404|400|409)/.test(m.text())) consoleErrors.push(m.text());
  });
  // A narrow window (a phone) scrolls nothing sideways.
  const fitsNarrow = async (what) => {
    await page.setViewportSize({ width: 380, height: 800 });
    await page.waitForTimeout(100);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    await page.setViewportSize({ width: 1280, height: 800 });
    check(wide <= 380, `${what} fits a 380px window (${wide}px wide)`);
  };
  const shot = async (name) => {
    if (!SHOTS) return;
    mkdirSync(SHOTS, { recursive: true });
    await page.evaluate(() => document.querySelectorAll(".toast").forEach((t) => t.remove()));
    await page.waitForTimeout(300);
    await page.screenshot({ path: join(SHOTS, `${name}.png`) });
  };

  step("a browser opening / lands on the console");
  await page.goto(BASE + "/");
  check(new URL(page.url()).pathname === "/console", `redirected to /console, got ${page.url()}`);
  const keyInput = page.getByLabel("API key");
  await keyInput.waitFor();

  step("a wrong key shows the API's message on the sign-in form");
  const wrong = await fetch(BASE + "/api/v1/deployments", { headers: { Authorization: "Bearer sk-wrong" } });
  const wrongMessage = (await wrong.json()).message;
  await keyInput.fill("sk-wrong");
  await page.getByRole("button", { name: "Sign in" }).click();
  const signinError = page.locator(".signin-form [role=alert]");
  await signinError.waitFor();
  check((await signinError.innerText()).includes(wrongMessage), `sign-in error shows "${wrongMessage}"`);
  check(!(await page.evaluate(() => sessionStorage.getItem("berth.key"))), "a wrong key is not kept");
  await keyInput.fill("");
  await shot("sign-in");

  step("sign in");
  await keyInput.fill(KEY);
  await keyInput.press("Enter");
  await page.getByRole("heading", { name: "Deployments", exact: true }).waitFor();
  check((await page.evaluate(() => sessionStorage.getItem("berth.key"))) === KEY, "the key is in sessionStorage");
  check((await page.evaluate(() => localStorage.length)) === 0, "nothing in localStorage");
  await page.getByText("No deployments yet").waitFor();
  // Marks this document: if anything reloaded the page, the mark would be gone.
  await page.evaluate(() => { window.__noReload = true; });

  step("keyboard: Enter opens the create dialog with the focus in it, Escape closes it and gives the focus back");
  await page.locator("#new-deployment").focus();
  await page.keyboard.press("Enter");
  await page.locator("dialog[open]").waitFor();
  check(await page.evaluate(() => document.activeElement.closest("dialog[open]") !== null), "focus is in the dialog");
  await page.keyboard.press("Escape");
  await page.locator("dialog[open]").waitFor({ state: "detached" });
  check(await page.evaluate(() => document.activeElement.id === "new-deployment"), "focus is back on the button");

  step("create: the API's message for a bad suffix shows in the dialog");
  await page.locator("#new-deployment").click();
  const dialog = page.locator("dialog[open]");
  await dialog.getByLabel("Model").selectOption(MODEL);
  const bad = await apiCall("POST", "/api/v1/deployments", { model_name: MODEL, capacity: 1, suffix: "no way!" });
  check(bad.status === 400, `a bad suffix is refused by the API (${bad.status})`);
  await dialog.getByLabel("Suffix").fill("no way!");
  await dialog.getByRole("button", { name: "Create" }).click();
  await dialog.locator("[role=alert]").filter({ hasText: bad.body.message }).waitFor();

  step("create, then watch it reach RUNNING without a reload");
  await dialog.getByLabel("Suffix").fill(SUFFIX);
  await dialog.getByRole("button", { name: "Create" }).click();
  await dialog.waitFor({ state: "detached" });
  const row = page.locator(`#deployments tr[data-name="${NAME}"]`);
  await row.waitFor();
  await row.locator('[data-field=status] [data-status="RUNNING"]').waitFor({ timeout: 120000 });
  check((await row.locator("[data-field=ready]").innerText()).trim() === "1 / 1", "1 / 1 ready");

  step("rate limits: the API's message for a bad limit, then a limit shows in the table");
  await row.getByRole("button", { name: `Rate limits of ${NAME}` }).click();
  const limits = page.locator("dialog[open]");
  const badLimit = await apiCall("PUT", `/api/v1/deployments/${NAME}/update`, { rpm_limit: 0 });
  check(badLimit.status === 400, `rpm_limit 0 is refused (${badLimit.status})`);
  await limits.getByLabel("RPM limit").fill("0");
  await limits.getByRole("button", { name: "Save" }).click();
  await limits.locator("[role=alert]").filter({ hasText: badLimit.body.message }).waitFor();
  await limits.getByLabel("RPM limit").fill("600");
  await limits.getByRole("button", { name: "Save" }).click();
  await limits.waitFor({ state: "detached" });
  await row.getByText("600 rpm").waitFor();
  check((await apiCall("GET", `/api/v1/deployments/${NAME}`)).body.output.rpm_limit === 600, "the API has the limit");
  await fitsNarrow("the deployments table");
  await shot("deployments");

  step("chat: a streamed answer that says Paris, with tokens and latency");
  await row.getByRole("link", { name: `Chat with ${NAME}` }).click();
  await page.getByRole("heading", { name: /Playground/ }).waitFor();
  await page.getByLabel("Temperature").fill("0");
  await page.getByLabel("Message").fill("What is the capital of France?");
  // The snippets of this very call, before it is sent.
  const snippets = {};
  for (const tab of TABS) {
    await page.getByRole("tab", { name: tab }).click();
    snippets[tab] = await page.locator("#snippet-code").innerText();
    check(snippets[tab].includes(BASE) && snippets[tab].includes(NAME) && !snippets[tab].includes(KEY),
      `the ${tab} snippet names this berth and the deployment, and not the key`);
  }
  await page.getByRole("tab", { name: "curl" }).click();
  await page.getByRole("button", { name: "Send" }).click();
  const answer = page.locator(".msg-assistant").last();
  await answer.locator("[data-done]").waitFor({ state: "attached", timeout: 60000 });
  const text = await answer.locator(".msg-text").innerText();
  check(/Paris/.test(text), `the answer says Paris: ${JSON.stringify(text)}`);
  const chunks = Number(await answer.getAttribute("data-chunks"));
  check(chunks > 1, `the answer came in pieces (${chunks} chunks)`);
  const usage = await answer.locator("[data-field=usage]").innerText();
  check(/\d+ prompt/.test(usage) && /\d+ completion/.test(usage) && /TTFT \d/.test(usage), `usage and latency shown: ${usage}`);

  await page.getByRole("tab", { name: "Python (openai)" }).click();
  check((await page.locator("#snippet-code").innerText()) === snippets["Python (openai)"],
    "with nothing typed, the snippet is the call just made");
  await page.getByRole("tab", { name: "curl" }).click();

  step("the copied snippets run as they are and answer the same");
  const env = { ...process.env, DASHSCOPE_API_KEY: KEY };
  const run = (cmd, args) => execFileSync(cmd, args, { env, timeout: 60000, encoding: "utf8" });
  const sse = run("bash", ["-c", snippets.curl]);
  const streamed = sse.split("\n").filter((l) => l.startsWith("data: {"))
    .map((l) => JSON.parse(l.slice(6))).map((c) => c.choices?.[0]?.delta?.content || "").join("");
  check(/Paris/.test(streamed), `curl snippet: ${JSON.stringify(streamed)}`);
  check(/"usage":\{/.test(sse), "the curl snippet asks for usage");
  for (const tab of ["Python (dashscope)", "Python (openai)"]) {
    const out = run(PYTHON, ["-c", snippets[tab]]);
    check(/Paris/.test(out), `${tab} snippet: ${JSON.stringify(out)}`);
  }
  await fitsNarrow("the playground");
  await shot("playground");

  step("scale to 2 on the deployment's page (a bad capacity first), then see two ready replicas");
  await page.locator(".crumbs a", { hasText: NAME }).click();
  await page.getByRole("heading", { name: NAME, exact: true }).waitFor();
  await page.locator("#replicas tbody tr").first().waitFor();
  await page.getByRole("button", { name: `Scale ${NAME}` }).click();
  const scale = page.locator("dialog[open]");
  const badScale = await apiCall("PUT", `/api/v1/deployments/${NAME}/scale`, { capacity: 1.5 });
  check(badScale.status === 400, "capacity 1.5 is refused");
  await scale.getByLabel("Capacity").fill("1.5");
  await scale.getByRole("button", { name: "Scale" }).click();
  await scale.locator("[role=alert]").filter({ hasText: badScale.body.message }).waitFor();
  await scale.getByLabel("Capacity").fill("2");
  await scale.getByRole("button", { name: "Scale" }).click();
  await scale.waitFor({ state: "detached" });
  await page.waitForFunction(() => document.querySelectorAll('#replicas tbody tr[data-state="ready"]').length === 2,
    null, { timeout: 120000 });
  await page.locator('#dep-status [data-status="RUNNING"]').waitFor({ timeout: 30000 });
  check((await page.locator("#dep-ready").innerText()).includes("2 / 2"), "2 / 2 ready on the page");
  await page.locator("#events li").first().waitFor();

  step("charts: the four calls just made (console, curl, dashscope, openai) show in the traffic");
  await page.waitForFunction(() => Number(document.getElementById("charts")?.dataset.requests) >= 4, null,
    { timeout: 30000 });
  check((await page.locator("#charts figure.chart").count()) === 4, "four charts");
  const charted = await page.locator("#charts").evaluate((el) => ({ ...el.dataset }));
  check(Number(charted.outputTokens) > 0 && charted.ttft === "true", `tokens and TTFT charted: ${JSON.stringify(charted)}`);
  const stats = await apiCall("GET", `/api/v1/deployments/${NAME}/stats`);
  const total = stats.body.output.points.reduce((a, p) => a + p.requests, 0);
  check(total === Number(charted.requests), `the charts show what the API counts (${total} vs ${charted.requests})`);
  await page.locator("#logs-text").filter({ hasText: /\[/ }).waitFor({ timeout: 30000 });
  await fitsNarrow("the deployment's page");
  await shot("deployment");

  step("delete: cancel keeps it, confirm removes it from the table");
  await page.getByRole("link", { name: "Deployments", exact: true }).first().click();
  await row.waitFor();
  await row.getByRole("button", { name: `Delete ${NAME}` }).click();
  await page.locator("dialog[open]").getByRole("button", { name: "Cancel" }).click();
  await page.locator("dialog[open]").waitFor({ state: "detached" });
  check(await row.isVisible(), "cancel keeps the deployment");
  await row.getByRole("button", { name: `Delete ${NAME}` }).click();
  await page.locator("dialog[open]").getByRole("button", { name: "Delete" }).click();
  await row.waitFor({ state: "detached", timeout: 60000 });
  await page.getByText("No deployments yet").waitFor();
  const gone = await apiCall("GET", `/api/v1/deployments/${NAME}`);
  check(gone.status === 404, `the API says it is gone (${gone.status})`);
  check(await page.evaluate(() => window.__noReload === true), "no reload happened");

  step("sign out clears the key");
  await page.getByRole("button", { name: "Sign out" }).click();
  await keyInput.waitFor();
  check(!(await page.evaluate(() => sessionStorage.getItem("berth.key"))), "the key is gone");

  check(outside.length === 0, `nothing loaded from elsewhere: ${outside.join(", ")}`);
  check(consoleErrors.length === 0, `no script errors: ${consoleErrors.join(" | ")}`);
  step("console test passed");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
