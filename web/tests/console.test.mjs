// Browser test of the rule console, in real headless Chromium.
// Needs CONSOLE_URL (a running BFF with the demo tenant's five demo
// deployments), RULE_WASM (a valid rule module) and WRONG_WORLD_WASM (a
// module that is not a rule); the Rust API test `console::...` starts the
// BFF and runs this file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BFF_URL = process.env.CONSOLE_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const RULE_WASM = process.env.RULE_WASM;
const WRONG_WORLD_WASM = process.env.WRONG_WORLD_WASM;
const DEMO_DEPLOYMENTS = ['flash-sale', 'member-price', 'spend-200-save-30', 'coupons', 'points'];
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);
const TIMEOUT = 20_000;

const row = (name) => `[data-testid=deployment-row][data-name="${name}"]`;

test('the rule console lists, toggles, dry-runs, uploads and publishes rules', { timeout: 180_000 }, async () => {
  assert.ok(BFF_URL, 'CONSOLE_URL must point at a running BFF');
  assert.ok(RULE_WASM, 'RULE_WASM must name a valid rule module');
  assert.ok(WRONG_WORLD_WASM, 'WRONG_WORLD_WASM must name a module that is not a rule');
  // Fail early and clearly if the fixtures are missing.
  readFileSync(RULE_WASM);
  readFileSync(WRONG_WORLD_WASM);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const foreign = [];
  const pageErrors = [];
  const consoleMessages = [];
  const exchanges = [];
  let page;
  let step = 'start';
  try {
    page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.setDefaultTimeout(TIMEOUT);
    page.on('request', (req) => {
      const url = new URL(req.url());
      if (url.protocol.startsWith('http') && !LOOPBACK.has(url.hostname)) foreign.push(req.url());
      if (url.protocol.startsWith('ws') && !LOOPBACK.has(url.hostname)) foreign.push(req.url());
    });
    page.on('pageerror', (err) => pageErrors.push(String(err && err.stack ? err.stack : err)));
    page.on('console', (msg) => consoleMessages.push(`[${msg.type()}] ${msg.text()}`));
    page.on('requestfailed', (req) => exchanges.push(`FAILED ${req.method()} ${req.url()}: ${req.failure()?.errorText}`));
    page.on('response', async (resp) => {
      const req = resp.request();
      if (!['fetch', 'xhr'].includes(req.resourceType())) return;
      let body = '';
      try { body = (await resp.text()).slice(0, 600); } catch (_) { /* navigated away */ }
      const op = (req.postData() || '').match(/(query|mutation) (\w+)/);
      exchanges.push(`${resp.status()} ${req.method()} ${new URL(resp.url()).pathname}${op ? ` ${op[2]}` : ''} → ${body}`);
    });

    step = 'open the console';
    await page.goto(`${BFF_URL}/console/`);
    await page.getByRole('heading', { name: /rule console/i }).waitFor();

    step = 'use the demo author token';
    await page.click('[data-testid=demo-token]');
    await page.waitForFunction(() => document.querySelector('[data-testid=token]').value.length > 20);

    step = 'see the five demo deployments, active';
    for (const name of DEMO_DEPLOYMENTS) {
      await page.locator(`${row(name)}[data-status=ACTIVE]`).waitFor();
      assert.equal(await page.locator(`${row(name)} [data-testid=status]`).innerText(), 'active');
    }
    assert.ok(await page.locator('[data-testid=deployment-row]').count() >= 5);
    // The table shows what the registry says about each one.
    assert.equal(await page.locator(`${row('member-price')} [data-testid=stage]`).innerText(), 'ITEM');
    assert.equal(await page.locator(`${row('member-price')} [data-testid=stacking-group]`).innerText(), 'item-price');
    assert.equal(await page.locator(`${row('spend-200-save-30')} [data-testid=stage]`).innerText(), 'ORDER');

    step = 'deactivate spend-200-save-30';
    await page.click(`${row('spend-200-save-30')} [data-testid=deactivate]`);
    await page.locator(`${row('spend-200-save-30')}[data-status=INACTIVE]`).waitFor();
    assert.equal(await page.locator(`${row('spend-200-save-30')} [data-testid=status]`).innerText(), 'inactive');
    // The others are untouched.
    await page.locator(`${row('member-price')}[data-status=ACTIVE]`).waitFor();

    step = 'activate spend-200-save-30 again';
    await page.click(`${row('spend-200-save-30')} [data-testid=activate]`);
    await page.locator(`${row('spend-200-save-30')}[data-status=ACTIVE]`).waitFor();
    assert.equal(await page.locator(`${row('spend-200-save-30')} [data-testid=status]`).innerText(), 'active');

    step = "open member-price's detail";
    await page.click(`${row('member-price')} [data-testid=open-detail]`);
    await page.locator('[data-testid=detail][data-name="member-price"]').waitFor();
    assert.equal(await page.locator('[data-testid=detail-name]').innerText(), 'member-price');
    assert.ok(await page.locator('[data-testid=detail] [data-testid=version-row]').count() >= 1);
    assert.match(await page.locator('[data-testid=detail-config]').innerText(), /levels/);

    step = 'dry-run member-price against the default sample cart';
    await page.click('[data-testid=detail-dry-run]');
    assert.equal(await page.locator('[data-testid=dry-source]').inputValue(), 'member-price');
    await page.selectOption('[data-testid=dry-source]', 'member-price');
    const sample = JSON.parse(await page.locator('[data-testid=dry-cart]').inputValue());
    assert.equal(sample.member.level, 'gold');
    assert.equal(sample.lines.length, 3);
    await page.click('[data-testid=dry-run]');
    await page.locator('[data-testid=dry-status]').waitFor();
    const dryStatus = await page.locator('[data-testid=dry-status]').innerText();
    if (dryStatus !== 'ok') {
      const why = await page.locator('[data-testid=dry-result]').innerText();
      assert.fail(`the dry run of member-price failed: ${why}`);
    }
    assert.ok(await page.locator('[data-testid=outcome-row][data-kind=line-discount]').count() >= 1,
      'member-price proposes a line discount for a gold member');
    const fuel = Number(await page.locator('[data-testid=dry-fuel]').getAttribute('data-value'));
    assert.ok(fuel > 0, `fuel used is ${fuel}`);
    assert.match(await page.locator('[data-testid=dry-payable]').innerText(), /^¥\d[\d,]*\.\d\d$/);
    assert.match(await page.locator('[data-testid=dry-duration]').innerText(), /µs$/);

    step = 'upload a module that is not a rule';
    await page.setInputFiles('[data-testid=upload-file]', WRONG_WORLD_WASM);
    await page.click('[data-testid=upload-button]');
    await page.locator('[data-testid=upload-error][data-code=WRONG_WORLD]').waitFor();
    assert.match(await page.locator('[data-testid=upload-error]').innerText(), /WRONG_WORLD/);
    assert.equal(await page.locator('[data-testid=error-banner]').isVisible(), true);
    assert.equal(await page.locator('[data-testid=error-code]').innerText(), 'WRONG_WORLD');

    step = 'upload a valid rule';
    await page.setInputFiles('[data-testid=upload-file]', RULE_WASM);
    await page.click('[data-testid=upload-button]');
    await page.locator('[data-testid=upload-sha]').waitFor();
    const sha = (await page.locator('[data-testid=upload-sha]').innerText()).trim();
    assert.match(sha, /^[0-9a-f]{64}$/);
    assert.match(await page.locator('[data-testid=upload-size]').innerText(), /^\d[\d,]*$/);
    assert.equal(await page.locator('[data-testid=error-banner]').isVisible(), false, 'a good upload clears the upload error');

    step = 'publish it as console-test, active';
    await page.click('[data-testid=publish-reset]');
    assert.equal(await page.locator('[data-testid=pub-component]').inputValue(), sha, 'the upload fills the sha256');
    await page.fill('[data-testid=pub-name]', 'console-test');
    await page.fill('[data-testid=pub-config]', '{"levels":{"gold":1000}}');
    await page.selectOption('[data-testid=pub-stage]', 'ITEM');
    await page.check('[data-testid=pub-activate]');
    await page.click('[data-testid=publish]');
    await page.locator('[data-testid=publish-ok], [data-testid=publish-error]').first().waitFor();
    if (await page.locator('[data-testid=publish-error]').count()) {
      assert.fail(`publishing failed: ${await page.locator('[data-testid=publish-error]').innerText()}`);
    }
    await page.locator(`${row('console-test')}[data-status=ACTIVE]`).waitFor();
    assert.equal(await page.locator(`${row('console-test')} [data-testid=status]`).innerText(), 'active');
    assert.equal(await page.locator(`${row('console-test')} [data-testid=active-version]`).innerText(), 'v1');

    step = 'finish';
    assert.equal(await page.locator('[data-testid=error-banner]').isVisible(), false,
      `no error is left: ${await page.locator('[data-testid=error-banner]').innerText()}`);
    await page.screenshot({ path: join(tmpdir(), 'bff-console.png'), fullPage: true });
    assert.deepEqual(foreign, [], 'the console must load nothing from other hosts');
    assert.deepEqual(pageErrors, [], 'the page must throw no errors');
  } catch (err) {
    // Everything needed to tell why, in the test's output.
    console.error(`\nconsole test failed at step: ${step}`);
    if (page) {
      try {
        const banner = page.locator('[data-testid=error-banner]');
        if (await banner.isVisible()) console.error(`error banner: ${await banner.innerText()}`);
        const shot = join(tmpdir(), 'bff-console-failure.png');
        await page.screenshot({ path: shot, fullPage: true });
        console.error(`screenshot: ${shot}`);
      } catch (e) {
        console.error(`(could not inspect the page: ${e})`);
      }
    }
    console.error(`page errors:\n  ${pageErrors.join('\n  ') || '(none)'}`);
    console.error(`console messages:\n  ${consoleMessages.join('\n  ') || '(none)'}`);
    console.error(`requests to other hosts:\n  ${foreign.join('\n  ') || '(none)'}`);
    console.error(`API exchanges (last 25):\n  ${exchanges.slice(-25).join('\n  ') || '(none)'}`);
    throw err;
  } finally {
    await browser.close();
  }
});
