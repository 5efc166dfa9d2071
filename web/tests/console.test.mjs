// Browser test of the rule console, in real headless Chromium.
// Needs CONSOLE_URL (a running BFF with the demo tenant's five demo
// deployments), RULE_WASM (a valid rule module), WRONG_WORLD_WASM (a
// module that is not a rule) and PANIC_WASM (a rule whose evaluate panics);
// the Rust API test `console::...` starts the BFF and runs this file.
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
const PANIC_WASM = process.env.PANIC_WASM;
const DEMO_DEPLOYMENTS = ['flash-sale', 'member-price', 'spend-200-save-30', 'coupons', 'points'];
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);
const TIMEOUT = 20_000;
/** How long a deployment may take to show as quarantined after its 5th failure. */
const QUARANTINE_WITHIN_MS = 3_000;
/** The quote the test makes itself (anonymous: the demo tenant), a bill at a store. */
const QUOTE = 'query($c: CartInput!){ quote(input:$c){ payable { amount } } }';
const BILL = { c: { mallId: 'mall-1', storeId: 'store-1', billAmount: 10000 } };

const row = (name) => `[data-testid=deployment-row][data-name="${name}"]`;

test('the rule console lists, toggles, dry-runs, uploads, publishes, rolls back and un-quarantines rules', { timeout: 180_000 }, async () => {
  assert.ok(BFF_URL, 'CONSOLE_URL must point at a running BFF');
  assert.ok(RULE_WASM, 'RULE_WASM must name a valid rule module');
  assert.ok(WRONG_WORLD_WASM, 'WRONG_WORLD_WASM must name a module that is not a rule');
  assert.ok(PANIC_WASM, 'PANIC_WASM must name a rule module whose evaluate panics');
  // Fail early and clearly if the fixtures are missing.
  readFileSync(RULE_WASM);
  readFileSync(WRONG_WORLD_WASM);
  readFileSync(PANIC_WASM);

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

  /** A quote made by the test itself (as a shopper would), logged with the page's exchanges. */
  const quote = async () => {
    const resp = await fetch(`${BFF_URL}/graphql`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ query: QUOTE, variables: BILL }),
    });
    const text = await resp.text();
    exchanges.push(`(test) ${resp.status} POST /graphql quote → ${text.slice(0, 600)}`);
    assert.equal(resp.status, 200, `the quote answered ${resp.status}: ${text}`);
    const body = JSON.parse(text);
    assert.equal(body.errors, undefined, `the quote must succeed: ${text}`);
    const payable = body.data && body.data.quote && body.data.quote.payable;
    assert.ok(payable && Number.isInteger(payable.amount), `the quote has a payable: ${text}`);
    return payable.amount;
  };

  /** Clicks Publish and waits for this publication's answer; fails with the page's error. */
  const publishAndWait = async (name) => {
    await page.click('[data-testid=publish]');
    const ok = page.locator('[data-testid=publish-ok]', { hasText: `Published ${name}` });
    await ok.or(page.locator('[data-testid=publish-error]')).first().waitFor();
    if (await page.locator('[data-testid=publish-error]').count()) {
      assert.fail(`publishing ${name} failed: ${await page.locator('[data-testid=publish-error]').innerText()}`);
    }
  };

  /** Clicks Refresh until `selector` matches (each round waits for the listing), for at most `ms`. */
  const refreshUntil = async (selector, ms, what) => {
    const deadline = Date.now() + ms;
    for (let round = 1; ; round += 1) {
      const listed = page.waitForResponse((r) => new URL(r.url()).pathname === '/graphql'
        && (r.request().postData() || '').includes('ConsoleDeployments'));
      await page.click('[data-testid=refresh]');
      await listed;
      try {
        await page.locator(selector).waitFor({ timeout: 250 });
        return;
      } catch (err) {
        if (Date.now() >= deadline) {
          const rowText = await page.locator('[data-testid=deployments]').innerText().catch(() => '?');
          assert.fail(`${what}: not seen within ${ms} ms (${round} refreshes); the table:\n${rowText}`);
        }
      }
    }
  };

  const cell = (name, testid) => page.locator(`${row(name)} [data-testid=${testid}]`);

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

    step = "open member-price's detail and load it into the publish form";
    await page.click(`${row('member-price')} [data-testid=open-detail]`);
    await page.locator('[data-testid=detail][data-name="member-price"]').waitFor();
    await page.locator(`${row('member-price')}[data-status=ACTIVE][data-active-version="1"]`).waitFor();
    assert.equal(await cell('member-price', 'rollback').isDisabled(), true, 'one version: nothing to roll back to');
    const memberSha = (await page.locator('[data-testid=active-component]').innerText()).trim();
    assert.match(memberSha, /^[0-9a-f]{64}$/);
    const configV1 = JSON.parse(await page.locator('[data-testid=detail-config]').innerText());
    await page.click('[data-testid=detail-load-form]');
    await page.waitForFunction(() => document.querySelector('[data-testid=pub-name]').value === 'member-price');
    assert.equal(await page.locator('[data-testid=pub-component]').inputValue(), memberSha,
      "the form holds member-price's active component");

    step = 'publish member-price v2 (same component, new config), active';
    await page.fill('[data-testid=pub-component]', memberSha);
    await page.fill('[data-testid=pub-config]', '{"levels":{"gold":1000}}');
    await page.selectOption('[data-testid=pub-stage]', 'ITEM');
    await page.fill('[data-testid=pub-priority]', '20');
    await page.fill('[data-testid=pub-group]', 'item-price');
    await page.check('[data-testid=pub-activate]');
    await publishAndWait('member-price');
    await page.locator(`${row('member-price')}[data-status=ACTIVE][data-active-version="2"]`).waitFor();
    assert.equal(await cell('member-price', 'active-version').innerText(), 'v2');
    assert.equal(await cell('member-price', 'stage').innerText(), 'ITEM');
    assert.equal(await cell('member-price', 'priority').innerText(), '20');
    assert.equal(await cell('member-price', 'stacking-group').innerText(), 'item-price');
    await page.locator('[data-testid=detail] [data-testid=version-row][data-version="2"]').waitFor();
    assert.equal(await page.locator('[data-testid=detail] [data-testid=version-row]').count(), 2);
    assert.equal(
      await page.locator('[data-testid=version-row][data-version="2"] [data-testid=version-component]').getAttribute('title'),
      memberSha, 'v2 runs the same component as v1');
    await page.waitForFunction(() => /"gold": 1000/.test(document.querySelector('[data-testid=detail-config]').textContent));
    assert.deepEqual(JSON.parse(await page.locator('[data-testid=detail-config]').innerText()), { levels: { gold: 1000 } });

    step = 'roll member-price back to v1';
    assert.equal(await cell('member-price', 'rollback').isDisabled(), false, 'two versions: Roll back is offered');
    await page.click(`${row('member-price')} [data-testid=rollback]`);
    await page.locator(`${row('member-price')}[data-status=ACTIVE][data-active-version="1"]`).waitFor();
    assert.equal(await cell('member-price', 'status').innerText(), 'active');
    assert.match(await cell('member-price', 'active-version').innerText(), /^v1 \(latest v2\)$/);
    await page.waitForFunction(() => !/"gold": 1000/.test(document.querySelector('[data-testid=detail-config]').textContent));
    assert.deepEqual(JSON.parse(await page.locator('[data-testid=detail-config]').innerText()), configV1,
      "the detail shows v1's config again");

    step = 'upload the panicking rule';
    const baseline = await quote();
    await page.setInputFiles('[data-testid=upload-file]', PANIC_WASM);
    await page.click('[data-testid=upload-button]');
    await page.locator('[data-testid=upload-ok]', { hasText: 'hostile_panic.wasm' })
      .or(page.locator('[data-testid=upload-error]')).first().waitFor();
    if (await page.locator('[data-testid=upload-error]').count()) {
      assert.fail(`uploading the panicking rule failed: ${await page.locator('[data-testid=upload-error]').innerText()}`);
    }
    const panicSha = (await page.locator('[data-testid=upload-sha]').innerText()).trim();
    assert.match(panicSha, /^[0-9a-f]{64}$/);
    assert.notEqual(panicSha, sha);

    step = 'publish it as crashy (ORDER), active';
    await page.click('[data-testid=publish-reset]');
    assert.equal(await page.locator('[data-testid=pub-component]').inputValue(), panicSha, 'the upload fills the sha256');
    await page.fill('[data-testid=pub-name]', 'crashy');
    await page.selectOption('[data-testid=pub-stage]', 'ORDER');
    await page.check('[data-testid=pub-activate]');
    await publishAndWait('crashy');
    await page.locator(`${row('crashy')}[data-status=ACTIVE][data-active-version="1"]`).waitFor();
    assert.equal(await cell('crashy', 'stage').innerText(), 'ORDER');
    assert.equal(await cell('crashy', 'failures').getAttribute('data-value'), '0', 'no failures before any quote');

    step = 'five quotes, each priced without the failing rule';
    for (let i = 1; i <= 5; i += 1) {
      step = `quote ${i} of 5 with crashy active`;
      assert.equal(await quote(), baseline, `quote ${i}: the panicking rule must not change the price`);
    }

    step = 'see crashy quarantined after its 5th failure';
    await refreshUntil(`${row('crashy')}[data-status=QUARANTINED]`, QUARANTINE_WITHIN_MS, 'crashy quarantined');
    assert.equal(await cell('crashy', 'status').innerText(), 'quarantined');
    assert.match(await cell('crashy', 'quarantine-reason').innerText(), /PANIC/);
    assert.equal(await cell('crashy', 'failures').getAttribute('data-value'), '5', 'one failure per quote, none after the quarantine');
    assert.equal(await cell('crashy', 'failures').innerText(), '5');
    assert.equal(await cell('crashy', 'last-failure').innerText(), 'PANIC');
    assert.equal(await cell('crashy', 'active-version').innerText(), 'v1');
    // The detail says so too, and how to clear it.
    await page.click(`${row('crashy')} [data-testid=open-detail]`);
    await page.locator('[data-testid=detail][data-name="crashy"]').waitFor();
    await page.locator('[data-testid=detail-quarantine]').waitFor();
    assert.match(await page.locator('[data-testid=detail-quarantine]').innerText(), /PANIC/);
    assert.match(await page.locator('[data-testid=stat-failures]').innerText(), /^5 \(5 in a row\)$/);
    assert.match(await page.locator('[data-testid=stat-last-failure]').innerText(), /^PANIC/);

    step = 'activate crashy again (clears the quarantine)';
    await page.click(`${row('crashy')} [data-testid=activate]`);
    await page.locator(`${row('crashy')}[data-status=ACTIVE][data-active-version="1"]`).waitFor();
    assert.equal(await cell('crashy', 'status').innerText(), 'active');
    assert.equal(await page.locator(`${row('crashy')} [data-testid=quarantine-reason]`).count(), 0);
    await page.locator('[data-testid=detail-quarantine]').waitFor({ state: 'hidden' });
    assert.equal(await cell('crashy', 'activate').isDisabled(), true, 'active on its latest version');

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
        const rows = await page.locator('[data-testid=deployment-row]').evaluateAll((trs) => trs.map((tr) =>
          `${tr.dataset.name} [${tr.dataset.status} v${tr.dataset.activeVersion}]: ${tr.innerText.replace(/\s+/g, ' ')}`));
        console.error(`deployments:\n  ${rows.join('\n  ') || '(none)'}`);
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
