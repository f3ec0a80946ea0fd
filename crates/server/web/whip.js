// Shared by the player (/) and the publisher (/send): server address, bearer token,
// WHIP/WHEP signalling and application/problem+json errors. Plain browser JavaScript.
'use strict';

(function () {
  const params = new URLSearchParams(location.search);

  // Base URL of the deadsfu server: same origin unless ?server=http://host:port is given
  // (handy to develop the pages from another web server, or to point them at another SFU).
  function serverBase() {
    const s = params.get('server');
    if (!s) return location.origin;
    try {
      return new URL(s, location.href).origin;
    } catch (e) {
      return location.origin;
    }
  }

  function apiUrl(path) {
    return serverBase() + path;
  }

  function authHeaders(token, extra) {
    const h = Object.assign({}, extra || {});
    if (token) h['Authorization'] = 'Bearer ' + token;
    return h;
  }

  // Room names the server accepts: 1..64 of A-Z a-z 0-9 - _ .
  function validRoom(name) {
    return typeof name === 'string' && /^[A-Za-z0-9._-]{1,64}$/.test(name);
  }

  // An HTTP failure, with the problem+json details when the server sent them.
  class HttpError extends Error {
    constructor(status, title, detail) {
      super(detail ? title + ': ' + detail : title);
      this.status = status;
      this.title = title;
      this.detail = detail;
    }
  }

  async function problemFrom(res) {
    let title = res.statusText || 'HTTP error';
    let detail = '';
    try {
      const text = await res.text();
      try {
        const p = JSON.parse(text);
        if (p.title) title = p.title;
        if (p.detail) detail = p.detail;
      } catch (e) {
        if (text && text.length < 300) detail = text.trim();
      }
    } catch (e) { /* no body */ }
    return new HttpError(res.status, title, detail);
  }

  // Wait until ICE gathering is complete, at most `ms` milliseconds. The server is ICE-lite
  // and copes with offers without candidates; host candidates make the start quicker.
  function gathered(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      };
      const check = () => { if (pc.iceGatheringState === 'complete') done(); };
      const timer = setTimeout(done, ms);
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  // Offer/answer with a WHIP or WHEP endpoint. Returns the absolute session URL.
  async function negotiate(pc, endpoint, token) {
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await gathered(pc, 1000);
    const res = await fetch(endpoint, {
      method: 'POST',
      headers: authHeaders(token, { 'Content-Type': 'application/sdp' }),
      body: pc.localDescription.sdp,
    });
    if (res.status !== 201 && res.status !== 200) throw await problemFrom(res);
    const location_ = res.headers.get('Location');
    const answer = await res.text();
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    return location_ ? new URL(location_, endpoint).href : null;
  }

  // Ends a session; best effort, also while the page is being closed.
  function endSession(sessionUrl, token) {
    if (!sessionUrl) return;
    try {
      fetch(sessionUrl, { method: 'DELETE', headers: authHeaders(token), keepalive: true })
        .catch(() => {});
    } catch (e) { /* ignore */ }
  }

  // One line for a human, for the common statuses.
  function describeError(err, what, room) {
    if (err instanceof HttpError) {
      switch (err.status) {
        case 401:
        case 403:
          return 'token required or wrong (' + err.status + ')';
        case 409:
          return 'room ' + room + ' is busy: someone else is publishing there (409)';
        case 422:
          return 'the server cannot ' + what + ' this (422)' + (err.detail ? ': ' + err.detail : '');
        case 503:
          return 'the server is overloaded, try again soon (503)';
        default:
          return what + ' failed (' + err.status + ' ' + err.message + ')';
      }
    }
    if (err && err.name === 'TypeError') return 'cannot reach the server (' + err.message + ')';
    return what + ' failed: ' + (err && err.message ? err.message : String(err));
  }

  // Link to the other page (player or publisher), keeping ?server= and adding `extra`.
  // Served by deadsfu the pages are / and /send; from a plain file server, index.html and
  // send.html side by side.
  function pageUrl(page, extra) {
    let path;
    if (/\.html$/.test(location.pathname)) {
      path = location.pathname.replace(/[^/]*$/, page === 'send' ? 'send.html' : 'index.html');
    } else {
      path = page === 'send' ? '/send' : '/';
    }
    const q = new URLSearchParams();
    if (params.get('server')) q.set('server', params.get('server'));
    for (const [k, v] of Object.entries(extra || {})) if (v) q.set(k, v);
    const qs = q.toString();
    return path + (qs ? '?' + qs : '');
  }

  // Rewrites one query parameter of the page's own URL (no reload).
  function setPageParam(name, value) {
    const u = new URL(location.href);
    if (value) u.searchParams.set(name, value);
    else u.searchParams.delete(name);
    history.replaceState(null, '', u.pathname + u.search + u.hash);
  }

  function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
  }

  function formatBitrate(bps) {
    if (!isFinite(bps) || bps <= 0) return '0 kbit/s';
    if (bps >= 1e6) return (bps / 1e6).toFixed(2) + ' Mbit/s';
    return Math.round(bps / 1e3) + ' kbit/s';
  }

  window.deadsfuWeb = {
    params,
    serverBase,
    apiUrl,
    authHeaders,
    validRoom,
    HttpError,
    problemFrom,
    negotiate,
    endSession,
    describeError,
    formatBitrate,
    pageUrl,
    setPageParam,
    sleep,
  };
})();
