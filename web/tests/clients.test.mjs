// The BFF as real GraphQL clients see it: Apollo Client 3 (normalised
// cache, automatic persisted queries over GET, batching) and graphql-js
// (every value checked against the schema's scalar types).
// Needs BFF_URL (a running BFF) and MEMBER_TOKEN; the Rust API test
// `edge::real_clients_...` starts one and runs this file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import apollo from '@apollo/client/core/core.cjs';
import persisted from '@apollo/client/link/persisted-queries/persisted-queries.cjs';
import batch from '@apollo/client/link/batch-http/batch-http.cjs';
import { buildSchema, execute, parse } from 'graphql';

const { ApolloClient, InMemoryCache, HttpLink, gql } = apollo;
const { createPersistedQueryLink } = persisted;
const { BatchHttpLink } = batch;

const BFF_URL = process.env.BFF_URL;
const TOKEN = process.env.MEMBER_TOKEN;

function countingFetch(log) {
  return async (url, init) => {
    log.push({ method: (init && init.method) || 'GET', url: String(url), body: init && init.body });
    return fetch(url, init);
  };
}

function client(link) {
  return new ApolloClient({ link, cache: new InMemoryCache() });
}

function http(log) {
  return new HttpLink({
    uri: `${BFF_URL}/graphql`,
    headers: { authorization: `Bearer ${TOKEN}` },
    fetch: countingFetch(log),
  });
}

const QUOTE = gql`
  query Quote($input: CartInput!) {
    quote(input: $input) {
      id
      subtotal { amount currency }
      payable { amount currency }
      lines { id productId quantity subtotal { amount currency } }
    }
  }
`;

test('two quotes of the same product stay apart in the normalised cache', async () => {
  assert.ok(BFF_URL && TOKEN, 'BFF_URL and MEMBER_TOKEN must be set');
  const apolloClient = client(http([]));
  const cart = (quantity) => ({
    mallId: 'mall-1',
    items: [{ productId: 'sku-flash-1', quantity }],
  });
  const one = await apolloClient.query({ query: QUOTE, variables: { input: cart(1) } });
  const five = await apolloClient.query({ query: QUOTE, variables: { input: cart(5) } });
  assert.equal(one.data.quote.lines[0].quantity, 1);
  assert.equal(five.data.quote.lines[0].quantity, 5);
  assert.notEqual(one.data.quote.id, five.data.quote.id);
  assert.notEqual(one.data.quote.lines[0].id, five.data.quote.lines[0].id);

  // Read back from the cache only: the first quote is still quantity 1.
  const again = apolloClient.readQuery({ query: QUOTE, variables: { input: cart(1) } });
  assert.equal(again.quote.lines[0].quantity, 1);
  assert.equal(again.quote.subtotal.amount, one.data.quote.subtotal.amount);
});

test('automatic persisted queries round-trip as Apollo Client sends them, over GET', async () => {
  const log = [];
  const sha256 = (text) => createHash('sha256').update(text).digest('hex');
  // A query text no other test sends, so its hash is unknown at first.
  const query = gql`query PersistedMalls${Date.now()} { malls { id name } }`;
  const link = createPersistedQueryLink({ sha256, useGETForHashedQueries: true }).concat(http(log));
  const first = await client(link).query({ query });
  assert.ok(first.data.malls.length >= 3);
  // The hash alone over GET, refused as unknown; then registered with POST.
  assert.equal(log[0].method, 'GET');
  assert.ok(log[0].url.includes('persistedQuery'), log[0].url);
  assert.ok(!log[0].url.includes('query=query'), 'the first GET carries no query text');
  assert.equal(log.length, 2, JSON.stringify(log.map((l) => l.method)));

  // A fresh client (empty cache) now needs one short GET.
  const log2 = [];
  const link2 = createPersistedQueryLink({ sha256, useGETForHashedQueries: true }).concat(http(log2));
  const second = await client(link2).query({ query });
  assert.deepEqual(second.data.malls, first.data.malls);
  assert.equal(log2.length, 1);
  assert.equal(log2[0].method, 'GET');
});

test('batched operations are answered in order', async () => {
  const log = [];
  const link = new BatchHttpLink({
    uri: `${BFF_URL}/graphql`,
    headers: { authorization: `Bearer ${TOKEN}` },
    fetch: countingFetch(log),
    batchMax: 5,
    batchInterval: 20,
  });
  const apolloClient = client(link);
  const [malls, me] = await Promise.all([
    apolloClient.query({ query: gql`query BatchedMalls { malls { id } }` }),
    apolloClient.query({ query: gql`query BatchedMe { me { id level points } }` }),
  ]);
  assert.equal(log.length, 1, 'one HTTP request for both');
  assert.ok(JSON.parse(log[0].body).length === 2);
  assert.ok(malls.data.malls.some((m) => m.id === 'mall-1'));
  assert.equal(me.data.me.id, 'member-1');
});

test('a quote of the largest cart (100 lines x 999 units of the dearest products) keeps every value within its GraphQL type', async () => {
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` };
  const post = async (query, variables) => {
    const resp = await fetch(`${BFF_URL}/graphql`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ query, variables }),
    });
    return resp.json();
  };
  // The 100 most expensive products of the first 300.
  let after = null;
  const products = [];
  for (let page = 0; page < 3; page++) {
    const body = await post(
      'query($after: String) { products(mallId: "mall-1", first: 100, after: $after) { pageInfo { endCursor } nodes { id listPrice { amount } } } }',
      { after },
    );
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    products.push(...body.data.products.nodes);
    after = body.data.products.pageInfo.endCursor;
  }
  products.sort((a, b) => b.listPrice.amount - a.listPrice.amount);
  const items = products.slice(0, 100).map((p) => ({ productId: p.id, quantity: 999 }));
  const query = `query Big($input: CartInput!) {
    quote(input: $input) {
      id subtotal { amount currency } discount { amount currency } pointsUsed
      payable { amount currency }
      lines { id productId quantity unitPrice { amount } subtotal { amount } payable { amount } }
    }
  }`;
  const body = await post(query, { input: { mallId: 'mall-1', items } });
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  const subtotal = body.data.quote.subtotal.amount;
  assert.ok(Number.isSafeInteger(subtotal), `subtotal ${subtotal} is an exact integer`);
  // Far beyond 32 bits: an `Int` would overflow here.
  assert.ok(subtotal > 2 ** 31, `the cart's subtotal is beyond 32 bits (${subtotal})`);

  // graphql-js serialises every value through its declared scalar:
  // `Int` refuses anything outside 32 bits.
  const sdl = readFileSync(fileURLToPath(new URL('../../schema.graphql', import.meta.url)), 'utf8');
  const schema = buildSchema(sdl);
  const result = await execute({ schema, document: parse(query), rootValue: body.data, variableValues: { input: { mallId: 'mall-1', items } } });
  assert.equal(result.errors, undefined, JSON.stringify(result.errors));
  assert.deepEqual(JSON.parse(JSON.stringify(result.data)), body.data);
});
