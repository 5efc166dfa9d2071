// The BFF's GraphQL playground: GraphiQL (served from /playground/vendor,
// no CDN) with a member-token bar. The token, if any, is sent as
// `Authorization: Bearer <token>` on every request.
(function () {
  'use strict';

  const EXAMPLE_QUERY = `# A whole home screen in one round trip.
# Use the demo token (bar above) to see the member's own card.
query HomeCard {
  homeCard(mallId: "mall-1") {
    mall { id name city openingHours { opens closes } }
    member { id nickname level points wallet { amount currency } }
    coupons { id title kind minSpend { amount } }
    flashSale {
      id name
      listPrice { amount currency }
      flashSale { price { amount } endsAt stock }
      store { id name floor }
    }
    recommended {
      id name
      store { id name }
      price { list { amount } final { amount } savings { amount } applied { ruleId label amount { amount } } }
    }
  }
}
`;

  const tokenInput = document.getElementById('token');
  const status = document.getElementById('token-status');
  const STORAGE_KEY = 'mall-bff.token';

  function setToken(token, note) {
    tokenInput.value = token;
    status.textContent = note;
    try { localStorage.setItem(STORAGE_KEY, token); } catch (_) { /* private mode */ }
  }

  try { tokenInput.value = localStorage.getItem(STORAGE_KEY) || ''; } catch (_) { /* ignore */ }
  status.textContent = tokenInput.value ? 'token set' : 'anonymous';
  tokenInput.addEventListener('change', () => setToken(tokenInput.value.trim(), tokenInput.value.trim() ? 'token set' : 'anonymous'));

  document.getElementById('use-demo-token').addEventListener('click', async () => {
    status.textContent = 'fetching…';
    try {
      const resp = await fetch('/dev/token?member=member-1');
      if (!resp.ok) throw new Error('demo tokens are off (production?)');
      const body = await resp.json();
      setToken(body.token, 'member-1 token set');
    } catch (err) {
      status.textContent = String(err.message || err);
    }
  });
  document.getElementById('clear-token').addEventListener('click', () => setToken('', 'anonymous'));

  const fetcher = GraphiQL.createFetcher({
    url: '/graphql',
    fetch: (url, init) => {
      const headers = new Headers(init && init.headers);
      const token = tokenInput.value.trim();
      if (token) headers.set('Authorization', 'Bearer ' + token);
      return fetch(url, Object.assign({}, init, { headers }));
    },
  });

  const root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, {
    fetcher,
    defaultQuery: EXAMPLE_QUERY,
    shouldPersistHeaders: false,
  }));
})();
