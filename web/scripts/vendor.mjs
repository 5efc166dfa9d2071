// Copies the browser bundles the playground needs from node_modules into
// playground/vendor/, so the BFF serves them itself (no CDN, works offline).
// Run after changing the versions in package.json: `npm run vendor`.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const web = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(web, 'playground', 'vendor');
mkdirSync(out, { recursive: true });

const files = [
  ['react', 'umd/react.production.min.js'],
  ['react-dom', 'umd/react-dom.production.min.js'],
  ['graphiql', 'graphiql.min.js'],
  ['graphiql', 'graphiql.min.css'],
];
const lines = ['# Vendored browser bundles', '', 'Copied from npm by `npm run vendor`; do not edit.', ''];
for (const [pkg, file] of files) {
  const dir = join(web, 'node_modules', pkg);
  const { version, license } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  const name = file.split('/').pop();
  copyFileSync(join(dir, file), join(out, name));
  lines.push(`* \`${name}\`: ${pkg}@${version} (${license})`);
}
writeFileSync(join(out, 'README.md'), lines.join('\n') + '\n');
console.log(lines.join('\n'));
