// The app's service worker (registered by boot.js). Two jobs, nothing else:
//
// 1. Offline: the app shell (HTML, JS, wasm, CSS, catalog, manifest, icon) is stored in the
//    Cache API at install and served network-first: online, every visit gets the files the
//    host serves now (an update applies at the next visit) and the cache is refreshed; offline,
//    the cached copy answers. The highlighter (vendor/) is cached the first time it is fetched.
//    Model files are never touched here: /models/*, Range requests, other origins and every
//    other path go to the network as if there were no service worker (the model's bytes live
//    in IndexedDB). The worker makes no request of its own beyond the shell list at install.
// 2. Cross-origin isolation where the host cannot send headers (what coi-serviceworker does):
//    every response it serves gets Cross-Origin-Opener-Policy: same-origin and
//    Cross-Origin-Embedder-Policy: require-corp unless it has them; boot.js reloads the page
//    once so that they apply. A page opened with ?isolation=off is left alone.
const CACHE = 'slm-shell-v1';
const SHELL = ['./', 'index.html', 'boot.js', 'web-ui.js', 'web-ui_bg.wasm', 'worker.js', 'style.css',
  'models.json', 'manifest.webmanifest', 'icon.svg',
  // The engine's multi-threaded and single-threaded relaxed-SIMD builds (worker.js picks one).
  'web-ui-mt.js', 'web-ui-mt_bg.wasm', 'pool-worker.js', 'web-ui-relaxed.js', 'web-ui-relaxed_bg.wasm'];
const scope = new URL(self.registration.scope);
const shellPaths = new Set(SHELL.map((p) => new URL(p, scope).pathname));

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => {
  e.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith('slm-shell-') && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

function isolated(resp) {
  if (resp.status === 0 || (resp.headers.get('cross-origin-embedder-policy') && resp.headers.get('cross-origin-opener-policy'))) return resp;
  const h = new Headers(resp.headers);
  h.set('Cross-Origin-Embedder-Policy', 'require-corp');
  h.set('Cross-Origin-Opener-Policy', 'same-origin');
  return new Response(resp.body, { status: resp.status, statusText: resp.statusText, headers: h });
}

self.addEventListener('fetch', (e) => {
  const req = e.request;
  if (req.method !== 'GET' || req.headers.has('range')) return;
  const url = new URL(req.url);
  if (url.origin !== scope.origin) return;
  const nav = req.mode === 'navigate';
  if (nav && url.searchParams.get('isolation') === 'off') return;
  const path = url.pathname;
  const vendor = path.startsWith(new URL('vendor/', scope).pathname);
  if (!nav && !shellPaths.has(path) && !vendor) return;
  // Navigations are cached under the scope's index (query strings are the app's own).
  const key = nav ? new URL('./', scope).href : url.origin + path;
  e.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const resp = await fetch(req);
      if (resp.ok) await cache.put(key, resp.clone());
      return isolated(resp);
    } catch (err) {
      const hit = await cache.match(key);
      if (hit) return isolated(hit);
      throw err;
    }
  })());
});
