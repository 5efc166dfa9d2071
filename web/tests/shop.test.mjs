// Browser test of the shop demo page, in real headless Chromium.
// Needs SHOP_URL (a running development BFF on the embedded default); the
// Rust API test `shop::the_shop_page_...` starts one and runs this file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BFF_URL = process.env.SHOP_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const TIMEOUT = 20_000;

/** The checkout answers the page received, in order. */
function watchCheckouts(page) {
  const answers = [];
  page.on('response', async (resp) => {
    const post = resp.request().postData() || '';
    if (resp.url().endsWith('/graphql') && post.includes('ShopCheckout')) {
      const key = JSON.parse(post).variables.input.idempotencyKey;
      const header = resp.request().headers()['idempotency-key'];
      answers.push({ key, header, body: await resp.json() });
    }
  });
  return answers;
}

test('a member buys the flash item in one tap, a second tap makes no second order, and the simulator pays', { timeout: 120_000 }, async () => {
  assert.ok(BFF_URL, 'SHOP_URL must point at a running BFF');
  const origin = new URL(BFF_URL).origin;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
    page.setDefaultTimeout(TIMEOUT);
    const foreign = [];
    const pageErrors = [];
    page.on('request', (req) => {
      const url = new URL(req.url());
      if (url.protocol.startsWith('http') && url.origin !== origin) foreign.push(req.url());
    });
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    const checkouts = watchCheckouts(page);
    const remaining = async () => Number(await page.locator('[data-testid=flash]').getAttribute('data-remaining'));

    await page.goto(`${BFF_URL}/shop/`);
    await page.selectOption('[data-testid=member]', 'member-3');
    await page.click('[data-testid=sign-in]');
    await page.locator('[data-testid=flash]').waitFor();
    await page.locator('[data-testid=me-name]').filter({ hasText: /.+/ }).waitFor();
    const before = await remaining();
    assert.equal(before, 100, 'the sale opens with its whole stock');
    assert.match(await page.locator('[data-testid=flash-price]').innerText(), /^¥\d+\.\d\d$/);

    // One tap: an order awaiting payment, one unit less on sale.
    await page.click('[data-testid=buy]');
    await page.locator('[data-testid=order-status]', { hasText: 'AWAITING_PAYMENT' }).waitFor();
    const orderId = await page.locator('[data-testid=order-id]').innerText();
    assert.match(orderId, /^mall-1\.[0-9a-f]+$/);
    await page.waitForFunction(
      (n) => Number(document.querySelector('[data-testid=flash]').dataset.remaining) === n,
      before - 1,
    );

    // A second tap sends the same key and gets the same order back.
    await page.click('[data-testid=buy]');
    await page.waitForFunction(() => document.querySelector('[data-testid=buy]') !== null);
    await (async () => {
      const deadline = Date.now() + TIMEOUT;
      while (checkouts.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    })();
    assert.equal(checkouts.length, 2, 'two taps, two requests');
    assert.equal(checkouts[0].key, checkouts[1].key, 'both taps carry one idempotency key');
    assert.equal(checkouts[0].header, checkouts[0].key, 'the header carries the key too');
    for (const c of checkouts) assert.equal(c.body.errors, undefined, JSON.stringify(c.body));
    assert.equal(checkouts[1].body.data.checkout.order.id, orderId, 'the second tap answers the first order');
    assert.equal(await page.locator('[data-testid=order-id]').innerText(), orderId);
    await page.waitForTimeout(300);
    assert.equal(await remaining(), before - 1, 'the second tap reserved nothing');

    // The simulator pays it.
    await page.click('[data-testid=simulate-pay]');
    await page.locator('[data-testid=order-status]', { hasText: /^(PAID|COMPLETED)$/ }).waitFor();
    assert.equal(await remaining(), before - 1, 'a paid unit stays sold');

    // Pay the bill at store-1: a new order, paid through the simulator.
    await page.click('[data-testid=new-order]');
    await page.fill('[data-testid=bill-amount]', '88.80');
    await page.click('[data-testid=pay-bill]');
    await page.locator('[data-testid=order-status]', { hasText: 'AWAITING_PAYMENT' }).waitFor();
    const billId = await page.locator('[data-testid=order-id]').innerText();
    assert.notEqual(billId, orderId);
    assert.match(await page.locator('[data-testid=order-payable]').innerText(), /^¥\d+\.\d\d$/);
    await page.click('[data-testid=simulate-pay]');
    await page.locator('[data-testid=order-status]', { hasText: /^(PAID|COMPLETED)$/ }).waitFor();

    // A second flash purchase by the same member is over its limit: the page says so.
    await page.click('[data-testid=new-order]');
    await page.click('[data-testid=buy]');
    await page.locator('[data-testid=error-code]', { hasText: 'PURCHASE_LIMIT_EXCEEDED' }).waitFor();
    assert.equal(await remaining(), before - 1);

    await page.screenshot({ path: join(tmpdir(), 'bff-shop.png') });
    assert.deepEqual(foreign, [], 'the shop page must load nothing from other hosts');
    assert.deepEqual(pageErrors, []);
  } finally {
    await browser.close();
  }
});
