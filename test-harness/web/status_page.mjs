// Drives the orchestratord status page in Debian's headless Chromium with playwright-core.
// Started by crates/orchestratord/tests/e2e/web_page.rs with:
//   LLORCH_URL    daemon base URL
//   LLORCH_TOKEN  its bearer token (the page must ask for it)
//   TASK_ID       a running task to find and cancel with the page's button
//   WAITING_ID    a waiting task whose predicted start the page must show
//   SCREENSHOT    where to save the screenshot (docs/status-page.png)
//   MIN_HISTORY_S optional: wait until the charts hold this much history before the screenshot
// Prints one JSON line with what it saw; exits non-zero on any failure.
import { chromium } from "playwright-core";

const url = process.env.LLORCH_URL;
const token = process.env.LLORCH_TOKEN;
const taskId = process.env.TASK_ID;
const waitingId = process.env.WAITING_ID;
const shot = process.env.SCREENSHOT;
const minHistoryMs = 1000 * Number(process.env.MIN_HISTORY_S || 0);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!url || !token || !taskId || !waitingId || !shot) {
  console.error("need LLORCH_URL, LLORCH_TOKEN, TASK_ID, WAITING_ID and SCREENSHOT");
  process.exit(2);
}

const log = (...a) => console.error("[web]", ...a);
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.on("console", (m) => log("console:", m.type(), m.text()));
  page.on("pageerror", (e) => log("page error:", e.message));
  page.on("dialog", (d) => { log("dialog:", d.message()); d.dismiss(); });

  await page.goto(url + "/", { waitUntil: "domcontentloaded" });
  // The daemon has a token: the page asks for it.
  await page.locator("#token-form").waitFor({ state: "visible", timeout: 15000 });
  log("token form shown");
  await page.fill("#token-input", token);
  await page.click("#token-submit");
  await page.locator("#main").waitFor({ state: "visible", timeout: 15000 });
  const kept = await page.evaluate(() => sessionStorage.getItem("llorch.token"));
  if (kept !== token) throw new Error("token not kept in sessionStorage");
  log("connected");

  const row = page.locator(`tr[data-task-id="${taskId}"]`);
  const state = row.locator(".state");
  await page.waitForFunction(
    (id) => {
      const r = document.querySelector(`tr[data-task-id="${id}"]`);
      if (!r) return false;
      const cells = r.querySelectorAll("td");
      return r.querySelector(".state")?.textContent === "running" && Number(cells[5]?.textContent) > 0;
    },
    taskId,
    { timeout: 30000, polling: 200 },
  );
  log("task running:", await row.innerText());

  // The charts: lines with data points (tokens/s above 0 after the tasks), VRAM segments per
  // pool on the cards, the waiting task's predicted start.
  await page.waitForFunction(
    (id) => {
      const tok = document.querySelector("#chart-tokens");
      const q = document.querySelector("#chart-queue");
      return tok && q && Number(tok.dataset.points) >= 4 && Number(tok.dataset.max) > 0 &&
        Number(q.dataset.points) >= 9 && tok.querySelectorAll("polyline").length > 0 &&
        document.querySelectorAll("#gpus .seg").length > 0 &&
        /in ~|next/.test(document.querySelector(`tr[data-waiting-id="${id}"] .eta`)?.textContent || "");
    },
    waitingId,
    { timeout: 45000, polling: 250 },
  );
  const charts = await page.evaluate((id) => {
    const tok = document.querySelector("#chart-tokens");
    const q = document.querySelector("#chart-queue");
    return {
      tokens_points: Number(tok.dataset.points),
      tokens_max: Number(tok.dataset.max),
      tokens_lines: tok.querySelectorAll("polyline").length,
      queue_points: Number(q.dataset.points),
      queue_lines: q.querySelectorAll("polyline").length,
      vram_pools: Array.from(document.querySelectorAll("#gpus .seg[data-pool]")).map((e) => e.dataset.pool),
      waiting_eta: document.querySelector(`tr[data-waiting-id="${id}"] .eta`)?.textContent.trim(),
      waiting_rows: document.querySelectorAll("#waiting tbody tr").length,
      tok_rate: document.querySelector("#tok-rate").textContent,
    };
  }, waitingId);
  log("charts:", JSON.stringify(charts));
  if (minHistoryMs > 0) {
    await page.waitForFunction(
      (ms) => Number(document.querySelector("#chart-tokens")?.dataset.historyMs) >= ms,
      minHistoryMs,
      { timeout: minHistoryMs + 60000, polling: 500 },
    );
    log("history of", minHistoryMs, "ms charted");
  }
  const live = await page.locator("#live").innerText();
  const running = Number(await page.locator("#q-running").innerText());
  const pools = await page.locator("#pools tbody tr").count();
  await page.screenshot({ path: shot, fullPage: true });
  log("screenshot saved to", shot);

  // Reloading the tab keeps the token (sessionStorage): no prompt again.
  await page.reload({ waitUntil: "domcontentloaded" });
  await page.locator("#main").waitFor({ state: "visible", timeout: 15000 });
  await row.locator("button.cancel").waitFor({ state: "visible", timeout: 15000 });

  await row.locator("button.cancel").click();
  log("cancel clicked");
  await page.waitForFunction(
    (id) => document.querySelector(`tr[data-task-id="${id}"] .state`)?.textContent === "canceled",
    taskId,
    { timeout: 20000, polling: 200 },
  );
  const after = await state.innerText();
  const buttons = await row.locator("button.cancel").count();
  console.log(JSON.stringify({ ok: true, live, running, pools, charts, final_state: after, cancel_buttons_after: buttons }));
  await browser.close();
} catch (e) {
  log("FAILED:", e.message);
  try { if (page) await page.screenshot({ path: shot.replace(/\.png$/, "") + "-failure.png", fullPage: true }); } catch {}
  try { if (page) log("page text:", await page.locator("body").innerText()); } catch {}
  await browser.close();
  process.exit(1);
}
