// The BFF's member-facing demo page: pick a member, see the flash-sale
// product with the member's price and what is left, buy it in one tap, pay a
// bill at a store, and pay the order with the development payment simulator.
// Plain ES module, no dependencies, nothing loaded from other hosts.
//
// One tap = one idempotency key: the key of a purchase is made when the
// member starts it and kept until they start another ("New order"), so a
// second tap (or a retry after a lost answer) gets the same order back.

const MALL = 'mall-1';
const STORE = 'store-1';
const FLASH_SKU = 'sku-flash-1';
const POLL_MS = 300;
const POLL_TIMES = 40;

const ME_QUERY = `query ShopMe($mall: ID!) {
  homeCard(mallId: $mall) { member { id nickname level points wallet { amount } } }
}`;
const PRODUCT_QUERY = `query ShopProduct($id: ID!) {
  product(id: $id) {
    id name listPrice { amount }
    price { final { amount } }
    flashSale { price { amount } remaining perMemberLimit }
  }
}`;
const CHECKOUT_MUTATION = `mutation ShopCheckout($input: CheckoutInput!) {
  checkout(input: $input) {
    order { id status payable { amount } externalAmount { amount } }
    payExternally { amount }
  }
}`;
const ORDER_QUERY = `query ShopOrder($id: ID!) {
  order(id: $id) { id status payable { amount } externalAmount { amount } }
}`;
const CANCEL_MUTATION = `mutation ShopCancel($id: ID!) {
  cancelOrder(id: $id) { id status payable { amount } externalAmount { amount } }
}`;

const $ = (id) => document.getElementById(id);
const state = { token: null, member: null, buyKey: null, billKey: null, order: null };

/** ¥ and two decimals from minor units. */
const yuan = (minor) => `¥${(minor / 100).toFixed(2)}`;

function newKey(prefix) {
  const random = (globalThis.crypto && crypto.randomUUID)
    ? crypto.randomUUID()
    : `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
  return `${prefix}-${random}`;
}

class ShopError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function showError(err) {
  $('error-code').textContent = err.code || 'ERROR';
  $('error-message').textContent = err.message;
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
}

async function graphql(query, variables, headers = {}) {
  let resp;
  try {
    resp = await fetch('/graphql', {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        Accept: 'application/json',
        ...(state.token ? { Authorization: `Bearer ${state.token}` } : {}),
        ...headers,
      },
      body: JSON.stringify({ query, variables }),
    });
  } catch (e) {
    throw new ShopError('NETWORK_ERROR', String(e));
  }
  const body = await resp.json().catch(() => null);
  if (!body) throw new ShopError('BAD_RESPONSE', `HTTP ${resp.status}`);
  if (body.errors && body.errors.length) {
    const first = body.errors[0];
    throw new ShopError((first.extensions && first.extensions.code) || 'ERROR', first.message);
  }
  return body.data;
}

/** Runs an action, showing its failure in the error banner. */
async function guarded(button, action) {
  clearError();
  if (button) button.disabled = true;
  try {
    await action();
  } catch (err) {
    showError(err);
  } finally {
    if (button) button.disabled = false;
  }
}

async function signIn() {
  const member = $('member').value;
  const resp = await fetch(`/dev/token?member=${encodeURIComponent(member)}`);
  const body = await resp.json().catch(() => null);
  if (!resp.ok || !body || !body.token) {
    throw new ShopError('NO_DEV_TOKEN', 'demo tokens are only handed out by a development server');
  }
  state.token = body.token;
  state.member = member;
  state.buyKey = null;
  state.billKey = null;
  showOrder(null);
  const data = await graphql(ME_QUERY, { mall: MALL });
  const me = data.homeCard.member;
  $('me-name').textContent = me ? me.nickname : member;
  $('me-level').textContent = me ? me.level : '';
  $('me-points').textContent = me ? String(me.points) : '';
  $('me-wallet').textContent = me ? yuan(me.wallet.amount) : '';
  $('me').hidden = false;
  $('bill').hidden = false;
  await loadProduct();
}

async function loadProduct() {
  const data = await graphql(PRODUCT_QUERY, { id: FLASH_SKU });
  const p = data.product;
  if (!p || !p.flashSale) throw new ShopError('NOT_FOUND', `${FLASH_SKU} is not on sale`);
  $('flash-name').textContent = p.name;
  $('flash-price').textContent = yuan(p.flashSale.price.amount);
  $('flash-list').textContent = yuan(p.listPrice.amount);
  $('flash-final').textContent = p.price ? yuan(p.price.final.amount) : '—';
  $('flash-remaining').textContent = String(p.flashSale.remaining);
  $('flash-limit').textContent = String(p.flashSale.perMemberLimit);
  $('flash').dataset.remaining = String(p.flashSale.remaining);
  $('flash').hidden = false;
}

function showOrder(order) {
  state.order = order;
  if (!order) {
    $('order').hidden = true;
    return;
  }
  $('order-id').textContent = order.id;
  $('order-status').textContent = order.status;
  $('order-payable').textContent = yuan(order.payable.amount);
  $('order-external').textContent = order.status === 'AWAITING_PAYMENT' ? yuan(order.externalAmount.amount) : yuan(0);
  const open = order.status === 'AWAITING_PAYMENT';
  $('simulate-pay').disabled = !open;
  $('cancel').disabled = !open;
  $('order').hidden = false;
}

async function checkout(cart, key) {
  // The header and the input carry the same key (the BFF checks they agree).
  const data = await graphql(
    CHECKOUT_MUTATION,
    { input: { cart, idempotencyKey: key } },
    { 'Idempotency-Key': key },
  );
  showOrder(data.checkout.order);
}

async function buy() {
  if (!state.buyKey) state.buyKey = newKey('buy');
  try {
    await checkout({ mallId: MALL, items: [{ productId: FLASH_SKU, quantity: 1 }] }, state.buyKey);
  } finally {
    await loadProduct().catch(() => {});
  }
}

async function payBill() {
  const amount = Math.round(Number($('bill-amount').value) * 100);
  if (!Number.isInteger(amount) || amount <= 0) {
    throw new ShopError('BAD_USER_INPUT', 'enter an amount above ¥0.00');
  }
  if (!state.billKey) state.billKey = newKey('bill');
  await checkout({ mallId: MALL, storeId: STORE, billAmount: amount }, state.billKey);
}

async function simulatePayment() {
  const order = state.order;
  if (!order) return;
  const resp = await fetch(`/dev/pay/${encodeURIComponent(order.id)}`, { method: 'POST' });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    const error = (body && body.error) || {};
    throw new ShopError(error.code || `HTTP_${resp.status}`, error.message || 'the payment simulator refused');
  }
  // The payment is recorded; follow the order until it shows paid.
  for (let i = 0; i < POLL_TIMES; i += 1) {
    const data = await graphql(ORDER_QUERY, { id: order.id });
    if (data.order) showOrder(data.order);
    if (data.order && ['PAID', 'COMPLETED'].includes(data.order.status)) break;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  await loadProduct().catch(() => {});
}

async function cancel() {
  if (!state.order) return;
  const data = await graphql(CANCEL_MUTATION, { id: state.order.id });
  showOrder(data.cancelOrder);
  await loadProduct().catch(() => {});
}

function startNewOrder() {
  state.buyKey = null;
  state.billKey = null;
  showOrder(null);
  clearError();
}

$('sign-in').addEventListener('click', (e) => guarded(e.currentTarget, signIn));
$('buy').addEventListener('click', () => guarded(null, buy));
$('pay-bill').addEventListener('click', (e) => guarded(e.currentTarget, payBill));
$('bill-amount').addEventListener('input', () => { state.billKey = null; });
$('simulate-pay').addEventListener('click', (e) => guarded(e.currentTarget, simulatePayment));
$('cancel').addEventListener('click', (e) => guarded(e.currentTarget, cancel));
$('new-order').addEventListener('click', startNewOrder);
