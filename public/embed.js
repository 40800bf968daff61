/* slm embed: a private chat for any page, computed in the visitor's browser.
 *
 *   <script src="https://APP/embed.js" data-model="smollm2-135m-instruct-q4_1" async></script>
 *     → a launcher button (data-position="bottom-right|bottom-left|top-right|top-left",
 *       data-title, data-theme="light|dark|auto", data-system-prompt, data-temperature,
 *       data-max-tokens; data-launcher="off" for none) opening a chat panel;
 *   <slm-chat model="…" system-prompt="…" title="…" theme="…"></slm-chat>
 *     → the same chat inline, sized by the page's CSS;
 *   const slm = await SLM.connect({ model, onProgress });   // OpenAI-shaped API
 *     slm.chat.completions.create({ messages, temperature, max_tokens, stream, signal })
 *     slm.models.list()
 *
 * The chat runs in a frame of the app's own origin (APP/embed.html): the model, the engine and
 * the conversation live there, never in this page. Messages to and from the frame are JSON
 * strings addressed to its origin only. Errors are SLM.Error with a `code` (not_allowed,
 * model_not_found, download_failed, storage_full, context_full, aborted, gpu_lost, bad_request,
 * not_connected, busy, load_failed, generation_failed, unavailable). See docs/embed.md.
 */
(() => {
  'use strict';
  if (window.SLM && window.SLM.__slm) return;
  const script = document.currentScript;
  const BASE = new URL('.', script && script.src ? script.src : location.href);
  const APP = BASE.origin;
  const READY_MS = 30000;

  class SLMError extends Error {
    constructor(code, message) {
      super(message || code);
      this.name = 'SLMError';
      this.code = code;
    }
  }

  // Whether this page's origin is on the app's list (embed.json); null when it cannot be read
  // (the frame itself then decides: the browser refuses to frame it, or it answers not_allowed).
  let allowedP = null;
  function allowedHere() {
    if (location.origin === APP) return Promise.resolve(true);
    allowedP = allowedP || fetch(new URL('embed.json', BASE), { credentials: 'omit', cache: 'no-cache' })
      .then((r) => (r.ok ? r.json() : null))
      .then((j) => (j && Array.isArray(j.allowed_origins)
        ? j.allowed_origins.some((o) => o === '*' || String(o).replace(/\/+$/, '') === location.origin)
        : null))
      .catch(() => null);
    return allowedP;
  }
  const notAllowed = () => new SLMError('not_allowed',
    `This site (${location.origin}) is not allowed to use the slm app at ${APP}.`);

  function frameUrl(params) {
    const u = new URL('embed.html', BASE);
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v).slice(0, 4000));
    }
    return u.href;
  }

  function makeFrame(params, hidden) {
    const f = document.createElement('iframe');
    f.src = frameUrl(params);
    f.title = params.title || 'Private assistant';
    f.setAttribute('allow', 'clipboard-write');
    f.setAttribute('referrerpolicy', 'origin');
    if (hidden) {
      f.setAttribute('aria-hidden', 'true');
      f.tabIndex = -1;
      f.style.cssText = 'position:absolute;width:0;height:0;border:0;visibility:hidden';
    }
    return f;
  }

  // Requests to one frame, each with its own id; answers are matched by id.
  class Channel {
    constructor(frame) {
      this.frame = frame;
      this.next = 1;
      this.pending = new Map();
      this.ready = new Promise((res, rej) => {
        this.readyRes = res;
        this.timer = setTimeout(() => rej(new SLMError('not_allowed',
          `The slm app at ${APP} did not answer: it is unreachable or refuses to be embedded on ${location.origin}.`)), READY_MS);
      });
      this.ready.catch(() => {});
      this.onmessage = (e) => this.receive(e);
      window.addEventListener('message', this.onmessage);
    }
    receive(e) {
      if (e.origin !== APP || e.source !== this.frame.contentWindow || typeof e.data !== 'string') return;
      let m;
      try { m = JSON.parse(e.data); } catch { return; }
      if (!m || m.slm !== 1) return;
      if (m.type === 'ready') { clearTimeout(this.timer); this.readyRes(); return; }
      const p = this.pending.get(m.id);
      if (!p) return;
      if (m.type === 'progress' || m.type === 'chunk') {
        try { p.onEvent && p.onEvent(m); } catch (err) { console.error(err); }
      } else if (m.type === 'result') {
        this.pending.delete(m.id);
        p.resolve(m.result);
      } else if (m.type === 'error') {
        this.pending.delete(m.id);
        const er = m.error || {};
        p.reject(new SLMError(String(er.code || 'unavailable'), String(er.message || '')));
      }
    }
    post(obj) {
      this.frame.contentWindow.postMessage(JSON.stringify({ slm: 1, ...obj }), APP);
    }
    request(type, body, onEvent) {
      const id = this.next++;
      const p = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject, onEvent }));
      this.post({ id, type, ...body });
      return { id, promise: p };
    }
    close() {
      window.removeEventListener('message', this.onmessage);
      for (const p of this.pending.values()) p.reject(new SLMError('aborted', 'the connection was closed'));
      this.pending.clear();
    }
  }

  // Mount a chat frame in `box` (a shadow root's element); say so in `box` when this site is
  // not allowed.
  async function mountChat(box, params) {
    if ((await allowedHere()) === false) {
      const p = document.createElement('p');
      p.className = 'refused';
      p.setAttribute('data-testid', 'slm-not-allowed');
      p.textContent = `Not allowed here: this chat is not enabled for ${location.origin}.`;
      box.replaceChildren(p);
      return;
    }
    const frame = makeFrame({ mode: 'chat', ...params }, false);
    box.replaceChildren(frame);
    const ch = new Channel(frame);
    ch.ready.then(() => ch.request('hello', {}).promise).catch((e) => {
      if (e.code !== 'not_allowed') return;
      const p = document.createElement('p');
      p.className = 'refused';
      p.setAttribute('data-testid', 'slm-not-allowed');
      p.textContent = `Not allowed here: ${e.message}`;
      box.replaceChildren(p);
    }).finally(() => ch.close());
  }

  const STYLE = `
    :host { all: initial; }
    .launcher { position: fixed; z-index: 2147483000; border: 0; border-radius: 999px; padding: .7rem 1.1rem;
      font: 600 15px/1.2 system-ui, sans-serif; background: #2c5fd4; color: #fff; cursor: pointer;
      box-shadow: 0 6px 24px rgba(20,30,50,.25); }
    .launcher:focus-visible, .close:focus-visible { outline: 3px solid #9bb8ff; outline-offset: 2px; }
    .panel { position: fixed; z-index: 2147483000; width: min(400px, calc(100vw - 2rem));
      height: min(620px, calc(100vh - 6rem)); display: flex; flex-direction: column; border-radius: 14px;
      overflow: hidden; background: #fff; box-shadow: 0 10px 40px rgba(20,30,50,.3); }
    .panel[hidden] { display: none; }
    .dark .panel { background: #181d26; }
    .bar { display: flex; justify-content: flex-end; padding: 2px 4px; background: #2c5fd4; }
    .close { border: 0; background: transparent; color: #fff; font: 20px/1 system-ui, sans-serif; cursor: pointer; padding: 4px 10px; }
    .box { flex: 1; min-height: 0; }
    iframe { width: 100%; height: 100%; border: 0; display: block; }
    .refused { margin: 1rem; font: 15px/1.4 system-ui, sans-serif; color: #b3261e; }
    .bottom-right .launcher { right: 1.25rem; bottom: 1.25rem; } .bottom-right .panel { right: 1.25rem; bottom: 4.75rem; }
    .bottom-left .launcher { left: 1.25rem; bottom: 1.25rem; } .bottom-left .panel { left: 1.25rem; bottom: 4.75rem; }
    .top-right .launcher { right: 1.25rem; top: 1.25rem; } .top-right .panel { right: 1.25rem; top: 4.75rem; }
    .top-left .launcher { left: 1.25rem; top: 1.25rem; } .top-left .panel { left: 1.25rem; top: 4.75rem; }`;

  function chatParams(get) {
    return {
      model: get('model'), title: get('title'), theme: get('theme'), system: get('system-prompt'),
      temperature: get('temperature'), max_tokens: get('max-tokens'),
    };
  }

  function launcher(d) {
    const host = document.createElement('div');
    host.setAttribute('data-slm-launcher', '');
    const root = host.attachShadow({ mode: 'open' });
    const pos = ['bottom-right', 'bottom-left', 'top-right', 'top-left'].includes(d.position) ? d.position : 'bottom-right';
    const wrap = document.createElement('div');
    wrap.className = pos + (d.theme === 'dark' ? ' dark' : '');
    const style = document.createElement('style');
    style.textContent = STYLE;
    const button = document.createElement('button');
    button.className = 'launcher';
    button.type = 'button';
    button.setAttribute('data-testid', 'slm-launcher');
    button.setAttribute('aria-expanded', 'false');
    button.textContent = (d.title || 'Ask the assistant').slice(0, 80);
    const panel = document.createElement('div');
    panel.className = 'panel';
    panel.hidden = true;
    panel.setAttribute('role', 'dialog');
    panel.setAttribute('aria-label', button.textContent);
    panel.setAttribute('data-testid', 'slm-panel');
    const bar = document.createElement('div');
    bar.className = 'bar';
    const close = document.createElement('button');
    close.className = 'close';
    close.type = 'button';
    close.setAttribute('aria-label', 'Close the chat');
    close.setAttribute('data-testid', 'slm-close');
    close.textContent = '×';
    bar.append(close);
    const box = document.createElement('div');
    box.className = 'box';
    panel.append(bar, box);
    wrap.append(button, panel);
    root.append(style, wrap);
    let mounted = false;
    const toggle = (open) => {
      panel.hidden = !open;
      button.setAttribute('aria-expanded', String(open));
      if (open && !mounted) {
        mounted = true;
        mountChat(box, chatParams((k) => d[k.replace(/-(\w)/g, (_, c) => c.toUpperCase())]));
      }
    };
    button.addEventListener('click', () => toggle(panel.hidden));
    close.addEventListener('click', () => { toggle(false); button.focus(); });
    document.body.append(host);
  }

  class SlmChat extends HTMLElement {
    connectedCallback() {
      if (this.shadowRoot) return;
      const root = this.attachShadow({ mode: 'open' });
      const style = document.createElement('style');
      style.textContent = ':host { display: block; min-height: 320px; } .box { width: 100%; height: 100%; } ' +
        'iframe { width: 100%; height: 100%; border: 0; display: block; } .refused { margin: 1rem; font: 15px/1.4 system-ui, sans-serif; color: #b3261e; }';
      const box = document.createElement('div');
      box.className = 'box';
      root.append(style, box);
      mountChat(box, chatParams((k) => this.getAttribute(k)));
    }
  }

  // ---- The API ----

  function completion(id, r) {
    return {
      id: `chatcmpl-${id}`, object: 'chat.completion', created: Math.floor(Date.now() / 1000), model: r.model,
      choices: [{ index: 0, message: { role: 'assistant', content: r.content }, finish_reason: r.finish_reason }],
      usage: r.usage,
    };
  }

  class Client {
    constructor(ch, model, backend) {
      this.ch = ch;
      this.model = model;
      this.backend = backend;
      this.chat = { completions: { create: (req) => this.create(req) } };
      this.models = { list: () => ch.request('models.list', {}).promise };
    }
    create(req) {
      req = req || {};
      const body = {
        messages: Array.isArray(req.messages) ? req.messages.map((m) => ({ role: m && m.role, content: m && m.content })) : req.messages,
        temperature: req.temperature, top_p: req.top_p, max_tokens: req.max_tokens ?? req.max_completion_tokens,
        seed: req.seed, stream: !!req.stream,
      };
      const signal = req.signal;
      if (signal && signal.aborted) return Promise.reject(new SLMError('aborted', 'the request was aborted'));
      const chunks = [];
      let wake = null;
      let finished = null;
      const kick = () => { if (wake) { const w = wake; wake = null; w(); } };
      const { id, promise } = this.ch.request('chat', body, (m) => {
        if (m.type === 'chunk') { chunks.push(m.text); kick(); }
      });
      const onAbort = () => this.ch.post({ id: this.ch.next++, type: 'abort', target: id });
      if (signal) signal.addEventListener('abort', onAbort, { once: true });
      const settled = promise.then(
        (r) => { finished = { r }; kick(); return r; },
        (e) => { finished = { e }; kick(); throw e; },
      ).finally(() => signal && signal.removeEventListener('abort', onAbort));
      if (!req.stream) return settled.then((r) => completion(id, r));
      settled.catch(() => {});
      const model = this.model;
      const created = Math.floor(Date.now() / 1000);
      const chunk = (delta, finish, usage) => ({
        id: `chatcmpl-${id}`, object: 'chat.completion.chunk', created, model,
        choices: [{ index: 0, delta, finish_reason: finish }], ...(usage ? { usage } : {}),
      });
      let first = true;
      let ended = false;
      const stream = {
        async next() {
          for (;;) {
            if (ended) return { done: true, value: undefined };
            if (chunks.length) {
              const text = chunks.splice(0).join('');
              const delta = first ? { role: 'assistant', content: text } : { content: text };
              first = false;
              return { done: false, value: chunk(delta, null) };
            }
            if (finished) {
              ended = true;
              if (finished.e) throw finished.e;
              return { done: false, value: chunk({}, finished.r.finish_reason, finished.r.usage) };
            }
            await new Promise((res) => { wake = res; });
          }
        },
        async return() {
          if (!finished) onAbort();
          ended = true;
          return { done: true, value: undefined };
        },
        [Symbol.asyncIterator]() { return this; },
        controller: { abort: onAbort },
      };
      return Promise.resolve(stream);
    }
    close() {
      this.ch.close();
      this.ch.frame.parentNode && this.ch.frame.parentNode.host && this.ch.frame.parentNode.host.remove();
    }
  }

  async function connect(opts) {
    opts = opts || {};
    const model = String(opts.model || 'smollm2-135m-instruct-q4_1');
    if ((await allowedHere()) === false) throw notAllowed();
    const host = document.createElement('div');
    host.setAttribute('data-slm-api', '');
    host.hidden = true;
    const root = host.attachShadow({ mode: 'open' });
    const frame = makeFrame({ mode: 'api' }, true);
    root.append(frame);
    document.body.append(host);
    const ch = new Channel(frame);
    try {
      await ch.ready;
      await ch.request('hello', {}).promise;
      const onProgress = typeof opts.onProgress === 'function' ? opts.onProgress : null;
      const r = await ch.request('connect', { model, backend: opts.backend }, (m) => {
        if (onProgress) onProgress({ loaded: m.loaded, total: m.total, phase: m.phase });
      }).promise;
      return new Client(ch, r.model, r.backend);
    } catch (e) {
      ch.close();
      host.remove();
      throw e;
    }
  }

  window.SLM = Object.freeze({ __slm: true, connect, Error: SLMError });
  if (!customElements.get('slm-chat')) customElements.define('slm-chat', SlmChat);
  const d = script ? script.dataset : {};
  if (script && d.model !== undefined && d.launcher !== 'off') {
    if (document.body) launcher(d);
    else document.addEventListener('DOMContentLoaded', () => launcher(d), { once: true });
  }
})();
