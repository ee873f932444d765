// Drives the orchestratord status page in Debian's headless Chromium with playwright-core.
// Started by crates/orchestratord/tests/web_page.rs with:
//   LLORCH_URL    daemon base URL
//   LLORCH_TOKEN  its bearer token (the page must ask for it)
//   TASK_ID       a running task to find and cancel with the page's button
//   SCREENSHOT    where to save the screenshot (docs/status-page.png)
// Prints one JSON line with what it saw; exits non-zero on any failure.
import { chromium } from "playwright-core";

const url = process.env.LLORCH_URL;
const token = process.env.LLORCH_TOKEN;
const taskId = process.env.TASK_ID;
const shot = process.env.SCREENSHOT;
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!url || !token || !taskId || !shot) {
  console.error("need LLORCH_URL, LLORCH_TOKEN, TASK_ID and SCREENSHOT");
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
  const context = await browser.newContext({ viewport: { width: 1280, height: 680 }, deviceScaleFactor: 1 });
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
      return r.querySelector(".state")?.textContent === "running" && Number(cells[4]?.textContent) > 0;
    },
    taskId,
    { timeout: 30000, polling: 200 },
  );
  log("task running:", await row.innerText());
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
  console.log(JSON.stringify({ ok: true, live, running, pools, final_state: after, cancel_buttons_after: buttons }));
  await browser.close();
} catch (e) {
  log("FAILED:", e.message);
  try { if (page) await page.screenshot({ path: shot.replace(/\.png$/, "") + "-failure.png", fullPage: true }); } catch {}
  try { if (page) log("page text:", await page.locator("body").innerText()); } catch {}
  await browser.close();
  process.exit(1);
}
