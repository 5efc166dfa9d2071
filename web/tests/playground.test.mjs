// Browser test of the playground, in real headless Chromium.
// Needs PLAYGROUND_URL (a running BFF); the Rust API test
// `playground::the_playground_runs_...` starts one and runs this file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BFF_URL = process.env.PLAYGROUND_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

test('the playground runs the example home-card query with the demo token', async () => {
  assert.ok(BFF_URL, 'PLAYGROUND_URL must point at a running BFF');
  const origin = new URL(BFF_URL).origin;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  try {
    const page = await browser.newPage();
    const foreign = [];
    const pageErrors = [];
    page.on('request', (req) => {
      const url = new URL(req.url());
      if (url.protocol.startsWith('http') && url.origin !== origin) foreign.push(req.url());
    });
    page.on('pageerror', (err) => pageErrors.push(String(err)));

    // GraphiQL loads the schema by introspection: it must succeed, or the
    // docs explorer and autocompletion are empty.
    const introspected = page.waitForResponse(
      (resp) => resp.url().endsWith('/graphql') && (resp.request().postData() || '').includes('__schema'),
    );
    await page.goto(`${BFF_URL}/playground/`);
    const schema = await (await introspected).json();
    assert.equal(schema.errors, undefined, JSON.stringify(schema.errors));
    assert.ok(schema.data.__schema.types.some((t) => t.name === 'HomeCard'));
    await page.waitForSelector('.graphiql-execute-button', { timeout: 20_000 });

    await page.click('#use-demo-token');
    await page.waitForFunction(() => document.getElementById('token').value.length > 20);

    const answered = page.waitForResponse(
      (resp) => resp.url().endsWith('/graphql') && (resp.request().postData() || '').includes('homeCard'),
    );
    await page.click('.graphiql-execute-button');
    const response = await answered;
    assert.match(response.request().headers()['authorization'] || '', /^Bearer /);
    const body = await response.json();
    assert.equal(body.errors, undefined);
    assert.equal(body.data.homeCard.member.id, 'member-1');
    assert.ok(body.data.homeCard.flashSale.some((p) => p.id === 'sku-flash-1'));
    assert.ok(body.data.homeCard.recommended.length > 0);

    // And the person at the screen sees it in the result pane.
    const result = page.locator('.result-window');
    await result.getByText('"GOLD"').waitFor({ timeout: 20_000 });
    assert.match(await result.innerText(), /"homeCard"/);

    await page.screenshot({ path: join(tmpdir(), 'bff-playground.png') });
    assert.deepEqual(foreign, [], 'the playground must load nothing from other hosts');
    assert.deepEqual(pageErrors, []);
  } finally {
    await browser.close();
  }
});
